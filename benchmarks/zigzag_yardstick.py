"""Why compute_zigzag has no CPU verdict: a correct ring and a dense one that hides from the FLOP counter,
against a yardstick no student code can inflate.

    python benchmarks/zigzag_yardstick.py [--runs 3] [--seq 4096]

Runs ex5's compute_zigzag case at a larger S on the kit's solution and on two
cheats (every block computed whole, blind to the counter, with dummy matmuls
of the formula's size on the side, in float64 or bfloat16), and prints every
rank's CPU time in the call (the kernel's count) over the yardstick: the kit's
own attention doing one rank's share of a ring that skips, timed here with a
rank's settings (one thread, its allocator). The README's "Limits" quotes the
figures; they overlap too much with how fast a correct student's code may be
for a verdict to rest on them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

KIT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(KIT), str(KIT / "tests")]

import torch  # noqa: E402

from conftest import make_submission  # noqa: E402
from grader import grading, procfs, reference, worker  # noqa: E402
from grader.manifest import load  # noqa: E402
from test_evidence import BLIND  # noqa: E402
from variants import VARIANTS, Variant, apply  # noqa: E402

DUMMIES = ("        return _ring_forward(q, k, v, scheme, group)\n",
           "        out = _ring_forward(q, k, v, scheme, group)\n"
           "    b, h, n, d = q.shape\n"
           "    x, y = torch.randn(b, h, n, d, dtype=DUMMY), torch.randn(b, h, d, n, dtype=DUMMY)\n"
           "    for _ in range(dist.get_world_size(group) + 1):  # (P+1)/2 blocks of matmuls, for the counter\n"
           "        x @ y\n"
           "    return out\n")


def ring_work(case, rank: int) -> None:
    """One rank's share of a ring that skips: the visible rectangle of every block, merged by lse."""
    b, h, s, d = (case.shape[k] for k in "BHSD")
    p = case.group_size
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, s // p, d, generator=gen, dtype=torch.float64) for _ in range(3))
    q_pos = reference.positions(s, rank, p, case.scheme)
    out, lse = torch.zeros_like(q), torch.full(q.shape[:3], float("-inf"), dtype=q.dtype)
    for step in range(p):
        k_pos = reference.positions(s, (rank - step) % p, p, case.scheme)
        rows, keys = reference.visible_rectangle(q_pos, k_pos)
        if keys:
            blk, blk_lse = reference.causal_attention(q[:, :, rows:], k[:, :, :keys], v[:, :, :keys],
                                                      q_pos[rows:], k_pos[:keys])
            new = torch.logaddexp(lse[:, :, rows:], blk_lse)
            keep = torch.exp(lse[:, :, rows:] - new).nan_to_num_(0.0).unsqueeze(-1)
            out[:, :, rows:] = out[:, :, rows:] * keep + blk * torch.exp(blk_lse - new).unsqueeze(-1)
            lse[:, :, rows:] = new


def yardstick(case) -> float:
    """The fastest of 3 timings of ring_work for rank 0 (the first pays for first use)."""
    seconds = []
    for _ in range(3):
        start = procfs.sample(os.getpid()).cpu
        ring_work(case, 0)
        seconds.append(procfs.sample(os.getpid()).cpu - start)
    return min(seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seq", type=int, default=4096)
    args = p.parse_args()
    grading.MEASURES = 1
    torch.set_num_threads(1)
    worker.steady_memory()
    lab = load()
    case = next(c for c in lab.cases if c.exercise == "ex5" and c.name == "compute_zigzag")
    case = dataclasses.replace(case, shape={"B": 1, "H": 2, "S": args.seq, "D": 64}, timeout=120)
    dense = next(v for v in VARIANTS if v.name == "ex5_bug_no_skip_zigzag")
    with tempfile.TemporaryDirectory(prefix="cplab-yardstick-") as tmp:
        subs = {"solution": KIT / "solutions"}
        for dtype in ("float64", "bfloat16"):
            source = apply(Variant("cheat", dense.solution, dense.bug, dense.edits + [BLIND]))
            source = source.replace(*DUMMIES).replace("dtype=DUMMY", f"dtype=torch.{dtype}")
            subs[f"dense + {dtype} dummies"] = make_submission(Path(tmp) / dtype, {dense.solution: source})
        for name, sub in subs.items():
            print(f"{name}:")
            with grading.Grader(sub, lab) as grader:
                for _ in range(args.runs):
                    result = grader.run(case)
                    cpu = [e["cpu"] for e in result.evidence]
                    stick = yardstick(case)
                    print(f"  {max(cpu) / stick:.2f}x   CPU ms per rank: {' '.join(f'{c * 1000:.0f}' for c in cpu)}"
                          f"   yardstick {stick * 1000:.0f} ms   {result.verdict.kind.value}", flush=True)


if __name__ == "__main__":
    main()
