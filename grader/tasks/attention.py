"""The distributed attention task that ex3, ex4 and ex5 share: one rank's shards in, its output shard out.

Every rank calls the student's attention on its shards of q, k, v (B, H,
S/P, D); by mode it also runs the backward of a given upstream gradient,
calls again with the future perturbed (k2, v2), or measures FLOPs or peak
live memory around the call. The grader judges all of it.
"""

from __future__ import annotations

from typing import Callable

import torch

from grader.probes import measure
from grader.tasks import task


def attention_task(function: str, mode: str) -> Callable:
    """The task of `function` (the student's attention) in one mode."""

    def run(ctx):
        spec = ctx.spec
        q, k, v = ctx.tensor("q"), ctx.tensor("k"), ctx.tensor("v")
        call = lambda q_, k_, v_: ctx.call(function, q_, k_, v_, scheme=spec.scheme, group=ctx.group)
        if mode == "backward":
            q, k, v = (t.clone().requires_grad_(True) for t in (q, k, v))
            out = call(q, k, v)
            if not isinstance(out, torch.Tensor) or not out.requires_grad:
                return {"out": out, "no_grad": True}
            g = ctx.tensor("g").to(out.dtype)
            ctx.submission.run(f"{spec.exercise} {function} backward", out.backward, g)
            return {"out": out, "dq": q.grad, "dk": k.grad, "dv": v.grad}
        if mode == "causality":
            first = call(q, k, v)
            second = call(q, ctx.tensor("k2"), ctx.tensor("v2"))
            return {"out": first, "out2": second}
        # On the CPU the grader reads peak memory from the kernel (VmHWM); the GPU's is only known in here.
        out, found = measure(lambda: call(q, k, v), flops=mode == "compute",
                             memory=mode == "memory" and ctx.device.type == "cuda",
                             device=ctx.device)
        return {"out": out, **found}

    return run


def register_attention(exercise: str, function: str, modes: tuple[str, ...]) -> None:
    """One task per mode; the exercise's checks register the same modes from the same tuple."""
    for mode in modes:
        task(exercise, mode)(attention_task(function, mode))
