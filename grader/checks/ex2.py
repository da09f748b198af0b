"""Checks of exercise 2 (blockwise attention on one device): attention_with_lse and merge_attention."""

from __future__ import annotations

from typing import Any, Callable

import torch

from grader import reference
from grader.checks import Check, Reads, generator, randn, register
from grader.compare import check_tensor, tolerance
from grader.tasks import DTYPES
from grader.verdict import PASS, Kind, Verdict

MASK_HINT = ("Mask by global positions: key j is visible to query i iff k_pos[j] <= q_pos[i]. A mask built "
             "from local indices (tril, arange) is right only when both blocks start at position 0.")
OVERFLOW_HINT = ("These inputs have scores around 1e3: exp(score) overflows unless the row maximum is "
                 "subtracted first (and in the merge, the larger lse).")
EMPTY_HINT = ("A query row that sees no key must give out = 0 and lse = -inf: softmax over a row of -inf "
              "is 0/0 = NaN, so handle empty rows before dividing.")
# What each recomputation below stands for, when the student's out matches it and not the reference
ATTENTION_BUGS = {
    "strict": ("The output is attention with a strict mask (k_pos < q_pos): a query must see its own key. "
               "Visible means k_pos[j] <= q_pos[i]; the diagonal block of every later exercise depends on it."),
    "local": MASK_HINT,
    "unmasked": "The output is attention without the causal mask: mask by global positions when causal=True.",
    "unscaled": "The output matches scores without the scale: multiply q @ k^T by scale (default 1/sqrt(D)).",
    "scale_d": "The output matches scores scaled by 1/D: the default scale is 1/sqrt(D).",
}
MERGE_BUGS = {
    "unnormalised": ("The output is e^(lse_a - m)·out_a + e^(lse_b - m)·out_b without dividing by their sum: "
                     "each partial out is already normalised by its own block, so rescale by e^(lse_x - lse)."),
    "average": ("The output is the plain average of out_a and out_b: weight each side by its share of the "
                "softmax denominator, e^(lse_x - lse) with lse = log(e^lse_a + e^lse_b)."),
    "sum": ("The output is out_a + out_b: each partial out is normalised by its own block; weight them by "
            "e^(lse_x - lse) with lse = log(e^lse_a + e^lse_b)."),
}
PRECISION_HINT = ("Only a few outputs are off and all are finite: the rows where the largest scores nearly "
                  "tie, which rounding decides at scores around 1e3. That is a precision loss, not an overflow: "
                  "compute q @ k^T, the exponentials and their sum in float32 or wider (no bfloat16 or float16 "
                  "step), subtract the row maximum and divide by the row sum once. The float32 tolerance is "
                  "twice the worst error of torch's own kernel, the naive softmax and exp(scores - lse) here.")


SHAPE = ("B", "H", "Sq", "Sk", "D")  # what _sizes reads, every one with a default


def _sizes(case: Any) -> tuple[int, int, int, int, int]:
    s = case.shape
    return s.get("B", 2), s.get("H", 3), s.get("Sq", 5), s.get("Sk", 7), s.get("D", 4)


