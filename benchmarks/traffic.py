"""What one torch.distributed call makes a rank receive on gloo, by the kernel's count, over its tensor's bytes.

    python benchmarks/traffic.py [--world-sizes 2 3 4 8] [--numel 65536] [--repeat 8]

Starts P gloo ranks on this machine (no sandbox: plain processes) and has
them run each op `--repeat` times on float64 tensors of `--numel` elements
(N bytes), while the parent reads the bytes every rank received from its
peers from the kernel's socket counters (grader.sockets), as the grader does.
Prints, per op and P, the most any rank received per call over N, beside what
grader.checks.traffic.implied allows for that call. The measured column is
what the allowances in traffic.py rest on.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

KIT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(KIT))

from grader import sockets  # noqa: E402
from grader.checks import traffic  # noqa: E402

OPS = ("all_gather", "all_to_all_single", "all_reduce", "reduce_scatter_tensor", "send/recv")


def call(op: str, x: torch.Tensor, rank: int, p: int) -> None:
    if op == "all_gather":
        dist.all_gather([torch.empty_like(x) for _ in range(p)], x)
    elif op == "all_to_all_single":
        dist.all_to_all_single(torch.empty_like(x), x)
    elif op == "all_reduce":
        dist.all_reduce(x)
    elif op == "reduce_scatter_tensor":
        dist.reduce_scatter_tensor(torch.empty(x.numel() // p, dtype=x.dtype), x)
    else:
        works = dist.batch_isend_irecv([dist.P2POp(dist.isend, x, (rank + 1) % p),
                                        dist.P2POp(dist.irecv, torch.empty_like(x), (rank - 1) % p)])
        for w in works:
            w.wait()


def rank_main(rank: int, p: int, init: str, numel: int, repeat: int, go, done) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=p)
    x = torch.randn(numel, dtype=torch.float64)
    for op in OPS:
        go.wait()  # the parent has read the counters
        for _ in range(repeat):
            call(op, x.clone(), rank, p)
        dist.barrier()  # every rank's calls are over (a few bytes of its own)
        done.wait()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)  # reduce_scatter_tensor's rename
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world-sizes", type=int, nargs="+", default=[2, 3, 4, 8])
    ap.add_argument("--numel", type=int, default=1 << 16)
    ap.add_argument("--repeat", type=int, default=8)
    args = ap.parse_args(argv)
    print(f"N = {args.numel} float64 elements = {args.numel * 8} bytes; the most one rank received per call, "
          f"over N (the check's allowance in brackets)")
    print(f"{'op':24}" + "".join(f"P = {p:<12}" for p in args.world_sizes))
    rows: dict[str, list[str]] = {op: [] for op in OPS}
    ctx = mp.get_context("spawn")
    for p in args.world_sizes:
        numel = args.numel - args.numel % p
        n_bytes = numel * 8
        go, done = ctx.Barrier(p + 1), ctx.Barrier(p + 1)
        init = f"file://{tempfile.mkdtemp()}/rendezvous"
        procs = [ctx.Process(target=rank_main, args=(r, p, init, numel, args.repeat, go, done)) for r in range(p)]
        for proc in procs:
            proc.start()
        pids = {r: proc.pid for r, proc in enumerate(procs)}
        diag = sockets.open_diag()
        for op in OPS:
            before = sockets.traffic(diag, pids, sockets.owners(pids))
            go.wait()
            done.wait()
            moved = sockets.since(sockets.traffic(diag, pids, sockets.owners(pids)), before)
            most = max(sum(b[1] for b in moved.get(r, {}).values()) for r in pids) / args.repeat
            x = torch.empty(numel, dtype=torch.float64)  # the record lists tensors as the rank passed them
            record = {"op": "recv" if op == "send/recv" else op, "tensors": [
                {"numel": t.numel(), "bytes": t.numel() * 8} for t in _listed(op, x, p)]}
            allowed = traffic.implied(record, p)[1]
            rows[op].append(f"{most / n_bytes:.2f} ({allowed / n_bytes:.2f})")
        diag.close()
        for proc in procs:
            proc.join(60)
    for op in OPS:
        print(f"{op:24}" + "".join(f"{c:<16}" for c in rows[op]))


def _listed(op: str, x: torch.Tensor, p: int) -> list[torch.Tensor]:
    """The tensors a rank's record lists for op (as `call` passes them), without running it."""
    if op == "all_gather":
        return [x] * (p + 1)
    if op == "reduce_scatter_tensor":
        return [x[: x.numel() // p], x]
    if op == "all_to_all_single":
        return [x, x]
    return [x]


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")  # and in the spawned ranks
    main()
