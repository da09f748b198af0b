"""Wall time of the whole public suite, as a student's `python -m grader check` runs it, per exercise.

    python benchmarks/public_suite.py [--submission DIR]

Grades every public case once through grading.grade, the pipeline `check`
runs (two exercises at once, each lane in warm rank pools; the default
submission is the kit's solutions, so every case runs to the end). Pool
start-up is counted where it happens: before each lane's first case of a
world size. Not a timed test; the README quotes the figures measured on the
2-core CI machine.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from grader import manifest
from grader.grading import grade


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--submission", default=str(manifest.KIT_ROOT / "solutions"))
    args = p.parse_args()
    lab = manifest.load()
    cases = lab.select(hidden=False)
    per = defaultdict(float)
    passed = 0
    start = time.perf_counter()
    for result in grade(args.submission, lab, cases):
        per[result.case.exercise] += result.seconds
        passed += result.verdict.passed
    total = time.perf_counter() - start
    for ex, seconds in per.items():
        print(f"  {ex}: {seconds:6.1f} s")
    print(f"public suite: {len(cases)} cases ({passed} passed) in {total:.1f} s, world sizes "
          f"{sorted({c.world_size for c in cases})}")


if __name__ == "__main__":
    main()
