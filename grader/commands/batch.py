"""`python -m grader batch SUBMISSIONS_DIR --out grades.csv`: a class graded resumably, with a progress bar."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from grader import batch, manifest
from grader.cli import EXERCISES_HELP, add_common
from grader.commands import needs_instructor_extra


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("submissions", metavar="SUBMISSIONS_DIR",
                   help="one folder per student, each holding the exercise files directly or under exercises/")
    p.add_argument("--out", required=True, metavar="GRADES_CSV",
                   help="the CSV to write; results/<student>.json, logs/, a summary and a PNG go beside it")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="submissions graded at once, each in its own process with its own ranks (default: 1)")
    p.add_argument("--exercises", nargs="*", default=None, metavar="EXERCISE", help=EXERCISES_HELP)
    p.add_argument("--regrade", action="store_true",
                   help="grade every submission again, even those whose results are current")
    p.add_argument("--submission-timeout", type=float, default=None, metavar="SECONDS",
                   help="stop grading a submission after this long and give it score 0 with the reason "
                        "(default: twice the sum of its case timeouts, plus the rank start-up allowance)")
    add_common(p)


def _interrupt(signum: int, frame: Any) -> None:
    # SIGTERM takes the same way out as Ctrl-C: the scheduler's finally stops every worker
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    # imported here: `python -m grader --help` and the students' commands must not need rich
    try:
        import matplotlib  # noqa: F401  (the PNG is drawn at the end: fail before grading, not after it)
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
    except ModuleNotFoundError as e:
        print(needs_instructor_extra("batch", e.name), file=sys.stderr)
        return 2

    if args.jobs < 1:
        print(f"error: --jobs must be at least 1, got {args.jobs}", file=sys.stderr)
        return 2
    if args.submission_timeout is not None and args.submission_timeout <= 0:
        print(f"error: --submission-timeout must be positive, got {args.submission_timeout:g}", file=sys.stderr)
        return 2
    settings = batch.Settings(manifest=Path(args.manifest or manifest.DEFAULT_MANIFEST).resolve(),
                              exercises=tuple(args.exercises) if args.exercises else None,
                              backend=args.backend, submission_timeout=args.submission_timeout)
    try:
        plan = batch.plan(args.submissions, args.out, settings, regrade=args.regrade)
    except (manifest.ManifestError, batch.BatchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    total, todo = len(plan.students), len(plan.todo)
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    console.print(f"{total} submission(s): {total - todo} already graded, grading {todo} "
                  f"with {args.jobs} job(s), at most {plan.limit:g} s each")
    columns = (TextColumn("grading"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("grading", total=total, completed=total - todo)

            def show(row: batch.Row, done: int) -> None:
                progress.update(task, completed=done)
                progress.console.print(_line(row))

            outcome = batch.execute(plan, jobs=args.jobs, on_result=show)
    except KeyboardInterrupt:
        console.print(f"interrupted: the finished results are in {plan.layout.results}; "
                      f"rerun the same command to grade the rest")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(batch.write_reports(outcome, plan.layout))
    print(f"\nwrote {plan.layout.csv}, {plan.layout.summary.name}, {plan.layout.plot.name} "
          f"and {plan.layout.results}/<student>.json")
    return 0


def _line(row: batch.Row) -> str:
    if row.error:
        return f"{row.student}: grading failed: {row.error}"
    failed = f", {len(row.failures)} case(s) failed" if row.failures else ""
    return f"{row.student}: {row.score:g}/{row.max_score:g}{failed}"
