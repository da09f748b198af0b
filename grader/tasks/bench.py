"""The bench's rank side: one rank's figures for one distributed attention, phase by phase.

A rank runs the student's attention (ex3, ex4 or ex5, named by
spec.params["function"]) on its shards of q, k, v in phases, and marks where
each phase's torch.distributed calls end in the live communication record
(grader.instrument), so that the parent reads each phase's traffic from the
record itself:
  1. one plain forward: its output (judged by the parent) and its traffic;
  2. one forward under the probes (grader.probes): FLOPs and peak live memory;
  3. `reps` timed forwards, each after a barrier so that ranks start together;
  4. where the output requires grad: one backward (its traffic), then `reps`
     timed backwards, each after an untimed forward. A backward that raises
     leaves the forward's figures standing, with its error.
The barriers and the phases' own calls fall outside the marked windows.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
import torch.distributed as dist

from grader import instrument
from grader.adapter import StudentError
from grader.probes import measure
from grader.tasks import task


def _calls_so_far() -> int:
    """The number of the last call in this job's record: a phase's window ends here."""
    trace = instrument._trace
    return trace.count if trace is not None else 0


def _sync(device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(ctx: Any, fn: Callable[[], Any]) -> float:
    """Seconds fn() takes on this rank, started together with the group's other ranks."""
    dist.barrier(group=ctx.group)
    _sync(ctx.device)
    start = time.perf_counter()
    fn()
    _sync(ctx.device)
    return time.perf_counter() - start


@task("bench", "attention")
def attention(ctx):
    spec = ctx.spec
    function, reps = spec.params["function"], spec.params["reps"]
    q, k, v = ctx.tensor("q"), ctx.tensor("k"), ctx.tensor("v")
    call = lambda q_, k_, v_: ctx.call(function, q_, k_, v_, scheme=spec.scheme, group=ctx.group)

    out = call(q, k, v)
    marks = {"forward": (0, _calls_so_far())}
    _, found = measure(lambda: call(q, k, v), flops=True, memory=True, device=ctx.device)
    forward_s = [_timed(ctx, lambda: call(q, k, v)) for _ in range(reps)]
    result = {"out": out, "marks": marks, "forward_s": forward_s, **found}

    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    g = ctx.tensor("g")
    first = call(*leaves)
    if not isinstance(first, torch.Tensor) or not first.requires_grad:
        return {**result, "backward": False}
    backward = lambda o: ctx.submission.run(f"{spec.exercise} {function} backward", o.backward, g.to(o.dtype))
    begin = _calls_so_far()
    try:
        backward(first)
    except StudentError as e:  # the forward's figures stand; the parent reports the backward's error
        return {**result, "backward": False, "backward_error": e.message}
    marks["backward"] = (begin, _calls_so_far())
    backward_s = []
    for _ in range(reps):
        again = call(*leaves)
        backward_s.append(_timed(ctx, lambda: backward(again)))
    return {**result, "backward": True, "backward_s": backward_s}
