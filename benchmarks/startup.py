"""Rank start-up, before and after the preloaded zygote: the same gradings timed on both, in one run.

    python benchmarks/startup.py [--baseline COMMIT] [--repeat N]

Grades the kit's solutions in full (public + hidden) and runs the public
suite, each with the kit at COMMIT (default: the last commit that spawned
every pool, each rank importing torch) and with this checkout, and prints
both wall times and their ratio. Then times a warm zygote forking a P=8 pool
until every rank is ready. Both kits run the same command as a user would
(`python -m grader grade solutions`), each from its own tree. Not a timed
test: the README quotes the figures measured on the 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KIT = Path(__file__).resolve().parent.parent
BASELINE = "c758163"  # the kit before the zygote: spawn per pool


def timed(cmd: list[str], tree: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed in {tree}:\n{done.stdout[-2000:]}")
    return seconds


def pool_ready(repeat: int) -> list[float]:
    sys.path.insert(0, str(KIT))
    from grader.runner import Runner

    with Runner() as runner:
        runner.pool(1).wait_ready()  # the zygote's one-time imports are not what is measured
        times = []
        for _ in range(repeat):
            pool = runner.pool(8)
            start = time.perf_counter()
            pool.wait_ready()
            times.append(time.perf_counter() - start)
            pool.kill()
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default=BASELINE, help=f"the commit to compare with (default: {BASELINE})")
    p.add_argument("--repeat", type=int, default=5, help="P=8 pools to time (default: 5)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="cplab-baseline-") as tmp:
        old = Path(tmp)
        archive = subprocess.run(["git", "archive", args.baseline], cwd=KIT, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        grade = [sys.executable, "-m", "grader", "grade", "solutions"]
        suite = [sys.executable, "benchmarks/public_suite.py"]
        print(f"load average before: {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
        rows = []
        for what, cmd in (("full grade of solutions/ (public + hidden)", grade), ("public suite", suite)):
            before, after = timed(cmd, old), timed(cmd, KIT)
            rows.append((what, before, after))
            print(f"{what}: {args.baseline} {before:.1f} s, now {after:.1f} s ({before / after:.1f}x)")
    ready = pool_ready(args.repeat)
    print(f"a warm zygote forks a P=8 pool, every rank ready: median {statistics.median(ready) * 1000:.0f} ms "
          f"(min {min(ready) * 1000:.0f}, max {max(ready) * 1000:.0f}) over {len(ready)}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
