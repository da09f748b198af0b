"""`python -m grader grade SUBMISSION`: public and hidden cases, a results.json in Gradescope's format."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from grader import grading, manifest, report, results_json
from grader.cli import EXERCISES_HELP, add_common

TIME_BUDGET_HELP = ("seconds the cases may take in all: each exercise gets a share in proportion to its case "
                    "deadlines, and a case that would start after its exercise's share is not run "
                    "(0 points, 'not run'); the other exercises keep their time (default: no budget)")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("submission", metavar="SUBMISSION",
                   help="folder holding the exercise files, directly, under exercises/, or one folder down")
    p.add_argument("--results-json", metavar="FILE", default=None,
                   help="write the results in Gradescope's results.json format to FILE")
    p.add_argument("--exercises", nargs="*", default=None, metavar="EXERCISE", help=EXERCISES_HELP)
    p.add_argument("--public-only", action="store_true", help="leave out the hidden cases")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS", help=TIME_BUDGET_HELP)
    add_common(p)


def run(args: argparse.Namespace) -> int:
    if args.time_budget is not None and args.time_budget <= 0:
        print(f"error: --time-budget must be positive, got {args.time_budget:g}", file=sys.stderr)
        return 2
    try:
        m = manifest.load(args.manifest)
        cases = m.select(args.exercises, hidden=not args.public_only)
        directory = grading.locate(args.submission, m)
    except (manifest.ManifestError, grading.SubmissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    found = files_found(Path(args.submission), directory, m)
    print(found, file=sys.stderr, flush=True)
    start = time.monotonic()

    def progress(r: grading.CaseResult) -> None:
        status = "ok" if r.verdict.passed else r.verdict.kind.value
        print(f"  {r.case.title:<48} {status:<20} {r.seconds:5.1f} s", file=sys.stderr, flush=True)

    results = grading.grade(args.submission, m, cases, backend=args.backend, on_result=progress,
                            budget=args.time_budget)
    data = results_json.build(results, time.monotonic() - start, found=found)
    if args.results_json:
        results_json.write(args.results_json, data)
    # This console is the staff's (on Gradescope, the hidden stdout): hidden failures are shown in full
    # here, so that a mistake in a hidden case can be diagnosed, and only here.
    for r in results:
        if not r.ok:
            print(("[hidden: staff only] " if r.case.hidden else "") + report.failure(r, show_output=False))
    print(report.score_table(results, m))
    return 0


def files_found(submission: Path, directory: Path, m: manifest.Manifest) -> str:
    """Which exercise files were graded, and from which folder of the submission."""
    names = grading.found(directory, m)
    where = directory.relative_to(submission.resolve()).as_posix()
    missing = [ex.file for ex in m.exercises if ex.file not in names]
    return (f"Graded {len(names)} exercise file(s) from {'the top folder' if where == '.' else where + '/'} of "
            f"the submission: {', '.join(names)}" + (f" (not found: {', '.join(missing)})" if missing else ""))
