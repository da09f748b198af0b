"""Tasks: the rank side of the checks, what every rank runs around the student's functions.

Student code runs in the ranks and may be hostile, so a rank is told only
what its task needs:
  - `ctx.spec`, a Spec: the case's exercise, check, world size, scheme,
    dtype, shape, params and the group's members; never its seed, name,
    visibility, points or timeout;
  - `ctx.inputs`, this rank's input dict, cut by the grader to the keys its
    check declares in `Check.sends`: a task that reads another key fails
    with a KeyError, a grader error.
A task calls the student's functions through `ctx.call` and returns what it
got (tensors, numbers, strings). Modules here import only torch, the standard
library, grader.tasks.*, grader.probes, grader.model and grader.adapter: the
references, the comparisons and the manifest stay in the grader's process,
and the rank's import guard (grader.adapter.isolate) refuses them there.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


@dataclass(frozen=True)
class Spec:
    """All a rank learns of its case: enough to call the student's functions, not to recompute the inputs."""

    exercise: str
    check: str
    world_size: int
    scheme: str
    dtype: str
    shape: dict
    params: dict
    members: tuple[int, ...]  # global ranks of the group the student's code is handed, in group-rank order

    @property
    def group_size(self) -> int:
        """P as the student's code sees it: the size of the group it is handed."""
        return len(self.members)

    @classmethod
    def of(cls, case: Any) -> "Spec":
        """The Spec of a manifest Case (or anything with its fields)."""
        return cls(exercise=case.exercise, check=case.check, world_size=case.world_size, scheme=case.scheme,
                   dtype=case.dtype, shape=dict(case.shape), params=dict(case.params),
                   members=tuple(case.members))


_registry: dict[str, dict[str, Callable[[Any], dict]]] = {}


def task(exercise: str, check: str):
    """Function decorator: `@task("ex1", "gather")` is what the ranks run for that check."""

    def add(fn: Callable[[Any], dict]) -> Callable[[Any], dict]:
        _registry.setdefault(exercise, {})[check] = fn
        return fn

    return add


def get(exercise: str, check: str) -> Callable[[Any], dict]:
    """The task of `check`, importing grader.tasks.<exercise> on first use."""
    if exercise not in _registry:
        importlib.import_module(f"grader.tasks.{exercise}")
    return _registry[exercise][check]


def tensor_shape(case: Any) -> tuple[tuple[int, ...], int]:
    """ex1's input shape and token axis, from a Spec or a Case: (B, S, F) on dim 1, or (B, H, S, D) on dim 2."""
    s = case.shape
    if "H" in s:
        return (s.get("B", 2), s["H"], s["S"], s.get("D", 4)), case.params.get("dim", 2)
    return (s.get("B", 2), s["S"], s.get("F", 3)), case.params.get("dim", 1)


def try_call(ctx: Any, name: str, *args: Any, **kwargs: Any) -> dict:
    """Call a student function that should raise: what it raised, or that it returned.

    A stub's NotImplementedError still propagates, so an untouched exercise
    reads "not implemented yet" rather than "raised the wrong error".
    """
    from grader.adapter import StudentError

    try:
        ctx.call(name, *args, **kwargs)
    except StudentError as e:
        if e.kind in ("not_implemented", "missing", "syntax_error", "early_exit"):
            raise
        return {"raised": e.exc_type, "message": e.message}
    return {"raised": "", "message": ""}
