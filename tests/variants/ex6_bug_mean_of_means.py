"""Bug: averages the per-rank mean losses, wrong whenever ranks hold different numbers of valid labels.

Each rank takes F.cross_entropy's mean over its own labels; the all-reduce
then averages those means over the ranks that have any. Right only when every
rank has the same count of valid labels.
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
    local_count = (labels != ignore_index).sum()
    if local_count > 0:
        local_mean = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=ignore_index)
    else:
        local_mean = logits.sum() * 0  # a rank with nothing to average contributes nothing
    # BUG: the number of ranks with labels weighs every rank alike, not every token
    totals = torch.stack([local_mean.detach().double(), (local_count > 0).double()])
    dist.all_reduce(totals, group=group)
    mean_of_means = (totals[0] / totals[1]).to(logits.dtype)
    local_share = local_mean / totals[1].to(logits.dtype)
    return mean_of_means + (local_share - local_share.detach())
