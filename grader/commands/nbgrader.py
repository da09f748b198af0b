"""`python -m grader nbgrader COURSE_DIR`: create or update an nbgrader course with one notebook per exercise."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from grader import manifest
from grader.cli import add_common
from grader.commands import needs_instructor_extra
from grader.manifest import KIT_ROOT

from grader import notebooks


def _missing() -> str | None:
    """The first of nbgrader's packages (the instructor extra) that cannot be imported here, or None."""
    for name in ("nbformat", "nbgrader"):
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("course", metavar="COURSE_DIR", help="the nbgrader course folder (created if missing)")
    p.add_argument("--assignment", default=notebooks.DEFAULT_ASSIGNMENT,
                   help=f"the assignment that holds every exercise's notebook "
                        f"(default: {notebooks.DEFAULT_ASSIGNMENT})")
    p.add_argument("--say-it-points", type=float, default=notebooks.SAY_IT_POINTS, metavar="POINTS",
                   help=f"points of each manually graded 'say it out loud' answer "
                        f"(default: {notebooks.SAY_IT_POINTS:g})")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    missing = _missing()
    if missing:
        print(needs_instructor_extra("nbgrader", missing), file=sys.stderr)
        return 2
    if args.say_it_points < 0:
        print(f"error: --say-it-points must be >= 0, got {args.say_it_points:g}", file=sys.stderr)
        return 2
    try:
        lab = manifest.load(args.manifest)
        # Test cells name a manifest only when it is not the kit's: they load it where they run.
        named = str(Path(args.manifest).resolve()) if args.manifest else None
        written = notebooks.build(Path(args.course), lab, KIT_ROOT / "solutions", assignment=args.assignment,
                                  say_it_points=args.say_it_points, manifest=named, backend=args.backend)
    except (manifest.ManifestError, notebooks.BuildError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in written:
        print(f"{'wrote' if w.changed else 'unchanged'} {w.path}")
    print(f"Next, in {args.course}: nbgrader generate_assignment {args.assignment} --force")
    return 0
