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


def from_function(out: torch.Tensor) -> bool:
    """Whether out's autograd graph holds a torch.autograd.Function's node (found within a few steps)."""
    todo, seen = [out.grad_fn], 0
    while todo and seen < 10_000:
        node = todo.pop()
        seen += 1
        if node is None:
            continue
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            return True
        todo.extend(fn for fn, _ in node.next_functions)
    return False


def attention_task(function: str, mode: str, bonus_backward: bool = False) -> Callable:
    """The task of `function` (the student's attention) in one mode; `bonus_backward`: the backward is a
    bonus that goes through a torch.autograd.Function, so an output without one has not attempted it."""

    def run(ctx):
        spec = ctx.spec
        q, k, v = ctx.tensor("q"), ctx.tensor("k"), ctx.tensor("v")
        call = lambda q_, k_, v_: ctx.call(function, q_, k_, v_, scheme=spec.scheme, group=ctx.group)
        if mode == "backward":
            q, k, v = (t.clone().requires_grad_(True) for t in (q, k, v))
            out = call(q, k, v)
            if not isinstance(out, torch.Tensor) or not out.requires_grad:
                return {"out": out, "no_grad": True}
            if bonus_backward and not from_function(out):
                # a forward-only output that requires grad through its local ops: the bonus path is unused
                return {"out": out, "no_bonus_path": True}
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


def register_attention(exercise: str, function: str, modes: tuple[str, ...], bonus_backward: bool = False) -> None:
    """One task per mode; the exercise's checks register the same modes from the same tuple."""
    for mode in modes:
        task(exercise, mode)(attention_task(function, mode, bonus_backward))
