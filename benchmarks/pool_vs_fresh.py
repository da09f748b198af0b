"""Grades the public cases of one exercise twice: in warm rank pools, then with fresh ranks per case.

    python benchmarks/pool_vs_fresh.py [EXERCISE] [--submission DIR]

Prints both wall times and their ratio. Not a timed test: numbers depend on
the machine (the README quotes the ones measured on the 2-core CI machine).
"""

from __future__ import annotations

import argparse
import time

from grader import manifest
from grader.grading import Grader


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("exercise", nargs="?", default="ex1")
    p.add_argument("--submission", default=str(manifest.KIT_ROOT / "solutions"))
    args = p.parse_args()
    lab = manifest.load()
    cases = lab.select([args.exercise], hidden=False)

    start = time.perf_counter()
    with Grader(args.submission, lab) as grader:
        pooled = [grader.run(c) for c in cases]
    t_pool = time.perf_counter() - start

    start = time.perf_counter()
    fresh = []
    for c in cases:
        with Grader(args.submission, lab) as grader:
            fresh.append(grader.run(c))
    t_fresh = time.perf_counter() - start

    assert [r.verdict.kind for r in pooled] == [r.verdict.kind for r in fresh]
    passed = sum(r.verdict.passed for r in pooled)
    print(f"{args.exercise}: {len(cases)} public cases ({passed} passed), world sizes "
          f"{sorted({c.world_size for c in cases})}")
    print(f"  warm pools:          {t_pool:6.1f} s")
    print(f"  fresh ranks per case: {t_fresh:6.1f} s")
    print(f"  ratio:               {t_fresh / t_pool:6.1f}x")


if __name__ == "__main__":
    main()
