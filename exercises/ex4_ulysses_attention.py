"""Exercise 4: Ulysses attention: trade the sharded axis with an all-to-all, as in DeepSpeed-Ulysses.

What is sharded: outside attention, the token axis, dim 2, of q, k, v
(B, H, S/P, D), under any scheme. Inside attention, the head axis, dim 1:
(B, H/P, S, D). Attention heads are independent, so a rank holding every token
of H/P heads computes their exact attention with no further communication.

    seq_to_head  (B, H, S/P, D) -> (B, H/P, S, D)   rank r keeps heads [r*H/P, (r+1)*H/P)
    head_to_seq  (B, H/P, S, D) -> (B, H, S/P, D)   the exact inverse

Each is one all-to-all: cut the tensor into P chunks along the axis that
becomes sharded, send chunk i to rank i, and concatenate what arrives, in rank
order, along the axis that becomes whole. Its backward is the inverse
all-to-all (the same exchange with the two axes swapped).

The token axis after seq_to_head holds rank 0's shard, then rank 1's, ...: rank
order, which is sequence order only for contiguous. Mask by the concatenation
of every rank's shard_positions, as in exercise 3, and the scheme is free.

Trade-off: per rank, each all-to-all sends (P-1)/P of a local S/P-token
tensor, so the four of them (q, k, v in, out back) shrink as 1/P, where the
all-gather of exercise 3 receives the whole K/V whatever P is. Each rank holds
K and V of all S tokens, but for H/P heads only. The catch: P must divide H (with grouped-query
attention, the number of K/V heads), so Ulysses alone does not scale past H
ranks; ring attention (exercise 5) has no such limit.

Silent bugs:
- Splitting the wrong axis (a reshape of (B, H, ...) to (P, ...) splits the
  batch, not the heads): every shape checks out, the numbers are wrong.
- Masking the gathered tokens as if they were in sequence order: right for
  contiguous only.
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
        # YOUR CODE HERE
        raise NotImplementedError()

    @staticmethod
    def backward(ctx, grad):
        # Step 1: send each gradient chunk back where its input chunk came from.
        # YOUR CODE HERE
        raise NotImplementedError()


def seq_to_head(x, group=None):
    """(B, H, S/P, D) sequence-sharded -> (B, H/P, S, D) head-sharded. A collective; differentiable.

    Rank r gets heads [r*H/P, (r+1)*H/P); the token axis holds the shards of
    ranks 0..P-1 concatenated in rank order. ValueError naming heads when
    H % P != 0.
    """
    # Step 1: check that P divides the number of heads.
    # Step 2: AllToAll: scatter the heads (dim 1), gather the tokens (dim 2).
    # YOUR CODE HERE
    raise NotImplementedError()


def head_to_seq(x, group=None):
    """(B, H/P, S, D) head-sharded -> (B, H, S/P, D) sequence-sharded: the exact inverse of seq_to_head.

    A collective; differentiable. ValueError naming seq_len when S % P != 0.
    """
    # Step 1: check that P divides the token length.
    # Step 2: AllToAll: scatter the tokens (dim 2), gather the heads (dim 1).
    # YOUR CODE HERE
    raise NotImplementedError()


def ulysses_attention(q, k, v, scheme="contiguous", group=None):
    """Causal attention by head-parallel all-to-all.

    q, k, v: (B, H, S/P, D), this rank's shards under `scheme`. A collective.
    Returns this rank's output shard (B, H, S/P, D) in q's dtype.
    ValueError naming heads when H % P != 0. Differentiable.
    """
    # Step 1: global positions of the tokens after seq_to_head: every rank's shard_positions, in rank order.
    # Step 2: seq_to_head on q, k, v: (B, H/P, S, D) each.
    # Step 3: attention_with_lse masked by those positions, then head_to_seq back to (B, H, S/P, D).
    # YOUR CODE HERE
    raise NotImplementedError()
