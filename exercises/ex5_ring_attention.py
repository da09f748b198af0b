"""Exercise 5: ring attention: K/V blocks travel around a ring of ranks, point to point.

What is sharded: the token axis, dim 2, of q, k and v (B, H, S/P, D), under any
scheme. Queries and the output accumulator never move; K/V blocks do. Rank r
sends to rank r+1 and receives from rank r-1 (mod P), so at step t it holds the
K/V block of rank (r - t) mod P:

    step 0      attend own block (the diagonal); pass it on
    step t      attend the block that arrived; merge (exercise 2); pass it on
                after step P-1 (P-1 exchanges), every block has visited every rank.

Trade-off: each rank holds two K/V blocks at a time, the current one and the
next one arriving (double-buffering), so memory stays O(S/P) however large P
gets: that is what lets the sequence grow with the number of ranks. The price
is P-1 sequential exchanges; each is posted before the current block's compute
starts and waited after it, so the transfer hides behind the matmuls. Each
rank sends exactly P-1 K blocks and P-1 V blocks (packed here into one
(2, B, H, S/P, D) message) and receives as many.

Post both sides of an exchange before waiting on either. A blocking ring,
dist.send then dist.recv on every rank, deadlocks on gloo even for a 4 KB
message: gloo's send is a rendezvous, the payload leaves only once the peer has
posted the matching receive. Every rank sits in send, no rank reaches recv: a
cycle of waits. (Whether another backend buffers small messages is an
implementation detail: don't rely on it.) Use dist.batch_isend_irecv with an
isend and an irecv P2POp, then wait on its works. Peers are global ranks:
inside a subgroup the neighbour (r+1) % P is dist.get_global_rank(group, (r+1) % P).

Skipping. Positions ascend within every shard (all three schemes), so the
(query, key) pairs a block makes visible fit in a rectangle: the queries that
see any key form a suffix (q_pos >= min k_pos), the keys seen by any query a
prefix (k_pos <= max q_pos). Compute only that rectangle:
    contiguous  blocks of later ranks are empty: skipped, no matmul at all.
    zigzag      a block of an earlier rank is seen only through its early chunk
                (half the keys); a block of a later rank only by the late chunk
                (half the queries). Every off-diagonal block costs half, on
                every rank: the load balances.
    striped     a block of a later rank loses one query row and one key
                column; the others are full.
The causal mask inside the rectangle still comes from the positions. The
grader holds you to the skip under contiguous sharding, where what lies
outside the rectangles is whole hidden blocks; under zigzag and striped no
block is wholly hidden, and the rectangle is recommended, not graded: whole
blocks keep the points, and the report adds a note.

Bonus, the backward (FlashAttention's, block by block). With the forward's
final lse, a block's probabilities are exp(q k^T * scale - lse): no other
block needed. Then dV = P^T dO, dP = dO V^T, dS = P * (dP - delta) with
delta = rowsum(dO * O) (= sum_j P_ij dP_ij), dQ = dS K * scale,
dK = dS^T Q * scale. dQ belongs to this rank and accumulates here. dK and dV
belong to the block's owner: an accumulator travels with each block, every
rank adds its share and passes it on, and one last hop after the P-th step
brings it home, summed over every rank's queries.

Silent bugs:
- Overwriting the output with each block instead of merging: the last block wins.
- Labelling a received block with the wrong owner (ring direction and owner
  formula disagree): the mask uses the wrong positions.
- Keeping every received block: correct numbers, memory O(S) again.
"""

import math

import torch
import torch.distributed as dist

from ex1_sequence_shard import shard_positions
from ex2_blockwise_attention import attention_with_lse, merge_attention


def ring_exchange(send_buf, recv_buf, group=None):
    """Post send(send_buf -> next rank) and recv(recv_buf <- previous rank) together; return the works.

    The caller waits on every returned work before it reads recv_buf or writes send_buf.
    """
    # Step 1: the ring neighbours (rank +- 1) % P, as global ranks.
    # Step 2: one dist.batch_isend_irecv holding both ops.
    # YOUR CODE HERE
    raise NotImplementedError()


