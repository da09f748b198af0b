"""Tasks of exercise 1 (sequence sharding): positions, shard, unshard, gather, and argument errors."""

from __future__ import annotations

import torch

from grader.tasks import task, tensor_shape, try_call

# call -> (arguments, the argument its ValueError must name); the judge reads them too
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


@task("ex1", "positions")
def positions(ctx):
    s = ctx.spec
    return {"positions": [ctx.call("shard_positions", s.shape["S"], r, s.world_size, s.scheme)
                          for r in range(s.world_size)]}


@task("ex1", "shard")
def shard(ctx):
    s, x = ctx.spec, ctx.inputs["x"]
    before = x.clone()
    dim = tensor_shape(s)[1]
    shards = [ctx.call("sequence_shard", x, r, s.world_size, dim=dim, scheme=s.scheme)
              for r in range(s.world_size)]
    return {"shards": shards, "x_after": x, "unchanged": bool(torch.equal(before, x)),
            "contiguous": [isinstance(t, torch.Tensor) and t.is_contiguous() for t in shards],
            "aliased": [isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr()
                        == x.untyped_storage().data_ptr() for t in shards]}


@task("ex1", "unshard")
def unshard(ctx):
    s = ctx.spec
    return {"full": ctx.call("sequence_unshard", list(ctx.inputs["shards"]), dim=tensor_shape(s)[1],
                             scheme=s.scheme)}


@task("ex1", "gather")
def gather(ctx):
    """The collective: each rank starts from its own shard only and must end with the whole sequence."""
    s = ctx.spec
    return {"full": ctx.call("gather_sequence", ctx.tensor("local"), dim=tensor_shape(s)[1], scheme=s.scheme,
                             group=ctx.group)}


@task("ex1", "errors")
def errors(ctx):
    results = {call: try_call(ctx, "shard_positions", *args) for call, (args, _) in BAD_POSITIONS.items()}
    x = ctx.inputs["x"]
    for call, (args, kwargs, _) in BAD_SHARDS.items():
        results[call] = try_call(ctx, "sequence_shard", x, *args, **kwargs)
    return results
