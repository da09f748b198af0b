"""Batch grading throughput: submissions per minute with --jobs 1 and --jobs 2, on every case of the manifest.

    python benchmarks/batch_throughput.py                      # 4 submissions, --jobs 1 then 2
    python benchmarks/batch_throughput.py --submissions 6 --jobs 1 2 4 --exercises ex1

Every submission is a copy of solutions/, so every case, public and hidden,
runs to the end (a stub fails fast and would flatter the figure). Each run is
`python -m grader batch` end to end in a fresh output folder: grading
processes, rank start-up (importing torch in every rank) and the reports are
all counted. The machine's CPU count and load average are printed with the
figures, because a shared machine's load moves them; the CPU seconds per
submission (every process of the batch, reaped) move much less, and bound what
an idle machine can do: at most CPUs * 60 / (CPU per submission) a minute.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KIT = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--submissions", type=int, default=4, help="copies of solutions/ to grade (default: 4)")
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="--jobs values to time (default: 1 2)")
    p.add_argument("--exercises", nargs="*", default=None, help="only these exercises (default: all)")
    p.add_argument("--manifest", default=None, help="the lab manifest (default: the kit's)")
    args = p.parse_args()

    sys.path.insert(0, str(KIT))
    from grader import manifest

    m = manifest.load(args.manifest)
    cases = m.select(args.exercises)
    hidden = sum(c.hidden for c in cases)
    print(f"{len(cases)} cases per submission ({len(cases) - hidden} public, {hidden} hidden), "
          f"{args.submissions} submissions, {os.cpu_count()} CPUs")
    print(f"{'jobs':>4}  {'seconds':>8}  {'per submission':>14}  {'submissions/min':>15}  "
          f"{'CPU per subm.':>16}  load average at start")
    with tempfile.TemporaryDirectory(prefix="cplab-bench-") as tmp:
        subs = Path(tmp) / "subs"
        for i in range(args.submissions):
            shutil.copytree(KIT / "solutions", subs / f"student{i:03d}",
                            ignore=shutil.ignore_patterns("__pycache__"))
        for jobs in args.jobs:
            command = [sys.executable, "-m", "grader", "batch", str(subs), "--out",
                       str(Path(tmp) / f"jobs{jobs}" / "grades.csv"), "--jobs", str(jobs)]
            if args.manifest:
                command += ["--manifest", args.manifest]
            if args.exercises:
                command += ["--exercises", *args.exercises]
            load = " ".join(f"{x:.1f}" for x in os.getloadavg())
            cpu_before = _children_cpu()
            start = time.monotonic()
            proc = subprocess.run(command, cwd=KIT, capture_output=True, text=True)
            seconds = time.monotonic() - start
            # every process of the batch is reaped by its parent, so its CPU time adds up here
            cpu = (_children_cpu() - cpu_before) / args.submissions
            if proc.returncode != 0:
                print(proc.stdout + proc.stderr, file=sys.stderr)
                return 1
            with open(Path(tmp) / f"jobs{jobs}" / "grades.csv", newline="") as f:
                rows = list(csv.DictReader(f))
            full = sum(float(r["score"]) >= float(r["max_score"]) for r in rows)  # bonus may add more
            print(f"{jobs:>4}  {seconds:>8.1f}  {seconds / args.submissions:>12.1f} s  "
                  f"{60 * args.submissions / seconds:>15.2f}  {cpu:>14.1f} s  {load}"
                  + ("" if full == len(rows) else f"  (only {full}/{len(rows)} got full marks: see the CSV)"))
    return 0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    sys.exit(main())
