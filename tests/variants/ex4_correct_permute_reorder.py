"""Correct: one autograd.Function per direction, reshape/permute around all_to_all_single; attention in sequence order after an index_select.

After seq_to_head the tokens are sorted into sequence order, attended with
arange(S) positions, and put back in rank order before head_to_seq.
"""

import torch
import torch.distributed as dist

from ex1_sequence_shard import shard_positions
from ex2_blockwise_attention import attention_with_lse


def _s2h(x, group):
    world_size = dist.get_world_size(group)
    b, h, s, d = x.shape
    send = x.reshape(b, world_size, h // world_size, s, d).permute(1, 0, 2, 3, 4).contiguous()
    recv = torch.empty_like(send)  # (P, B, H/P, S/P, D): row i = rank i's tokens
    dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 2, 0, 3, 4).reshape(b, h // world_size, world_size * s, d)


def _h2s(x, group):
    world_size = dist.get_world_size(group)
    b, hp, s, d = x.shape
    send = x.reshape(b, hp, world_size, s // world_size, d).permute(2, 0, 1, 3, 4).contiguous()
    recv = torch.empty_like(send)  # (P, B, H/P, S/P, D): row i = rank i's heads
    dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 0, 2, 3, 4).reshape(b, world_size * hp, s // world_size, d)


class _SeqToHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _s2h(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _h2s(grad.contiguous(), ctx.group), None


class _HeadToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _h2s(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _s2h(grad.contiguous(), ctx.group), None


def seq_to_head(x, group=None):
    world_size = dist.get_world_size(group)
    if x.shape[1] % world_size:
        raise ValueError(f"number of heads {x.shape[1]} not divisible by {world_size}")
    return _SeqToHead.apply(x, group)


def head_to_seq(x, group=None):
    world_size = dist.get_world_size(group)
    if x.shape[2] % world_size:
        raise ValueError(f"seq_len {x.shape[2]} not divisible by {world_size}")
    return _HeadToSeq.apply(x, group)


def ulysses_attention(q, k, v, scheme="contiguous", group=None):
    world_size = dist.get_world_size(group)
    if q.shape[1] % world_size:
        raise ValueError(f"number of heads {q.shape[1]} not divisible by {world_size}")
    seq_len = q.shape[2] * world_size
    order = torch.cat([shard_positions(seq_len, r, world_size, scheme) for r in range(world_size)]).to(q.device)
    to_sequence = torch.argsort(order)
    q_s, k_s, v_s = (seq_to_head(t, group).index_select(2, to_sequence) for t in (q, k, v))
    pos = torch.arange(seq_len, device=q.device)
    out_s, _ = attention_with_lse(q_s, k_s, v_s, pos, pos)
    out_h = out_s.index_select(2, order)  # back to rank order
    return head_to_seq(out_h, group)