def visible_block(q_pos, k_pos):
    """(q_start, k_stop): every causally visible (query, key) pair lies in rows [q_start:] and keys [:k_stop].

    q_pos, k_pos: ascending global positions (CPU, so no device sync). k_stop == 0 means the block is hidden.
    """
    # Step 1: queries before the first key see nothing; keys after the last query are seen by none.
    # YOUR CODE HERE
    raise NotImplementedError()


def ring_forward(q, k, v, scheme="contiguous", group=None):
    """Causal ring attention: (out, lse) for this rank's queries over every rank's keys.

    q, k, v: (B, H, S/P, D), this rank's shards under `scheme`. Every rank of
    `group` calls it. Returns out (B, H, S/P, D) in q's dtype and lse (B, H, S/P)
    in the compute dtype (float64 for float64 q, else float32).
    """
    # Step 1: validate (q, k, v of one shape, else ValueError; shard_positions checks the scheme and
    #         that S = P * S/P splits under it); this rank's query positions; out = 0 and lse = -inf
    #         in the compute dtype.
    # Step 2: two K/V buffers: current = stack(k, v), next = empty.
    # Step 3: for each of P steps: post the exchange (all but the last step), attend the
    #         visible rectangle of the current block, merge it into those rows, wait, swap.
    # YOUR CODE HERE
    raise NotImplementedError()


def attention_block_backward(dout, q, k, v, lse, delta, q_pos, k_pos, scale):
    """One block's share of the causal attention gradients, recomputed from q, k, v and the final lse.

    All in the compute dtype: dout, q (B, H, Sq, D); k, v (B, H, Sk, D);
    lse, delta (B, H, Sq) with delta = rowsum(dout * out). Positions on q's device.
    Returns dq (B, H, Sq, D), dk and dv (B, H, Sk, D).
    """
    # Step 1: probs = exp(q k^T * scale - lse), 0 where k_pos > q_pos: the final softmax on this block.
    # Step 2: dv = probs^T dout; dprobs = dout v^T.
    # Step 3: dscores = probs * (dprobs - delta); dq = dscores k * scale; dk = dscores^T q * scale.
    # YOUR CODE HERE
    raise NotImplementedError()


def ring_backward(dout, q, k, v, out, lse, scheme="contiguous", group=None):
    """Bonus: the gradients of ring_forward, over the same ring, point to point.

    dout, q, k, v, out: (B, H, S/P, D); lse (B, H, S/P) from ring_forward.
    Returns dq, dk, dv (B, H, S/P, D) in the dtypes of q, k, v: this rank's
    shards of the single-device gradients.
    """
    # Step 1: delta = rowsum(dout * out); dq = 0; K/V buffers as in ring_forward.
    # Step 2: for each of P steps: post the K/V exchange (all but the last step); this rank's
    #         share for the visible rectangle: dq accumulates, dK/dV go into a fresh accumulator.
    # Step 3: add the accumulator that arrived for the same block (the ranks before this one),
    #         post it to the next rank; wait for the K/V exchange, swap.
    # Step 4: wait for the last hop: the accumulator arriving now is this rank's own dK, dV.
    # YOUR CODE HERE
    raise NotImplementedError()


class RingAttention(torch.autograd.Function):
    """Bonus: ring_forward with a backward that runs over the ring too (ring_backward)."""

    @staticmethod
    def forward(ctx, q, k, v, scheme, group):
        # Step 1: ring_forward; save q, k, v, out and lse for the backward's recomputation.
        # YOUR CODE HERE
        raise NotImplementedError()

    @staticmethod
    def backward(ctx, dout):
        # Step 1: ring_backward on the saved tensors; scheme and group get no gradient.
        # YOUR CODE HERE
        raise NotImplementedError()


def ring_attention(q, k, v, scheme="contiguous", group=None):
    """Causal ring attention for this rank's shards.

    q, k, v: (B, H, S/P, D), this rank's shards under `scheme`. Every rank of
    `group` calls it. Returns this rank's output shard (B, H, S/P, D) in q's
    dtype. Without the bonus the output need not require grad and need not
    be detached: the bonus cases count as not attempted when the output does
    not come from a torch.autograd.Function. With it, gradients flow through
    RingAttention.
    """
    # Step 1: return the output of ring_forward.
    #         Bonus: return RingAttention.apply(q, k, v, scheme, group) once ring_backward works.
    # YOUR CODE HERE
    raise NotImplementedError()
