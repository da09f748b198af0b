"""`python -m grader stubs`: rewrite exercises/ from solutions/ (solution blocks cleared)."""

from __future__ import annotations

import argparse

from grader import stubs
from grader.manifest import KIT_ROOT


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", action="store_true", help="only report drift; exit 1 if a stub is out of date")


def run(args: argparse.Namespace) -> int:
    solutions, exercises = KIT_ROOT / "solutions", KIT_ROOT / "exercises"
    if args.check:
        stale = [n for n, text in stubs.stub_files(solutions).items()
                 if not (exercises / n).exists() or (exercises / n).read_text() != text]
        for n in stale:
            print(f"exercises/{n} is out of date with solutions/{n}")
        return 1 if stale else 0
    for n in stubs.write(solutions, exercises):
        print(f"wrote exercises/{n}")
    return 0
