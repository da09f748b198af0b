"""Exercise 2: blockwise attention with log-sum-exp, the building blocks of ring attention.

One device, no communication yet. Every context-parallel attention in this lab
cuts the keys a query row sees into disjoint blocks, attends each block on its
own and combines the partial results exactly. Two functions make that work:

- attention_with_lse(q, k, v, q_pos, k_pos) attends queries to one key block
  and also returns lse, the log-sum-exp of each query row's scaled, masked
  scores: the row's softmax denominator, which is all a later merge needs.
- merge_attention(out_a, lse_a, out_b, lse_b) turns the partial results of two
  disjoint key blocks into the attention over their union. Ring attention
  (exercise 5) calls it once per block that reaches a rank, so a rank never
  holds more than one block of scores: memory O(S/P * S/P) instead of O(S/P * S).

Positions, not indices, decide the causal mask. Once the sequence is sharded, a
local index says nothing about where a token sits: the query at global position
q_pos[i] sees the key at k_pos[j] iff k_pos[j] <= q_pos[i]. A query row that
sees no key of a block (every key of the block comes later in the sequence)
contributes nothing: out = 0 and lse = -inf, which merge_attention treats as an
empty set. Never NaN: softmax over a row of -inf is 0/0.

Precision: scores are computed in float32 (float64 for float64 inputs) whatever
the input dtype, since exp of a bf16 score loses too much. lse stays in that
dtype; out goes back to q's dtype. Scores of 1e4 are legal: every exp here
subtracts the row maximum first.

Shapes: q (B, H, Sq, D); k, v (B, H, Sk, D); q_pos (Sq,), k_pos (Sk,) int64.

Silent bugs:
- Masking by local index (k_idx <= q_idx): right for rank 0 of a contiguous
  split only.
- exp(lse_a) + exp(lse_b) without subtracting the max: inf for large scores.
- torch.softmax over a fully masked row: NaN, which spreads through every merge.
"""

import math

import torch


def attention_with_lse(q, k, v, q_pos, k_pos, causal=True, scale=None):
    """Attention of q over one key block, and the log-sum-exp of each query row.

    q (B, H, Sq, D); k, v (B, H, Sk, D); q_pos (Sq,) and k_pos (Sk,) the global
    positions of the queries and keys (any device; ignored when causal=False).
    scale defaults to 1/sqrt(D).
    Returns out (B, H, Sq, D) in q's dtype and lse (B, H, Sq) float32 (float64
    for float64 q). A row that sees no key: out 0, lse -inf.
    Plain matmuls, so autograd and torch.utils.flop_counter see the work.
    """
    # Step 1: default scale 1/sqrt(D); compute dtype float64 for float64 q, else float32.
    # Step 2: scores = q @ k^T * scale in the compute dtype, shape (B, H, Sq, Sk).
    # Step 3: causal: -inf where k_pos > q_pos (positions, not local indices).
    # Step 4: lse = row max + log(sum exp(scores - row max)); a row of -inf gives lse -inf.
    # Step 5: out = softmax @ v without 0/0 on empty rows; cast back to q's dtype.
    # YOUR CODE HERE
    raise NotImplementedError()


def merge_attention(out_a, lse_a, out_b, lse_b):
    """Attention over the union of two disjoint key sets, from the two partial results.

    With Z = sum_j exp(s_j) over a key set: out = sum_j exp(s_j) v_j / Z and lse = log Z.
    Over the union Z = Z_a + Z_b, so lse = log(e^lse_a + e^lse_b) and
    out = (Z_a out_a + Z_b out_b) / Z = e^(lse_a - lse) out_a + e^(lse_b - lse) out_b.

    out_* (B, H, S, D), lse_* (B, H, S). Returns (out, lse) with out in out_a's
    dtype and lse in lse_a's dtype. Every exp subtracts m = max(lse_a, lse_b), so
    nothing overflows; a side with lse -inf has weight 0, and -inf on both sides
    gives out 0, lse -inf.
    """
    # Step 1: m = max(lse_a, lse_b), replaced by 0 where both sides are -inf.
    # Step 2: weights e^(lse_a - m), e^(lse_b - m) and their sum.
    # Step 3: lse = m + log(sum); out = weighted outs / sum (no 0/0), in out_a's dtype.
    # YOUR CODE HERE
    raise NotImplementedError()