def _positions(case: Any, sq: int, sk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Global positions of a query block and a key block, as a sharded sequence gives them.

    "interleaved": both drawn from one shuffled range, so some keys come before and some after each
    query; "queries_first": part of the queries come before every key, so their rows see nothing;
    "self": the queries' own block (k_pos == q_pos, a sorted subset as striped gives it): every row
    sees its own key, the diagonal; "straddle": keys 0..Sk-1 and queries from Sk/2 on, so half the
    keys come before every query and the rest sit on or after it (a zigzag block); "scattered": two
    independent sorted subsets of one range, some positions shared, none consecutive by design.
    """
    g = generator(case, salt=1)
    layout = case.params.get("positions", "interleaved")
    if layout == "queries_first":
        q_pos = torch.sort(torch.randperm(2 * sq, generator=g)[:sq]).values
        k_pos = torch.sort(sq + torch.randperm(2 * sk, generator=g)[:sk]).values
    elif layout == "self":
        if sq != sk:
            raise ValueError(f"{case.title}: positions 'self' needs Sq == Sk, got {sq} and {sk}")
        q_pos = torch.sort(torch.randperm(2 * sq, generator=g)[:sq]).values
        k_pos = q_pos.clone()
    elif layout == "straddle":
        k_pos = torch.arange(sk)
        q_pos = torch.arange(sk // 2, sk // 2 + sq)
    elif layout == "scattered":
        q_pos = torch.sort(torch.randperm(sq + sk, generator=g)[:sq]).values
        k_pos = torch.sort(torch.randperm(sq + sk, generator=g)[:sk]).values
    else:
        perm = torch.randperm(sq + sk + 4, generator=g)
        q_pos, k_pos = torch.sort(perm[:sq]).values, torch.sort(perm[sq:sq + sk]).values
    return q_pos, k_pos


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _judge_pair(case: Any, what: str, got: dict, want_out: torch.Tensor, want_lse: torch.Tensor,
                dtype: torch.dtype, q_pos: torch.Tensor | None,
                alternatives: Callable[[], dict[str, torch.Tensor]], bugs: dict[str, str]) -> Verdict | None:
    """`alternatives()`: what each bug of `bugs` would have returned as out, computed only for a mismatch;
    the one out matches is the hint."""
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
    matched = _matching(got.get("out"), alternatives(), tol) if verdict.kind is Kind.MISMATCH else None
    if verdict.kind is Kind.NAN_INF and _nan_on_empty_rows(got, want_lse):
        verdict.hint = EMPTY_HINT
    elif matched:
        verdict.hint = bugs[matched]
    elif verdict.kind is Kind.MISMATCH and magnitude >= 10 and _few_off(got.get("out"), want_out.to(dtype), tol):
        verdict.hint = PRECISION_HINT
    elif verdict.kind in (Kind.NAN_INF, Kind.MISMATCH) and magnitude >= 10:
        verdict.hint = OVERFLOW_HINT
    return verdict


def _matching(out: Any, alternatives: dict[str, torch.Tensor], tol: Any) -> str | None:
    """The first alternative that `out` equals within the tolerance (NaN rows count as zero on both sides)."""
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        return None
    g = torch.nan_to_num(out.double(), nan=0.0)
    for name, alt in alternatives.items():
        a = torch.nan_to_num(alt.double(), nan=0.0)
        if a.shape == g.shape and bool(((g - a).abs() <= tol.allowed(a)).all()):
            return name
    return None


def _few_off(out: Any, want: torch.Tensor, tol: Any) -> bool:
    """Whether out is finite and under a quarter of it is off: rounding decided a few rows, not a formula."""
    if not isinstance(out, torch.Tensor) or out.shape != want.shape or not bool(torch.isfinite(out).all()):
        return False
    off = (out.double() - want.double()).abs() > tol.allowed(want.double())
    return bool(off.double().mean() < 0.25)


def _attention_alternatives(case: Any, x: dict) -> dict[str, torch.Tensor]:
    """out as each bug of ATTENTION_BUGS computes it, on this case's inputs (those that differ here)."""
    q, k, v, q_pos, k_pos = x["q"].double(), x["k"].double(), x["v"].double(), x["q_pos"], x["k_pos"]
    causal, scale = case.params.get("causal", True), case.params.get("scale")
    d = q.shape[-1]
    run = lambda qq=q, kk=k, qp=q_pos, kp=k_pos, c=causal, s=scale: reference.causal_attention(
        qq, kk, v, qp, kp, causal=c, scale=s)[0]
    found = {"unscaled": run(s=1.0), "scale_d": run(s=1.0 / d)} if scale is None else {}
    if causal:
        found.update(strict=run(qp=q_pos - 1), local=run(qp=torch.arange(len(q_pos)), kp=torch.arange(len(k_pos))),
                     unmasked=run(c=False))
    right = run()
    return {name: alt for name, alt in found.items() if not torch.allclose(torch.nan_to_num(alt), torch.nan_to_num(right))}


def _merge_alternatives(x: dict) -> dict[str, torch.Tensor]:
    out_a, out_b = x["out_a"].double(), x["out_b"].double()
    lse_a, lse_b = x["lse_a"].double(), x["lse_b"].double()
    m = torch.maximum(lse_a, lse_b)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    w_a, w_b = torch.exp(lse_a - m)[..., None], torch.exp(lse_b - m)[..., None]
    return {"unnormalised": w_a * out_a + w_b * out_b, "average": (out_a + out_b) / 2, "sum": out_a + out_b}


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
        return _judge_pair(case, "attention_with_lse", got, out, lse, x["q"].dtype, x["q_pos"],
                           lambda: _attention_alternatives(case, x), ATTENTION_BUGS) or PASS


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
                           x["q_pos"], lambda: _merge_alternatives(x), MERGE_BUGS) or PASS
