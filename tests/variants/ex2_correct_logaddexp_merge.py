"""Correct: lse by torch.logsumexp and softmax by torch.softmax with empty rows zeroed; merge by torch.logaddexp and sigmoid weights.

lse and softmax come from torch's own reductions; an empty row is replaced by a
finite row before softmax and zeroed after, so neither forward nor backward
sees 0/0.
"""

import math

import torch


def attention_with_lse(q, k, v, q_pos, k_pos, causal=True, scale=None):
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = torch.matmul(q.to(cdt), k.to(cdt).transpose(-1, -2)) * scale  # (B, H, Sq, Sk)
    if causal:
        visible = k_pos.to(q.device).view(1, -1) <= q_pos.to(q.device).view(-1, 1)
        scores = torch.where(visible, scores, torch.full_like(scores, float("-inf")))
    lse = torch.logsumexp(scores, dim=-1)  # (B, H, Sq), -inf for an empty row
    empty = torch.isneginf(lse)[..., None]
    # An empty row becomes a row of zeros (uniform softmax, finite), then its weights are zeroed.
    probs = torch.softmax(torch.where(empty, torch.zeros_like(scores), scores), dim=-1)
    probs = torch.where(empty, torch.zeros_like(probs), probs)
    out = torch.matmul(probs, v.to(cdt))
    return out.to(q.dtype), lse


def merge_attention(out_a, lse_a, out_b, lse_b):
    lse_b = lse_b.to(lse_a.dtype)
    lse = torch.logaddexp(lse_a, lse_b)
    both_empty = torch.isneginf(lse)
    # e^lse_a / (e^lse_a + e^lse_b) = sigmoid(lse_a - lse_b); -inf - (-inf) only where both are empty.
    diff = torch.where(both_empty, torch.zeros_like(lse), lse_a - lse_b)
    zero = torch.zeros_like(lse)
    w_a = torch.where(both_empty, zero, torch.sigmoid(diff))[..., None]
    w_b = torch.where(both_empty, zero, torch.sigmoid(-diff))[..., None]
    out = w_a * out_a.to(lse.dtype) + w_b * out_b.to(lse.dtype)
    return out.to(out_a.dtype), lse
