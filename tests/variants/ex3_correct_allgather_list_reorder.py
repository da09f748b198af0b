"""Correct: all_gather into a list, reorder the gathered K/V into sequence order, mask with arange(S); backward by dist.reduce_scatter of a list.

The gathered K/V is put back in sequence order (argsort of the rank-order
positions), so the keys' positions are simply arange(S).
"""

import torch
import torch.distributed as dist

from ex1_sequence_shard import shard_positions
from ex2_blockwise_attention import attention_with_lse


class _GatherTokens(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=2)  # rank order

    @staticmethod
    def backward(ctx, grad):
        world_size = dist.get_world_size(ctx.group)
        chunks = [c.contiguous() for c in grad.chunk(world_size, dim=2)]
        grad_x = torch.empty_like(chunks[0])
        dist.reduce_scatter(grad_x, chunks, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad_x, None


def all_gather_kv_attention(q, k, v, scheme="contiguous", group=None):
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    seq_len = q.shape[2] * world_size
    q_pos = shard_positions(seq_len, rank, world_size, scheme)
    order = torch.cat([shard_positions(seq_len, r, world_size, scheme) for r in range(world_size)])
    to_sequence = torch.argsort(order).to(q.device)  # gathered slot of each global position
    k_seq = _GatherTokens.apply(k, group).index_select(2, to_sequence)  # (B, H, S, D), sequence order
    v_seq = _GatherTokens.apply(v, group).index_select(2, to_sequence)
    k_pos = torch.arange(seq_len, device=q.device)
    out, _ = attention_with_lse(q, k_seq, v_seq, q_pos.to(q.device), k_pos)
    return out
