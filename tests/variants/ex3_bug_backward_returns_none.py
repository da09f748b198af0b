"""Bug: GatherTokens.backward returns None for its input, so k and v get no gradient at all."""

import torch
import torch.distributed as dist

from ex1_sequence_shard import shard_positions
from ex2_blockwise_attention import attention_with_lse

# Recent torch names the flat-tensor collectives *_single; older releases only have the old names.
_all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_flat = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class GatherTokens(torch.autograd.Function):
    """All-gather along the token axis (dim 2) in rank order; backward reduce-scatters.

    forward: x (B, H, S/P, D) on every rank -> (B, H, S, D), rank r's shard at
    [r*S/P, (r+1)*S/P). backward: the gradient (B, H, S, D) of every rank is
    summed and rank r receives the sum of its slice.
    """

    @staticmethod
    def forward(ctx, x, group):
        # Step 1: all-gather into one flat buffer; collectives stack along dim 0: (P*B, H, S/P, D).
        # Step 2: move the rank axis next to the token axis and merge them: (B, H, P*S/P, D).
        ctx.group = group
        world_size = dist.get_world_size(group)
        batch, heads, shard_len, head_dim = x.shape
        gathered = torch.empty((world_size * batch, heads, shard_len, head_dim), dtype=x.dtype, device=x.device)
        _all_gather_flat(gathered, x.contiguous(), group=group)
        gathered = gathered.view(world_size, batch, heads, shard_len, head_dim)
        return gathered.permute(1, 2, 0, 3, 4).reshape(batch, heads, world_size * shard_len, head_dim)

    @staticmethod
    def backward(ctx, grad):
        # Step 1: split the token axis into (P, S/P) and move P to dim 0, contiguous: (P*B, H, S/P, D).
        # Step 2: reduce-scatter with SUM: rank r gets the sum over ranks of slice r.
        world_size = dist.get_world_size(ctx.group)
        batch, heads, seq_len, head_dim = grad.shape
        shard_len = seq_len // world_size
        per_rank = grad.reshape(batch, heads, world_size, shard_len, head_dim).permute(2, 0, 1, 3, 4)
        per_rank = per_rank.reshape(world_size * batch, heads, shard_len, head_dim)  # a contiguous copy
        grad_x = torch.empty((batch, heads, shard_len, head_dim), dtype=grad.dtype, device=grad.device)
        _reduce_scatter_flat(grad_x, per_rank, op=dist.ReduceOp.SUM, group=ctx.group)
        return None, None


def all_gather_kv_attention(q, k, v, scheme="contiguous", group=None):
    """Causal attention of this rank's queries over the gathered K and V.

    q, k, v: (B, H, S/P, D), this rank's shards under `scheme`. A collective:
    every rank of `group` calls it. Returns this rank's output shard
    (B, H, S/P, D) in q's dtype. Differentiable: k.grad and v.grad receive the
    gradients that every rank's queries send to this rank's keys.
    """
    # Step 1: global positions: this rank's queries, and the gathered keys (every rank's, in rank order).
    # Step 2: gather K and V with GatherTokens: (B, H, S, D) each.
    # Step 3: attention_with_lse, masked by those positions; return out.
    if q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must have the same shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    seq_len = q.shape[2] * world_size
    # Validates scheme and seq_len on every rank alike, before any collective.
    q_pos = shard_positions(seq_len, rank, world_size, scheme).to(q.device)  # (S/P,)
    k_pos = torch.cat([shard_positions(seq_len, r, world_size, scheme) for r in range(world_size)]).to(q.device)  # (S,)
    k_all = GatherTokens.apply(k, group)  # (B, H, S, D), rank order
    v_all = GatherTokens.apply(v, group)
    out, _ = attention_with_lse(q, k_all, v_all, q_pos, k_pos, causal=True)
    return out
