"""Bug: shifts the shards concatenated in rank order, not in sequence order: right for contiguous only; zigzag and striped labels come from the wrong chunk.

The shards are all-gathered and concatenated without unsharding; this rank's
labels are its slice of that concatenation shifted by one.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F


def shift_labels(tokens, scheme="contiguous", group=None, ignore_index=-100):
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    parts = [torch.empty_like(tokens) for _ in range(world_size)]
    dist.all_gather(parts, tokens.contiguous(), group=group)
    # BUG: rank order is sequence order only under contiguous sharding
    concat = torch.cat(parts + [tokens.new_full((tokens.shape[0], 1), ignore_index)], dim=1)  # (B, S + 1)
    local = tokens.shape[1]
    return concat[:, rank * local + 1:(rank + 1) * local + 1].to(torch.int64)


def sharded_cross_entropy(logits, labels, group=None, ignore_index=-100):
    acc_dtype = torch.promote_types(logits.dtype, torch.float32)
    local_sum = F.cross_entropy(logits.flatten(0, 1).to(acc_dtype), labels.flatten(),
                                ignore_index=ignore_index, reduction="sum")
    totals = torch.stack([local_sum.detach().double(), (labels != ignore_index).sum().double()])
    dist.all_reduce(totals, group=group)
    global_sum, global_count = totals.to(acc_dtype)
    local_share = local_sum / global_count
    return (global_sum / global_count + (local_share - local_share.detach())).to(logits.dtype)
