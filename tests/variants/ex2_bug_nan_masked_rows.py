"""Bug: softmax over a row the mask hides completely: out is NaN (0/0) instead of 0.

lse is still -inf there, but torch.softmax of a row of -inf is NaN, and every
merge that touches the row inherits it.
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
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be (B, H, S, D), got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape != v.shape or k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
        raise ValueError(f"k and v must be (B, H, Sk, D) matching q {tuple(q.shape)}, got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if causal and (q_pos.shape != (q.shape[2],) or k_pos.shape != (k.shape[2],)):
        raise ValueError(f"q_pos must be ({q.shape[2]},) and k_pos ({k.shape[2]},), "
                         f"got q_pos {tuple(q_pos.shape)} and k_pos {tuple(k_pos.shape)}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = (q.to(cdt) @ k.to(cdt).transpose(-2, -1)) * scale  # (B, H, Sq, Sk)
    if causal:
        hidden = k_pos.to(q.device)[None, :] > q_pos.to(q.device)[:, None]  # (Sq, Sk)
        scores = scores.masked_fill(hidden, float("-inf"))
    # The shift cancels in softmax and lse: detach it, and use 0 for empty rows so that
    # -inf - (-inf) never happens.
    row_max = scores.amax(dim=-1, keepdim=True).detach()  # (B, H, Sq, 1)
    row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max)
    weights = torch.exp(scores - row_max)  # (B, H, Sq, Sk), 0 where hidden
    denom = weights.sum(dim=-1, keepdim=True)  # (B, H, Sq, 1), 0 for an empty row
    seen = denom > 0
    denom = torch.where(seen, denom, torch.ones_like(denom))  # no 0/0, and no log 0 in backward
    lse = torch.where(seen, row_max + torch.log(denom), float("-inf")).squeeze(-1)  # (B, H, Sq)
    out = torch.softmax(scores, dim=-1) @ v.to(cdt)  # (B, H, Sq, D)
    return out.to(q.dtype), lse


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
    if out_a.shape != out_b.shape or lse_a.shape != lse_b.shape or out_a.shape[:-1] != lse_a.shape:
        raise ValueError(f"out_a, out_b must be (B, H, S, D) and lse_a, lse_b (B, H, S), got out "
                         f"{tuple(out_a.shape)}, {tuple(out_b.shape)} and lse {tuple(lse_a.shape)}, {tuple(lse_b.shape)}")
    cdt = lse_a.dtype
    lse_b = lse_b.to(cdt)
    m = torch.maximum(lse_a, lse_b)  # (B, H, S)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)  # both sides empty
    w_a = torch.exp(lse_a - m)  # naive e^lse_a overflows once a score passes ~88 (float32)
    w_b = torch.exp(lse_b - m)
    total = w_a + w_b  # in [1, 2] unless both sides are empty
    lse = m + torch.log(total)
    total = torch.where(total > 0, total, torch.ones_like(total))
    out = (w_a / total)[..., None] * out_a.to(cdt) + (w_b / total)[..., None] * out_b.to(cdt)
    return out.to(out_a.dtype), lse
