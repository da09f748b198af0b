"""Checks of exercise 1 (sequence sharding): positions, shard, unshard, gather, and argument errors."""

from __future__ import annotations

from typing import Any

import torch

from grader import reference
from grader.checks import Check, judge_value_errors, per_member, randn, register, try_call
from grader.compare import check_tensor
from grader.verdict import PASS, Kind, fail


def _tensor_shape(case: Any) -> tuple[tuple[int, ...], int]:
    """The case's input shape and the token axis: (B, S, F) on dim 1, or (B, H, S, D) on dim 2."""
    s = case.shape
    if "H" in s:
        return (s.get("B", 2), s["H"], s["S"], s.get("D", 4)), case.params.get("dim", 2)
    return (s.get("B", 2), s["S"], s.get("F", 3)), case.params.get("dim", 1)


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

    def inputs(self, case):
        return [{}]

    def task(self, ctx):
        c = ctx.case
        return {"positions": [ctx.call("shard_positions", c.shape["S"], r, c.world_size, c.scheme)
                              for r in range(c.world_size)]}

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

    def inputs(self, case):
        shape, _ = _tensor_shape(case)
        return [{"x": randn(case, *shape)}]

    def task(self, ctx):
        c, x = ctx.case, ctx.inputs["x"]
        before = x.clone()
        dim = _tensor_shape(c)[1]
        shards = [ctx.call("sequence_shard", x, r, c.world_size, dim=dim, scheme=c.scheme)
                  for r in range(c.world_size)]
        return {"shards": shards, "x_after": x, "unchanged": bool(torch.equal(before, x)),
                "contiguous": [isinstance(s, torch.Tensor) and s.is_contiguous() for s in shards],
                "aliased": [isinstance(s, torch.Tensor) and s.untyped_storage().data_ptr()
                            == x.untyped_storage().data_ptr() for s in shards]}

    def judge(self, case, inputs, outcomes):
        out = outcomes[0].payload
        x = inputs[0]["x"]
        _, dim = _tensor_shape(case)
        if not out["unchanged"]:
            return fail(Kind.CONTRACT, "sequence_shard modified its input x in place; shards must be copies")
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
                                           f"(call .contiguous() or use index_select)")
        return PASS


@register("ex1", "unshard")
class Unshard(Check):
    local = True

    def inputs(self, case):
        shape, dim = _tensor_shape(case)
        x = randn(case, *shape)
        return [{"x": x, "shards": reference.shards(x, case.world_size, dim, case.scheme)}]

    def task(self, ctx):
        c = ctx.case
        return {"full": ctx.call("sequence_unshard", list(ctx.inputs["shards"]),
                                 dim=_tensor_shape(c)[1], scheme=c.scheme)}

    def judge(self, case, inputs, outcomes):
        _, dim = _tensor_shape(case)
        verdict = check_tensor("sequence_unshard(shards)", outcomes[0].payload["full"], inputs[0]["x"],
                               token_dim=dim, positions=range(inputs[0]["x"].shape[dim]), exact=True)
        return verdict or PASS


@register("ex1", "gather")
class Gather(Check):
    """The collective: each rank starts from its reference shard and must end with the whole sequence."""

    def inputs(self, case):
        shape, dim = _tensor_shape(case)
        x = randn(case, *shape)
        parts = reference.shards(x, case.group_size, dim, case.scheme)
        return per_member(case, lambda i: {"x": x, "local": parts[i]})

    def task(self, ctx):
        c = ctx.case
        full = ctx.call("gather_sequence", ctx.tensor("local"), dim=_tensor_shape(c)[1],
                        scheme=c.scheme, group=ctx.group)
        return {"full": full}

    def judge(self, case, inputs, outcomes):
        _, dim = _tensor_shape(case)
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


BAD_POSITIONS = {
    "shard_positions(seq_len=10, rank=0, world_size=4)": ((10, 0, 4, "contiguous"), "seq_len"),
    "shard_positions(seq_len=12, rank=0, world_size=4, scheme='zigzag')": ((12, 0, 4, "zigzag"), "seq_len"),
    "shard_positions(seq_len=8, rank=4, world_size=4)": ((8, 4, 4, "contiguous"), "rank"),
    "shard_positions(seq_len=8, rank=-1, world_size=4)": ((8, -1, 4, "contiguous"), "rank"),
    "shard_positions(seq_len=8, rank=0, world_size=4, scheme='diagonal')": ((8, 0, 4, "diagonal"), "scheme"),
    "shard_positions(seq_len=8, rank=0, world_size=0)": ((8, 0, 0, "contiguous"), "world_size"),
}
BAD_SHARDS = {
    "sequence_shard(x of 10 tokens, rank=0, world_size=4)": ((0, 4), {"dim": 1}, "seq_len"),
    "sequence_shard(x, rank=0, world_size=4, scheme='random')": ((0, 4), {"dim": 1, "scheme": "random"}, "scheme"),
}


@register("ex1", "errors")
class Errors(Check):
    local = True

    def inputs(self, case):
        return [{"x": randn(case, 2, 10, 3)}]

    def task(self, ctx):
        results = {call: try_call(ctx, "shard_positions", *args) for call, (args, _) in BAD_POSITIONS.items()}
        x = ctx.inputs["x"]
        for call, (args, kwargs, _) in BAD_SHARDS.items():
            results[call] = try_call(ctx, "sequence_shard", x, *args, **kwargs)
        return results

    def judge(self, case, inputs, outcomes):
        expected = {call: arg for call, (_, arg) in BAD_POSITIONS.items()}
        expected.update({call: arg for call, (_, _, arg) in BAD_SHARDS.items()})
        return judge_value_errors(outcomes[0].payload, expected) or PASS

