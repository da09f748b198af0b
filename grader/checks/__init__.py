"""Checks: how each kind of case is run and judged, one module per exercise (ex1.py ... ex7.py).

A check has three parts, and the process each runs in is the point:
  - `inputs(case)`, in the grader: seeded inputs, one dict per rank; it may
    hold what only the judge needs (the whole sequence, the answer);
  - its task, in every rank: grader/tasks/exN.py, registered under the same
    exercise and check name; it calls the student's functions and returns
    what it got (tensors, numbers, strings). It sees a Spec of the case (no
    seed, name or visibility) and only the keys of its rank's input dict
    that the check lists in `sends` (`rank_inputs`);
  - `judge(case, inputs, results)`, in the grader: compares every rank's
    result with the float64 reference and the communication record, and
    returns a Verdict.
Untrusted code only ever runs beside the task; this package, the references
and the comparisons are not importable there.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

from grader.verdict import Verdict


@dataclass(frozen=True)
class Reads:
    """The keys of a case's `shape` and `params` that a check (and its task) reads; the manifest refuses others."""

    shape: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    required: tuple[str, ...] = ()  # shape keys without a default


class Check:
    """Base class of a check. `ranks(case)` is how many processes the case needs."""

    reads = Reads()
    #: run the task on a one-rank world, looping over "ranks" inside it (for functions with no collective)
    local = False
    #: the keys of a rank's input dict that its task reads: the only ones sent to the ranks
    sends: tuple[str, ...] = ()
    #: the judge reads the kernel's evidence of the call (bytes per peer, peak memory): the runner reads it
    evidence = False
    #: the judge reads the ranks' CPU time, which other cases running beside it inflate: such a case runs
    #: while no other case of any grader on the machine does (grading.machine_turn)
    alone = False

    def ranks(self, case: Any) -> int:
        return 1 if self.local else case.world_size

    def inputs(self, case: Any) -> list[dict]:
        raise NotImplementedError

    def rank_inputs(self, inputs: list[dict]) -> list[dict]:
        """What the ranks get of `inputs`: each dict cut to `sends` (a rank outside the group has none)."""
        return [{k: d[k] for k in self.sends if k in d} for d in inputs]

    def judge(self, case: Any, inputs: list[dict], results: list[Any]) -> Verdict:
        raise NotImplementedError


_registry: dict[str, dict[str, Check]] = {}


def register(exercise: str, name: str):
    """Class decorator: `@register("ex1", "gather")` makes the check available to the manifest."""

    def add(cls: type) -> type:
        _registry.setdefault(exercise, {})[name] = cls()
        return cls

    return add


def _load(exercise: str) -> dict[str, Check]:
    if exercise not in _registry:
        try:
            importlib.import_module(f"grader.checks.{exercise}")
        except ModuleNotFoundError as e:
            if e.name != f"grader.checks.{exercise}":
                raise
    return _registry.get(exercise, {})


def get(exercise: str, name: str) -> Check:
    return _load(exercise)[name]


def exists(exercise: str, name: str) -> bool:
    return name in _load(exercise)


def names(exercise: str) -> list[str]:
    return sorted(_load(exercise))


def generator(case: Any, salt: int = 0) -> torch.Generator:
    """The case's seeded generator: the same inputs on every run and every machine."""
    return torch.Generator().manual_seed(case.seed * 7919 + salt)


def randn(case: Any, *shape: int, salt: int = 0, scale: float = 1.0) -> torch.Tensor:
    """Seeded float64 normal values; cast to the case's dtype where the check needs it."""
    return torch.randn(*shape, generator=generator(case, salt), dtype=torch.float64) * scale


def per_member(case: Any, make: Callable[[int], dict]) -> list[dict]:
    """One input dict per global rank: `make(i)` for the i-th member of the case's group, {} for the rest."""
    ranks = case.members
    return [make(ranks.index(r)) if r in ranks else {} for r in range(case.world_size)]


def member_positions(case: Any, i: int) -> torch.Tensor:
    """Global token positions held by the i-th member of the group, for the case's S and scheme."""
    from grader import reference

    return reference.positions(case.shape["S"], i, case.group_size, case.scheme)


def judge_value_errors(results: dict, expected: dict) -> Verdict | None:
    """`expected` maps a call's description to the argument its ValueError must name."""
    from grader.verdict import Kind, fail

    for call, argument in expected.items():
        got = results.get(call, {})
        if got.get("raised") != "ValueError":
            what = f"raised {got.get('message')}" if got.get("raised") else "returned normally"
            return fail(Kind.CONTRACT, f"{call} {what}; the contract asks for a ValueError naming "
                                       f"{argument!r}: invalid arguments never pass silently")
        if argument not in got.get("message", ""):
            return fail(Kind.CONTRACT, f"{call} raised a ValueError whose message does not name "
                                       f"{argument!r}: {got.get('message')}")
    return None
