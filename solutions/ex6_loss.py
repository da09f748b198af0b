"""Exercise 6: the next-token loss when the sequence is sharded across ranks.

What is sharded: the token axis, dim 1, of the token ids (B, S) and of the
logits (B, S, V). Rank r holds the tokens at the global positions
shard_positions(S, r, P, scheme), in that order: S/P of them, under the same
scheme as every other exercise. Nothing else is sharded; the vocabulary axis V
stays whole on every rank.

Two things cross shard boundaries:

1. Labels. The label at global position t is the token at t + 1, and the
   token after a rank's last position belongs to another rank (contiguous:
   the next rank; zigzag and striped: another chunk, sometimes on this rank).
   Gathering the token ids is cheap (B*S integers, nothing next to the
   activations) and the simplest correct answer. The optimisation is a
   neighbour exchange: contiguous and zigzag only need one boundary token per
   chunk from a ring neighbour.
2. The mean. Single-device cross-entropy divides the sum over all valid tokens
   by the count of all valid tokens. Each rank holds a different number of
   valid tokens (padding, the last position), so a rank sums its losses, and
   the sums and counts are all-reduced.

The gradient is the subtle part. Every rank calls .backward() on its own loss,
and logits.grad must be this rank's shard of the single-device gradient,
(softmax - onehot) / N_global for each valid token: the gradient of
local_sum / N_global. So the returned tensor takes its value from the
all-reduced sum and its gradient from the local sum. The all-reduce runs on
detached numbers: autograd never sees a collective here.

Silent bugs (a plausible number comes out, training quietly degrades):
- Labels shifted after sharding, inside each shard: the last token of every
  shard loses its label (contiguous), or takes a token from the wrong chunk
  (zigzag, striped).
- Shifting the rank-order concatenation of the shards: right for contiguous
  only, since under zigzag and striped rank order is not sequence order.
- The mean of per-rank means: wrong whenever ranks hold different numbers of
  valid tokens, and it is the usual case with padding.
- All-reducing the loss with a differentiable collective: backward all-reduces
  the gradient too, so every logit gradient comes out P times too large.
- local_sum / local_count on a rank whose labels are all ignored: 0/0 = NaN,
  and the all-reduce spreads it to every rank.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ex1_sequence_shard import gather_sequence, shard_positions


def shift_labels(tokens, scheme="contiguous", group=None, ignore_index=-100):
    """Next-token labels for this rank's positions.

    tokens: (B, S/P) int64, this rank's shard (as sequence_shard makes it).
    Returns (B, S/P) int64 on tokens.device: at global position t the token at
    t + 1; ignore_index at the last global position S - 1. A collective: every
    rank of the group must call it. An unknown scheme, or a length the scheme
    cannot split, raises ValueError naming scheme or seq_len, on every rank
    alike (so that no rank waits in a collective alone).
    """
    # Step 1: gather the full token ids (B, S), in global order.
    # Step 2: append one ignore_index column: position S, "after the end".
    # Step 3: the labels of this rank's positions are the tokens one position further on.
    ### BEGIN SOLUTION
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    full = gather_sequence(tokens, dim=1, scheme=scheme, group=group)  # (B, S)
    seq_len = full.shape[1]
    past_end = full.new_full((full.shape[0], 1), ignore_index)  # (B, 1)
    full = torch.cat([full, past_end], dim=1)  # (B, S + 1)
    positions = shard_positions(seq_len, rank, world_size, scheme).to(tokens.device)  # (S/P,)
    # Index with global positions: the shift happens in sequence order, never in local order
    return full[:, positions + 1].to(torch.int64)  # (B, S/P)
    ### END SOLUTION


def sharded_cross_entropy(logits, labels, group=None, ignore_index=-100):
    """Mean next-token cross-entropy over the whole sharded batch.

    logits: (B, S/P, V), labels: (B, S/P) this rank's shards. Returns a 0-dim
    tensor in logits.dtype whose value, on every rank, is single-device
    F.cross_entropy over all non-ignored labels of the whole batch and sequence,
    and whose backward puts this rank's shard of the single-device gradient in
    logits.grad. A collective: every rank of the group must call it.
    """
    # Step 1: sum this rank's per-token losses (reduction="sum") and count its valid labels.
    # Step 2: all-reduce the detached sum and count over the group.
    # Step 3: return the global mean as the value, with the gradient of local_sum / global_count.
    ### BEGIN SOLUTION
    # Accumulate in at least float32: a bfloat16 sum of thousands of losses drops digits
    acc_dtype = torch.promote_types(logits.dtype, torch.float32)
    local_sum = F.cross_entropy(logits.flatten(0, 1).to(acc_dtype), labels.flatten(),
                                ignore_index=ignore_index, reduction="sum")  # (): 0 if all ignored, not NaN
    local_count = (labels != ignore_index).sum()  # ()
    # Detached, in float64 (counts stay exact): the collective is outside autograd,
    # so backward cannot all-reduce (and multiply by P) the gradient
    totals = torch.stack([local_sum.detach().double(), local_count.double()])  # (2,)
    dist.all_reduce(totals, op=dist.ReduceOp.SUM, group=group)
    global_sum, global_count = totals.to(acc_dtype)
    local_share = local_sum / global_count  # gradient wanted: (softmax - onehot) / N_global
    # The value is the global mean, bitwise the same on every rank; the second
    # term is exactly zero but carries local_share's gradient
    loss = global_sum / global_count + (local_share - local_share.detach())
    return loss.to(logits.dtype)
    ### END SOLUTION
