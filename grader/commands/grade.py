"""`python -m grader grade SUBMISSION`: public and hidden cases, a results.json in Gradescope's format."""

from __future__ import annotations

import argparse
import sys
import time

from grader import grading, manifest, report, results_json
from grader.cli import EXERCISES_HELP, add_common


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("submission", metavar="SUBMISSION",
                   help="folder holding the exercise files, directly or under exercises/")
    p.add_argument("--results-json", metavar="FILE", default=None,
                   help="write the results in Gradescope's results.json format to FILE")
    p.add_argument("--exercises", nargs="*", default=None, metavar="EXERCISE", help=EXERCISES_HELP)
    p.add_argument("--public-only", action="store_true", help="leave out the hidden cases")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    try:
        m = manifest.load(args.manifest)
        cases = m.select(args.exercises, hidden=not args.public_only)
        grading.locate(args.submission, m)
    except (manifest.ManifestError, grading.SubmissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    start = time.monotonic()

    def progress(r: grading.CaseResult) -> None:
        status = "ok" if r.verdict.passed else r.verdict.kind.value
        print(f"  {r.case.title:<48} {status:<20} {r.seconds:5.1f} s", file=sys.stderr, flush=True)

    results = grading.grade(args.submission, m, cases, backend=args.backend, on_result=progress)
    data = results_json.build(results, time.monotonic() - start)
    if args.results_json:
        results_json.write(args.results_json, data)
    for r in results:
        if not r.ok and not r.case.hidden:
            print(report.failure(r, show_output=False))
    print(report.score_table(results, m))
    return 0
