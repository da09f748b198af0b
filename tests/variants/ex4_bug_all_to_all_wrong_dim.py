"""Bug: the all-to-all cuts the flat (batch-major) memory into P pieces instead of cutting the scattered axis.

x.view(P, -1) splits along the batch axis first; the pieces still reshape to
the right chunk shape, so every shape checks out and the numbers are wrong.
"""

import torch
import torch.distributed as dist

from ex1_sequence_shard import shard_positions
from ex2_blockwise_attention import attention_with_lse


class AllToAll(torch.autograd.Function):
    """Cut x into P chunks along scatter_dim, send chunk i to rank i, concatenate the chunks received along gather_dim in rank order.

    Backward is the inverse exchange: AllToAll with scatter_dim and gather_dim swapped.
    """

    @staticmethod
    def forward(ctx, x, scatter_dim, gather_dim, group):
        # Step 1: stack the P chunks along a new dim 0 (contiguous): row i goes to rank i.
        # Step 2: dist.all_to_all_single into a buffer of the same shape: row i comes from rank i.
        # Step 3: concatenate the received rows along gather_dim.
        ctx.scatter_dim, ctx.gather_dim, ctx.group = scatter_dim, gather_dim, group
        world_size = dist.get_world_size(group)
        chunk_shape = list(x.shape)
        chunk_shape[scatter_dim] //= world_size
        send = x.contiguous().view(world_size, -1)
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=group)
        return torch.cat([row.view(chunk_shape) for row in recv.unbind(0)], dim=gather_dim)

    @staticmethod
    def backward(ctx, grad):
        # Step 1: send each gradient chunk back where its input chunk came from.
        return AllToAll.apply(grad, ctx.gather_dim, ctx.scatter_dim, ctx.group), None, None, None


def seq_to_head(x, group=None):
    """(B, H, S/P, D) sequence-sharded -> (B, H/P, S, D) head-sharded. A collective; differentiable.

    Rank r gets heads [r*H/P, (r+1)*H/P); the token axis holds the shards of
    ranks 0..P-1 concatenated in rank order. ValueError naming heads when
    H % P != 0.
    """
    # Step 1: check that P divides the number of heads.
    # Step 2: AllToAll: scatter the heads (dim 1), gather the tokens (dim 2).
    world_size = dist.get_world_size(group)
    if x.dim() != 4:
        raise ValueError(f"x must be (B, H, S/P, D), got shape {tuple(x.shape)}")
    if x.shape[1] % world_size:
        raise ValueError(f"heads: H = {x.shape[1]} is not divisible by the group size P = {world_size}")
    return AllToAll.apply(x, 1, 2, group)


def head_to_seq(x, group=None):
    """(B, H/P, S, D) head-sharded -> (B, H, S/P, D) sequence-sharded: the exact inverse of seq_to_head.

    A collective; differentiable. ValueError naming seq_len when S % P != 0.
    """
    # Step 1: check that P divides the token length.
    # Step 2: AllToAll: scatter the tokens (dim 2), gather the heads (dim 1).
    world_size = dist.get_world_size(group)
    if x.dim() != 4:
        raise ValueError(f"x must be (B, H/P, S, D), got shape {tuple(x.shape)}")
    if x.shape[2] % world_size:
        raise ValueError(f"seq_len: S = {x.shape[2]} is not divisible by the group size P = {world_size}")
    return AllToAll.apply(x, 2, 1, group)


def ulysses_attention(q, k, v, scheme="contiguous", group=None):
    """Causal attention by head-parallel all-to-all.

    q, k, v: (B, H, S/P, D), this rank's shards under `scheme`. A collective.
    Returns this rank's output shard (B, H, S/P, D) in q's dtype.
    ValueError naming heads when H % P != 0. Differentiable.
    """
    # Step 1: global positions of the tokens after seq_to_head: every rank's shard_positions, in rank order.
    # Step 2: seq_to_head on q, k, v: (B, H/P, S, D) each.
    # Step 3: attention_with_lse masked by those positions, then head_to_seq back to (B, H, S/P, D).
    if q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must have the same shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    world_size = dist.get_world_size(group)
    if q.shape[1] % world_size:
        raise ValueError(f"heads: H = {q.shape[1]} is not divisible by the group size P = {world_size}")
    seq_len = q.shape[2] * world_size
    pos = torch.cat([shard_positions(seq_len, r, world_size, scheme) for r in range(world_size)]).to(q.device)  # (S,)
    q_h, k_h, v_h = (seq_to_head(t, group) for t in (q, k, v))  # (B, H/P, S, D)
    out_h, _ = attention_with_lse(q_h, k_h, v_h, pos, pos, causal=True)
    return head_to_seq(out_h, group)  # (B, H, S/P, D)
