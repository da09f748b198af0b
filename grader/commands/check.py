"""`python -m grader check [EXERCISE ...]`: the students' self-check on the public cases."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grader import grading, manifest, report
from grader.cli import add_common


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("exercises", nargs="*", metavar="EXERCISE", help="exercise ids to check, e.g. ex1 ex3 (default: all)")
    p.add_argument("--submission", default=None,
                   help="folder with your exercise files (default: ./exercises, else the kit's exercises/)")
    add_common(p)


def default_submission() -> Path:
    here = Path.cwd() / "exercises"
    return here if here.is_dir() else manifest.KIT_ROOT / "exercises"


def run(args: argparse.Namespace) -> int:
    try:
        m = manifest.load(args.manifest)
        cases = m.select(args.exercises or None, hidden=False)
    except manifest.ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    submission = Path(args.submission) if args.submission else default_submission()
    print(f"Checking {submission} on {len(cases)} public case(s)...", file=sys.stderr)

    def progress(r: grading.CaseResult) -> None:
        mark = "." if r.verdict.passed else ("s" if r.ok else "F")
        print(mark, end="", file=sys.stderr, flush=True)

    try:
        results = grading.grade(submission, m, cases, backend=args.backend, on_result=progress)
    except grading.SubmissionError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    print(file=sys.stderr)
    print(report.summary(results, m))
    return 0 if all(r.ok for r in results) else 1
