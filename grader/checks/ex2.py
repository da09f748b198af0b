"""Checks of exercise 2 (blockwise attention on one device): attention_with_lse and merge_attention."""

from __future__ import annotations

from typing import Any

import torch

from grader import reference
from grader.checks import Check, Reads, generator, randn, register
from grader.compare import check_tensor, tolerance
from grader.tasks import DTYPES
from grader.verdict import PASS, Kind, Verdict

MASK_HINT = ("Mask by global positions: key j is visible to query i iff k_pos[j] <= q_pos[i]. A mask built "
             "from local indices (tril, arange) is right only when both blocks start at position 0.")
OVERFLOW_HINT = ("These inputs have scores around 1e4: exp(score) overflows unless the row maximum is "
                 "subtracted first (and in the merge, the larger lse).")
EMPTY_HINT = ("A query row that sees no key must give out = 0 and lse = -inf: softmax over a row of -inf "
              "is 0/0 = NaN, so handle empty rows before dividing.")


SHAPE = ("B", "H", "Sq", "Sk", "D")  # what _sizes reads, every one with a default


def _sizes(case: Any) -> tuple[int, int, int, int, int]:
    s = case.shape
    return s.get("B", 2), s.get("H", 3), s.get("Sq", 5), s.get("Sk", 7), s.get("D", 4)


def _positions(case: Any, sq: int, sk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Global positions of a query block and a key block, as a sharded sequence gives them.

    "interleaved": both drawn from one shuffled range, so some keys come before and some after each
    query; "queries_first": part of the queries come before every key, so their rows see nothing.
    """
    g = generator(case, salt=1)
    layout = case.params.get("positions", "interleaved")
    if layout == "queries_first":
        q_pos = torch.sort(torch.randperm(2 * sq, generator=g)[:sq]).values
        k_pos = torch.sort(sq + torch.randperm(2 * sk, generator=g)[:sk]).values
    else:
        perm = torch.randperm(sq + sk + 4, generator=g)
        q_pos, k_pos = torch.sort(perm[:sq]).values, torch.sort(perm[sq:sq + sk]).values
    return q_pos, k_pos


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _judge_pair(case: Any, what: str, got: dict, want_out: torch.Tensor, want_lse: torch.Tensor,
                dtype: torch.dtype, q_pos: torch.Tensor | None) -> Verdict | None:
    tol = tolerance(case.dtype)
    lse_tol = tolerance("float64" if dtype == torch.float64 else "float32")
    if case.dtype in ("bfloat16", "float16"):
        lse_tol = tol  # the scores come from low-precision inputs
    verdict = (check_tensor(f"{what} out", got.get("out"), want_out.to(dtype), tol=tol, token_dim=2,
                            positions=q_pos)
               or check_tensor(f"{what} lse", got.get("lse"), want_lse.to(_lse_dtype(dtype)), tol=lse_tol,
                               token_dim=2, positions=q_pos))
    if verdict is None:
        return None
    magnitude = case.params.get("magnitude", 1.0)
    if verdict.kind is Kind.NAN_INF and _nan_on_empty_rows(got, want_lse):
        verdict.hint = EMPTY_HINT
    elif verdict.kind in (Kind.NAN_INF, Kind.MISMATCH) and magnitude >= 10:
        verdict.hint = OVERFLOW_HINT
    elif verdict.kind is Kind.MISMATCH and q_pos is not None:
        verdict.hint = MASK_HINT
    return verdict


def _nan_on_empty_rows(got: dict, want_lse: torch.Tensor) -> bool:
    """Whether the non-finite values sit on the rows that see no key (not on overflowing ones)."""
    out = got.get("out")
    if not isinstance(out, torch.Tensor) or out.shape[:-1] != want_lse.shape:
        return False
    bad_rows = ~torch.isfinite(out.double()).all(dim=-1)
    return bool((bad_rows & torch.isinf(want_lse)).any())


@register("ex2", "attention")
class Attention(Check):
    """attention_with_lse on one query block and one key block, against the float64 masked softmax."""

    local = True
    sends = ("q", "k", "v", "q_pos", "k_pos")
    reads = Reads(shape=SHAPE, params=("positions", "magnitude", "causal", "scale"))

    def inputs(self, case):
        b, h, sq, sk, d = _sizes(case)
        magnitude = case.params.get("magnitude", 1.0)
        dtype = DTYPES[case.dtype]
        q = (randn(case, b, h, sq, d, salt=2) * magnitude).to(dtype)
        k = (randn(case, b, h, sk, d, salt=3) * magnitude).to(dtype)
        v = randn(case, b, h, sk, d, salt=4).to(dtype)
        q_pos, k_pos = _positions(case, sq, sk)
        return [{"q": q, "k": k, "v": v, "q_pos": q_pos, "k_pos": k_pos}]

    def judge(self, case, inputs, outcomes):
        x = inputs[0]
        out, lse = reference.causal_attention(x["q"], x["k"], x["v"], x["q_pos"], x["k_pos"],
                                              causal=case.params.get("causal", True),
                                              scale=case.params.get("scale"))
        got = outcomes[0].payload
        return _judge_pair(case, "attention_with_lse", got, out, lse, x["q"].dtype, x["q_pos"]) or PASS


@register("ex2", "merge")
class Merge(Check):
    """merge_attention on two partials of disjoint key sets, against attention over their union."""

    local = True
    sends = ("out_a", "lse_a", "out_b", "lse_b")  # out and lse are the answer
    reads = Reads(shape=SHAPE, params=("positions", "magnitude", "a_after_queries"))

    def inputs(self, case):
        b, h, sq, sk, d = _sizes(case)
        magnitude = case.params.get("magnitude", 1.0)
        dtype = DTYPES[case.dtype]
        q = randn(case, b, h, sq, d, salt=2) * magnitude
        k = randn(case, b, h, sk, d, salt=3) * magnitude
        v = randn(case, b, h, sk, d, salt=4)
        q_pos, k_pos = _positions(case, sq, sk)
        in_a = torch.randperm(sk, generator=generator(case, salt=5)) < sk // 2
        if case.params.get("a_after_queries"):
            in_a = k_pos > q_pos.median()  # the later keys: many rows see none of A
        out_a, lse_a = reference.causal_attention(q, k[:, :, in_a], v[:, :, in_a], q_pos, k_pos[in_a])
        out_b, lse_b = reference.causal_attention(q, k[:, :, ~in_a], v[:, :, ~in_a], q_pos, k_pos[~in_a])
        out, lse = reference.causal_attention(q, k, v, q_pos, k_pos)
        lse_dtype = _lse_dtype(dtype)
        return [{"out_a": out_a.to(dtype), "lse_a": lse_a.to(lse_dtype), "out_b": out_b.to(dtype),
                 "lse_b": lse_b.to(lse_dtype), "out": out, "lse": lse, "q_pos": q_pos}]

    def judge(self, case, inputs, outcomes):
        x = inputs[0]
        return _judge_pair(case, "merge_attention", outcomes[0].payload, x["out"], x["lse"], x["out_a"].dtype,
                           x["q_pos"]) or PASS
