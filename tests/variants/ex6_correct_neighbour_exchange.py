"""Correct: labels by a point-to-point exchange with the ring neighbours instead of gathering all token ids.

Contiguous and zigzag move one boundary token per chunk, a (B, 1) tensor each
way; striped moves the next rank's whole shard, since every label there lives
on the next rank. The loss is the reference's.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _exchange(send, to_rank, from_rank, group):
    """Send `send` to group rank to_rank; return the tensor of the same shape received from from_rank."""
    world = group if group is not None else dist.group.WORLD
    recv = torch.empty_like(send)
    ops = [dist.P2POp(dist.isend, send.contiguous(), dist.get_global_rank(world, to_rank), group),
           dist.P2POp(dist.irecv, recv, dist.get_global_rank(world, from_rank), group)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return recv


def shift_labels(tokens, scheme="contiguous", group=None, ignore_index=-100):
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    prev, next_ = (rank - 1) % world_size, (rank + 1) % world_size
    ignore = tokens.new_full((tokens.shape[0], 1), ignore_index)  # (B, 1)
    if scheme == "contiguous":
        # The token after this shard opens the next rank's; the last rank's is past the end
        after = ignore
        if world_size > 1:
            from_next = _exchange(tokens[:, :1], prev, next_, group)  # every rank sends, so none waits alone
            if rank < world_size - 1:
                after = from_next
        labels = torch.cat([tokens[:, 1:], after], dim=1)
    elif scheme == "zigzag":
        if tokens.shape[1] % 2:
            raise ValueError(f"seq_len: zigzag needs an even local length, got {tokens.shape[1]}")
        half = tokens.shape[1] // 2
        front, back = tokens[:, :half], tokens[:, half:]  # chunks r and 2P-1-r
        # Chunk r + 1 opens rank r + 1's front; chunk P-1 is followed by chunk P, this rank's own back
        after_front = back[:, :1]
        # Chunk 2P - r opens rank r - 1's back; chunk 2P-1 (rank 0's back) ends the sequence
        after_back = ignore
        if world_size > 1:
            from_next = _exchange(front[:, :1], prev, next_, group)
            from_prev = _exchange(back[:, :1], next_, prev, group)
            if rank < world_size - 1:
                after_front = from_next
            if rank > 0:
                after_back = from_prev
        labels = torch.cat([front[:, 1:], after_front, back[:, 1:], after_back], dim=1)
    elif scheme == "striped":
        # Position r + iP is followed by r + 1 + iP: the next rank's i-th token, or rank 0's (i+1)-th
        following = _exchange(tokens, prev, next_, group) if world_size > 1 else tokens
        labels = following if rank < world_size - 1 else torch.cat([following[:, 1:], ignore], dim=1)
    else:
        raise ValueError(f"scheme must be 'contiguous', 'zigzag' or 'striped', got {scheme!r}")
    return labels.to(torch.int64)


def sharded_cross_entropy(logits, labels, group=None, ignore_index=-100):
    acc_dtype = torch.promote_types(logits.dtype, torch.float32)
    local_sum = F.cross_entropy(logits.flatten(0, 1).to(acc_dtype), labels.flatten(),
                                ignore_index=ignore_index, reduction="sum")
    totals = torch.stack([local_sum.detach().double(), (labels != ignore_index).sum().double()])
    dist.all_reduce(totals, group=group)
    global_sum, global_count = totals.to(acc_dtype)
    local_share = local_sum / global_count
    return (global_sum / global_count + (local_share - local_share.detach())).to(logits.dtype)
