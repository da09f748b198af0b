"""Where the time of a trivial case goes on a warm pool.

    python benchmarks/per_case.py [--case ex1/gather_zigzag] [--repeat 15]

Runs one case (default ex1's gather_zigzag, P = 4; ex3/forward_zigzag reads
the kernel's evidence) on the kit's solutions, on one warm pool,
and prints the median of each phase as the parent sees it: from the job to
every rank having joined its fresh process group, the opening of the
evidence window, the student's call, its closing, and the answers plus the
judge. Times the runner's own methods from outside; changes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

KIT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(KIT))

from grader import grading, runner  # noqa: E402
from grader.manifest import load  # noqa: E402

PHASES = ("total", "job -> every rank in its group", "evidence window opened", "the call",
          "evidence window closed", "answers and judge")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", default="ex1/gather_zigzag", help="EXERCISE/NAME of a manifest case")
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args(argv)
    lab = load()
    exercise, name = args.case.split("/")
    case = next(c for c in lab.cases if c.exercise == exercise and c.name == name)
    marks: dict[str, float] = {}
    go, end = runner._Watch._go, runner._Watch._end

    def timed_go(watch, ranks):
        marks["go"] = time.monotonic()
        go(watch, ranks)
        marks["opened"] = time.monotonic()

    def timed_end(watch, running):
        marks["ended"] = time.monotonic()
        end(watch, running)
        marks["closed"] = time.monotonic()

    runner._Watch._go, runner._Watch._end = timed_go, timed_end
    rows = []
    with grading.Grader(KIT / "solutions", lab) as grader:
        grader.runner.pool(case.world_size).wait_ready()
        for _ in range(args.repeat):
            marks.clear()
            start = time.monotonic()
            result = grader.run(case)
            stop = time.monotonic()
            assert result.verdict.passed, result.verdict.message
            rows.append((stop - start, marks["go"] - start, marks["opened"] - marks["go"],
                         marks["ended"] - marks["opened"], marks["closed"] - marks["ended"], stop - marks["closed"]))
    for i, name in enumerate(PHASES):
        print(f"{name:32} median {statistics.median(r[i] for r in rows) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
