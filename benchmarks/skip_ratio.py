"""The CPU evidence of ex5's compute_contiguous, run after run: how far a correct ring is from one that skips nothing.

    python benchmarks/skip_ratio.py [--runs 12] [--load N]

Runs the case on the kit's solution and on the ring of tests/variants that
skips no block, RUNS times each (with N other full grades of the solutions
running meanwhile, if asked), and prints for each run the kernel's CPU time of
every rank in the call and rank 0's over the mean of the others: the figure
the check compares with SKIP_RATIO. Each run is one measurement (MEASURES is
set to 1 here); the grader lets a CPU verdict stand only when it repeats.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

KIT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(KIT), str(KIT / "tests")]

from grader import grading  # noqa: E402
from grader.checks.attention import SKIP_RATIO  # noqa: E402
from grader.manifest import load  # noqa: E402
from variants import VARIANTS, apply  # noqa: E402


def ratios(submission: Path, runs: int) -> list[float]:
    lab = load()
    case = next(c for c in lab.cases if c.exercise == "ex5" and c.name == "compute_contiguous")
    found = []
    with grading.Grader(submission, lab) as grader:
        for _ in range(runs):
            result = grader.run(case)
            cpu = [e["cpu"] for e in result.evidence]
            found.append(cpu[0] / (sum(cpu[1:]) / (len(cpu) - 1)))
            print(f"  {found[-1]:.2f}   CPU ms per rank: {' '.join(f'{c * 1000:.0f}' for c in cpu)}   "
                  f"{result.verdict.kind.value}", flush=True)
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=12)
    p.add_argument("--load", type=int, default=0, help="other full grades of the solutions to run meanwhile")
    args = p.parse_args()
    grading.MEASURES = 1
    variant = next(v for v in VARIANTS if v.name == "ex5_bug_no_skip")
    grade = [sys.executable, "-m", "grader", "grade", str(KIT / "solutions")]
    load_procs = [subprocess.Popen(grade, cwd=KIT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                  for _ in range(args.load)]
    try:
        print(f"load average {os.getloadavg()[0]:.2f}, {args.load} other grades; the check fails above "
              f"{SKIP_RATIO}")
        with tempfile.TemporaryDirectory(prefix="cplab-noskip-") as tmp:
            noskip = Path(tmp) / "noskip"
            shutil.copytree(KIT / "solutions", noskip)
            (noskip / variant.solution).write_text(apply(variant))
            for name, sub in (("solution", KIT / "solutions"), ("skips nothing", noskip)):
                print(f"{name}:")
                found = ratios(sub, args.runs)
                print(f"{name}: median {statistics.median(found):.2f}, range {min(found):.2f}-{max(found):.2f}")
    finally:
        for proc in load_procs:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
