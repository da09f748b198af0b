"""`python -m grader COMMAND`: the command-line fronts on the shared grading pipeline.

Each command is a module with `configure(parser)` and `run(args) -> exit code`;
COMMANDS lists them in the order `--help` shows them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "check": ("grader.commands.check", "self-check: public cases, a score table and hints (students)"),
    "grade": ("grader.commands.grade", "grade a submission on public and hidden cases (instructors)"),
    "stubs": ("grader.commands.stubs", "regenerate exercises/ from solutions/ (kit maintainers)"),
    "nbgrader": ("grader.commands.nbgrader", "build or update an nbgrader course (instructors)"),
    "release": ("grader.commands.release", "write the student bundle: stubs and public cases only (instructors)"),
    "batch": ("grader.commands.batch", "grade a folder of submissions into a CSV, resumably (instructors)"),
    "gradescope": ("grader.commands.gradescope", "build the Gradescope autograder zip (instructors)"),
    "bench": ("grader.commands.bench", "measure bytes, memory, FLOPs and time of ex3-ex5 beside their closed forms"),
}

BACKEND_HELP = ("torch.distributed backend: gloo runs on the CPU everywhere; nccl puts rank r on cuda:r "
                "and skips cases with more ranks than GPUs; auto uses nccl for a case only when there is "
                "a GPU per rank (default: auto)")
MANIFEST_HELP = "the lab manifest (default: the kit's lab_manifest.yaml)"
EXERCISES_HELP = "grade only these exercises, e.g. ex1 ex3 (default: all)"


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options every grading command shares, with one help text each."""
    parser.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto", help=BACKEND_HELP)
    parser.add_argument("--manifest", default=None, help=MANIFEST_HELP)


def parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; only `command`'s module is imported and configured (None: all of them).

    A command module may import torch, which takes seconds: `--help`, `release` or a mistyped command
    should not wait for it.
    """
    p = argparse.ArgumentParser(prog="python -m grader", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if command in (None, name):
            importlib.import_module(module).configure(sp)
        sp.set_defaults(module=module)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), "")  # "": no command module to import
    args = parser(command).parse_args(argv)
    return importlib.import_module(args.module).run(args)


if __name__ == "__main__":
    sys.exit(main())
