"""Bug: shifts the labels inside each shard after sharding, so every shard's last position loses its label (or takes one from the wrong chunk).

Each rank uses its own next local token and puts ignore_index at its own last
position: right only when P == 1.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F


def shift_labels(tokens, scheme="contiguous", group=None, ignore_index=-100):
    # BUG: local order is not sequence order across shard (and, for zigzag/striped, chunk) boundaries
    ignore = tokens.new_full((tokens.shape[0], 1), ignore_index)
    return torch.cat([tokens[:, 1:], ignore], dim=1).to(torch.int64)


def sharded_cross_entropy(logits, labels, group=None, ignore_index=-100):
    acc_dtype = torch.promote_types(logits.dtype, torch.float32)
    local_sum = F.cross_entropy(logits.flatten(0, 1).to(acc_dtype), labels.flatten(),
                                ignore_index=ignore_index, reduction="sum")
    totals = torch.stack([local_sum.detach().double(), (labels != ignore_index).sum().double()])
    dist.all_reduce(totals, group=group)
    global_sum, global_count = totals.to(acc_dtype)
    local_share = local_sum / global_count
    return (global_sum / global_count + (local_share - local_share.detach())).to(logits.dtype)
