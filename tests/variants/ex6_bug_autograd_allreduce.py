"""Bug: all-reduces the loss through autograd, so backward all-reduces the gradient too: every logit gradient is P times too large.

The value is right: the all-reduce sums the per-rank shares
local_sum / global_count. But, like torch.distributed.nn.functional.all_reduce,
its backward sums the incoming gradients (1 from each rank's .backward()) over
the group.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ex1_sequence_shard import gather_sequence, shard_positions


def shift_labels(tokens, scheme="contiguous", group=None, ignore_index=-100):
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    full = gather_sequence(tokens, dim=1, scheme=scheme, group=group)  # (B, S)
    seq_len = full.shape[1]
    full = torch.cat([full, full.new_full((full.shape[0], 1), ignore_index)], dim=1)  # (B, S + 1)
    positions = shard_positions(seq_len, rank, world_size, scheme).to(tokens.device)
    return full[:, positions + 1].to(torch.int64)


class _AllReduceSum(torch.autograd.Function):
    """A differentiable all-reduce: sums forward, and sums the gradients backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def sharded_cross_entropy(logits, labels, group=None, ignore_index=-100):
    local_sum = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=ignore_index, reduction="sum")
    count = (labels != ignore_index).sum().double()
    dist.all_reduce(count, group=group)
    # BUG: a differentiable all-reduce; its backward multiplies the gradient by P
    return _AllReduceSum.apply(local_sum / count.to(logits.dtype), group)
