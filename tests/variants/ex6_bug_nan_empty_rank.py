"""Bug: a rank whose labels are all ignore_index takes the mean of nothing (NaN), and the all-reduce spreads the NaN to every rank.

Each rank rescales its local mean by local_count / global_count: right
whenever every rank has at least one valid label.
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


def sharded_cross_entropy(logits, labels, group=None, ignore_index=-100):
    # BUG: mean over zero valid labels is 0/0 = NaN, and NaN * 0 is still NaN
    local_mean = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=ignore_index)
    local_count = (labels != ignore_index).sum().to(logits.dtype)
    local_sum = local_mean * local_count
    totals = torch.stack([local_sum.detach().double(), local_count.double()])
    dist.all_reduce(totals, group=group)
    global_sum, global_count = totals.to(logits.dtype)
    local_share = local_sum / global_count
    return global_sum / global_count + (local_share - local_share.detach())
