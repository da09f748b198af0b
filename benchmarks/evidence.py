"""What the parent measures from the kernel for each strategy and scheme, next to the formula.

    python benchmarks/evidence.py [SUBMISSION] [--world-size 4] [--memory]

Grades one forward case per exercise (ex3 all-gather KV, ex4 Ulysses, ex5
ring) and scheme on the kit's solutions (or SUBMISSION), at B=1, H=4, S=1024,
D=64 in float64 (a K shard of 512 KiB at P = 4), and prints, per strategy, the
bytes rank 1 received from each peer by the kernel's socket counters, the
peak resident memory of the call over one K shard (and, where the grader gives
each rank a memory cgroup, the peak charged to it: files and memfds included),
and the CPU time of every rank, beside the bytes the strategy must move and
the attention work each rank's share needs (grader.bench.predict). The
README's table is this script's output. With --memory it grades the manifest's
ex5 memory cases instead and prints every rank's two peaks, before FIRST_USE.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

KIT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(KIT))

from grader.bench import Sizes, predict  # noqa: E402
from grader.checks.attention import shard_numel  # noqa: E402
from grader.grading import Grader  # noqa: E402
from grader.manifest import load  # noqa: E402

STRATEGIES = {"ex3": "all-gather KV", "ex4": "Ulysses", "ex5": "ring"}
SHAPE = {"B": 1, "H": 4, "S": 1024, "D": 64}


def formula(exercise: str, p: int, peer: int, rank: int) -> float:
    """K-shards rank `rank` must receive from `peer` in one forward."""
    if exercise == "ex4":
        return 4 / p  # its 1/P of every peer's q, k, v, and of the output coming back
    # gloo's all_gather runs as a ring as well: 2 (P-1) shards of K and V, all from the previous rank
    return 2 * (p - 1) if peer == (rank - 1) % p else 0.0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("submission", nargs="?", default=str(KIT / "solutions"))
    ap.add_argument("--world-size", type=int, default=4)
    ap.add_argument("--memory", action="store_true", help="every rank's peaks on ex5's memory cases")
    args = ap.parse_args(argv)
    lab = load()
    if args.memory:
        return memory_cases(args.submission, lab)
    p = args.world_size
    print(f"P = {p}, shape {SHAPE}, float64; bytes in K shards (one rank's K: B·H·S/P·D·8 bytes)")
    print(f"{'strategy':14} {'scheme':11} {'rank 1 received from peers 0..P-1 (formula)':48} "
          f"{'peak mem (shards)':18} CPU ms per rank (work in blocks, formula)")
    with Grader(args.submission, lab) as grader:
        for exercise, strategy in STRATEGIES.items():
            base = next(c for c in lab.cases if c.exercise == exercise and c.check == "forward")
            for scheme in ("contiguous", "zigzag", "striped"):
                case = dataclasses.replace(base, world_size=p, scheme=scheme, shape=dict(SHAPE), group=None,
                                           name=f"evidence_{scheme}")
                result = grader.run(case)
                if not result.verdict.passed:
                    print(f"{strategy:14} {scheme:11} not measured: {result.verdict.kind.value}: "
                          f"{result.verdict.message.splitlines()[0]}")
                    continue
                shard = shard_numel(case) * 8
                ev = result.evidence
                got = ev[1]["received"]
                cells = " ".join(f"{got.get(peer, 0) / shard:.2f}({formula(exercise, p, peer, 1):g})"
                                 for peer in range(p) if peer != 1)
                peaks = _peaks(ev, shard)
                cpu = " ".join(f"{e['cpu'] * 1000:.0f}" for e in ev)
                print(f"{strategy:14} {scheme:11} {cells:48} {peaks:<18} {cpu} ({work(exercise, scheme, p)})")


def work(exercise: str, scheme: str, p: int) -> str:
    """Each rank's attention work by the bench's closed forms, in blocks of (S/P)² pairs."""
    sizes = Sizes(batch=SHAPE["B"], heads=SHAPE["H"], head_dim=SHAPE["D"], tokens_per_rank=SHAPE["S"] // p)
    block = 4 * SHAPE["B"] * SHAPE["H"] * (SHAPE["S"] // p) ** 2 * SHAPE["D"]
    return " ".join(f"{predict(exercise, scheme, sizes, p, r)['flops'] / block:.3g}" for r in range(p))


def _peaks(evidence: list[dict], shard: int) -> str:
    """The largest resident peak over the ranks, in shards, and '/ charged' where a cgroup counted."""
    text = f"{max(e['peak'] for e in evidence) / shard:.1f}"
    if all(e["charged"] is not None for e in evidence):
        text += f" / {max(e['charged'] for e in evidence) / shard:.1f}"
    return text


def memory_cases(submission: str, lab) -> None:
    print("ex5 memory cases: per rank, resident / charged peak in K shards (before FIRST_USE)")
    with Grader(submission, lab) as grader:
        for case in (c for c in lab.cases if c.exercise == "ex5" and c.check == "memory"):
            result = grader.run(case)
            shard = shard_numel(case) * 8
            ranks = "  ".join(_peaks([e], shard) for e in result.evidence)
            print(f"{case.name:18} {result.verdict.kind.value:8} {ranks}")


if __name__ == "__main__":
    main()
