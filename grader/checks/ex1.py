"""Checks of exercise 1 (sequence sharding): positions, shard, unshard, gather, and argument errors."""

from __future__ import annotations

from typing import Any

import torch

from grader import reference
from grader.checks import Check, Reads, judge_value_errors, per_member, randn, register
from grader.compare import check_tensor
from grader.tasks import tensor_shape
from grader.tasks.ex1 import BAD_POSITIONS, BAD_SHARDS
from grader.verdict import PASS, Kind, fail

# tensor_shape: (B, S, F) on dim 1, or (B, H, S, D) on dim 2 when H is given; params.dim overrides the axis
TENSOR_READS = Reads(shape=("B", "S", "F", "H", "D"), params=("dim",), required=("S",))


# The exercise's contract hint is about ValueErrors; a view or an in-place write is another contract
COPY_HINT = ("A shard is what this rank stores and later writes: a view (narrow, slicing, chunk) shares x's "
             "memory, so writing one changes x and the other ranks' data. index_select copies; so does "
             ".contiguous() on a strided view, but not on a contiguous one (use .clone()).")


def _other_scheme_hint(got: Any, case: Any, rank: int) -> str:
    """Name the usual ex1 bug: positions that are another scheme's."""
    if not isinstance(got, torch.Tensor) or got.dim() != 1:
        return ""
    for other in reference.SCHEMES:
        if other != case.scheme:
            try:
                alt = reference.positions(case.shape["S"], rank, case.group_size, other)
            except ValueError:
                continue
            if got.shape == alt.shape and torch.equal(got, alt):
                return f"These are the {other} positions; the case asks for {case.scheme}."
    return ""


@register("ex1", "positions")
class Positions(Check):
    local = True
    reads = Reads(shape=("S",), required=("S",))

    def inputs(self, case):
        return [{}]

    def judge(self, case, inputs, outcomes):
        got = outcomes[0].payload["positions"]
        for r in range(case.world_size):
            want = reference.positions(case.shape["S"], r, case.world_size, case.scheme)
            call = (f"shard_positions(seq_len={case.shape['S']}, rank={r}, world_size={case.world_size}, "
                    f"scheme={case.scheme!r})")
            verdict = check_tensor(call, got[r], want, exact=True)
            if verdict:
                if verdict.kind is Kind.MISMATCH:
                    verdict.message = f"{call} returned {got[r].tolist()}, expected {want.tolist()}"
                    if sorted(got[r].tolist()) == want.tolist():
                        verdict.message += (": the same tokens in another order; a shard lists its tokens "
                                            "in local order (for zigzag: chunk r, then chunk 2P-1-r)")
                verdict.hint = _other_scheme_hint(got[r], case, r) or verdict.hint
                return verdict
        return PASS


@register("ex1", "shard")
class Shard(Check):
    local = True
    sends = ("x",)
    reads = TENSOR_READS

    def inputs(self, case):
        shape, _ = tensor_shape(case)
        return [{"x": randn(case, *shape)}]

    def judge(self, case, inputs, outcomes):
        out = outcomes[0].payload
        x = inputs[0]["x"]
        _, dim = tensor_shape(case)
        if not out["unchanged"]:
            return fail(Kind.CONTRACT, "sequence_shard modified its input x in place; shards must be copies",
                        hint=COPY_HINT)
        for r in range(case.world_size):
            pos = reference.positions(x.shape[dim], r, case.world_size, case.scheme)
            verdict = check_tensor(f"sequence_shard(x, rank={r}, world_size={case.world_size}, dim={dim}, "
                                   f"scheme={case.scheme!r})", out["shards"][r],
                                   reference.shard(x, r, case.world_size, dim, case.scheme),
                                   token_dim=dim, positions=pos, exact=True)
            if verdict:
                return verdict
            if not out["contiguous"][r] or out["aliased"][r]:
                return fail(Kind.CONTRACT, f"rank {r}: the shard is a view of x, not a contiguous copy "
                                           f"(call .contiguous() or use index_select)", hint=COPY_HINT)
        return PASS


@register("ex1", "unshard")
class Unshard(Check):
    local = True
    sends = ("shards",)  # x, the answer, stays with the judge
    reads = TENSOR_READS

    def inputs(self, case):
        shape, dim = tensor_shape(case)
        x = randn(case, *shape)
        return [{"x": x, "shards": reference.shards(x, case.world_size, dim, case.scheme)}]

    def judge(self, case, inputs, outcomes):
        _, dim = tensor_shape(case)
        verdict = check_tensor("sequence_unshard(shards)", outcomes[0].payload["full"], inputs[0]["x"],
                               token_dim=dim, positions=range(inputs[0]["x"].shape[dim]), exact=True)
        return verdict or PASS


@register("ex1", "gather")
class Gather(Check):
    """The collective: each rank starts from its reference shard and must end with the whole sequence."""

    sends = ("local",)  # x, the answer, stays with the judge
    reads = TENSOR_READS

    def inputs(self, case):
        shape, dim = tensor_shape(case)
        x = randn(case, *shape)
        parts = reference.shards(x, case.group_size, dim, case.scheme)
        return per_member(case, lambda i: {"x": x, "local": parts[i]})

    def judge(self, case, inputs, outcomes):
        _, dim = tensor_shape(case)
        x = inputs[case.members[0]]["x"]
        for r in case.members:
            verdict = check_tensor("gather_sequence(x_local)", outcomes[r].payload["full"], x, rank=r,
                                   token_dim=dim, positions=range(x.shape[dim]), exact=True)
            if verdict:
                if verdict.kind is Kind.MISMATCH and case.scheme != "contiguous":
                    verdict.hint = ("The pieces arrive in rank order, which is not token order under "
                                    f"{case.scheme}: put each token back at its global position.")
                return verdict
        return PASS


@register("ex1", "errors")
class Errors(Check):
    local = True
    sends = ("x",)

    def inputs(self, case):
        return [{"x": randn(case, 2, 10, 3)}]

    def judge(self, case, inputs, outcomes):
        expected = {call: arg for call, (_, arg) in BAD_POSITIONS.items()}
        expected.update({call: arg for call, (_, _, arg) in BAD_SHARDS.items()})
        return judge_value_errors(outcomes[0].payload, expected) or PASS

