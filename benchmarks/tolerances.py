"""The error of standard attention implementations on the kit's attention cases, the measurement behind
grader/compare.py's TOLERANCES.

    python benchmarks/tolerances.py

For every attention case of the manifest in float32 or bfloat16 (ex2's attention cases, the forward cases
of ex3, ex4 and ex5), each implementation below attends the case's own inputs, as the ranks get them, on
one device: as one block (all-gather and Ulysses attend every key at once), and as the ring's blocks
merged by log-sum-exp in the ring's order (ex5). The figure is the smallest t with
|got - reference| <= t + t·|reference| on every element: the tolerance that implementation needs there.
Rows that see no key are left out (torch's kernel gives NaN there; the contract says 0).
  - sdpa: torch.nn.functional.scaled_dot_product_attention on the inputs' dtype (torch's own kernel);
  - naive: torch.softmax of the masked scores, times v;
  - lse: exp(scores - logsumexp(scores)) times v (the lse-normalised form);
  - kit: solutions/ex2's attention_with_lse (row max subtracted, divided by the row sum).
naive and lse compute in float32 (the contract's compute dtype for low-precision inputs) and return q's
dtype.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

KIT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(KIT))

from grader import checks, manifest, reference  # noqa: E402
from grader.checks import attention  # noqa: E402
from grader.tasks import DTYPES  # noqa: E402

DTYPES_MEASURED = ("float32", "bfloat16")


def _kit_attention():
    spec = importlib.util.spec_from_file_location("kit_ex2", KIT / "solutions" / "ex2_blockwise_attention.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


KIT_EX2 = _kit_attention()


def _scores(q, k, q_pos, k_pos, scale):
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = (q.to(cdt) @ k.to(cdt).transpose(-2, -1)) * scale
    return s.masked_fill(k_pos[None, :] > q_pos[:, None], float("-inf"))


def _with_lse(out_of_scores):
    def run(q, k, v, q_pos, k_pos, scale):
        s = _scores(q, k, q_pos, k_pos, scale)
        lse = torch.logsumexp(s, dim=-1)
        out = torch.nan_to_num(out_of_scores(s, lse) @ v.to(s.dtype), nan=0.0)
        return out.to(q.dtype), lse
    return run


def _sdpa(q, k, v, q_pos, k_pos, scale):
    mask = k_pos[None, :] <= q_pos[:, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    lse = torch.logsumexp(_scores(q, k, q_pos, k_pos, scale), dim=-1)  # for the ring's merge
    return torch.nan_to_num(out, nan=0.0), lse


IMPLEMENTATIONS = {
    "sdpa": _sdpa,
    "naive": _with_lse(lambda s, lse: torch.softmax(s, dim=-1)),
    "lse": _with_lse(lambda s, lse: torch.exp(s - lse[..., None])),
    "kit": lambda q, k, v, q_pos, k_pos, scale: KIT_EX2.attention_with_lse(q, k, v, q_pos, k_pos, scale=scale),
}


def needed(got: torch.Tensor, want: torch.Tensor, seen: torch.Tensor) -> float:
    """The smallest t with |got - want| <= t (1 + |want|) on the rows that see a key."""
    err = (got.double() - want.double()).abs() / (1 + want.double().abs())
    return float(err[seen].max()) if seen.any() else 0.0


def _ring(impl, case, q, k, v):
    """Every member's output shard, its blocks attended one by one in the ring's order and merged."""
    p, s, scale = case.group_size, q.shape[2], 1.0 / math.sqrt(q.shape[-1])
    outs = []
    for r in range(p):
        q_pos = reference.positions(s, r, p, case.scheme)
        out = lse = None
        for step in range(p):
            k_pos = reference.positions(s, (r - step) % p, p, case.scheme)
            blk = impl(q[:, :, q_pos], k[:, :, k_pos], v[:, :, k_pos], q_pos, k_pos, scale)
            out, lse = blk if out is None else KIT_EX2.merge_attention(out, lse, *blk)
        outs.append(out)
    return outs


def measure() -> dict[tuple[str, str], dict[str, float]]:
    """(exercise, case) -> implementation -> the tolerance it needs there, for every float32/bf16 attention case."""
    lab = manifest.load()
    found = {}
    for case in lab.cases:
        if case.dtype not in DTYPES_MEASURED:
            continue
        dtype = DTYPES[case.dtype]
        if case.exercise == "ex2" and case.check == "attention":
            x = checks.get("ex2", "attention").inputs(case)[0]
            want, lse = reference.causal_attention(x["q"].double(), x["k"].double(), x["v"].double(),
                                                   x["q_pos"], x["k_pos"], causal=case.params.get("causal", True),
                                                   scale=case.params.get("scale"))
            if not case.params.get("causal", True):
                continue  # every implementation here masks; the unmasked cases are float64
            scale = case.params.get("scale") or 1.0 / math.sqrt(x["q"].shape[-1])
            row = {name: needed(impl(x["q"], x["k"], x["v"], x["q_pos"], x["k_pos"], scale)[0], want,
                                torch.isfinite(lse)[..., None].expand_as(want))
                   for name, impl in IMPLEMENTATIONS.items()}
        elif case.exercise in ("ex3", "ex4", "ex5") and case.check == "forward":
            full = attention.full_inputs(case)
            q, k, v = (full[n].to(dtype) for n in ("q", "k", "v"))
            want = reference.causal_attention(q.double(), k.double(), v.double())[0]
            seen = torch.ones_like(want, dtype=torch.bool)
            row = {}
            for name, impl in IMPLEMENTATIONS.items():
                if case.exercise == "ex5":
                    got = torch.empty_like(want)
                    for r, out in enumerate(_ring(impl, case, q, k, v)):
                        got[:, :, reference.positions(q.shape[2], r, case.group_size, case.scheme)] = out.double()
                else:
                    pos = torch.arange(q.shape[2])
                    got = impl(q, k, v, pos, pos, 1.0 / math.sqrt(q.shape[-1]))[0]
                row[name] = needed(got, want, seen)
        else:
            continue
        found[(case.exercise, case.name, case.dtype)] = row
    return found


def main() -> None:
    from grader.compare import TOLERANCE_MARGIN, TOLERANCES

    rows = measure()
    names = list(IMPLEMENTATIONS)
    print(f"{'case':<38} {'dtype':<9} " + " ".join(f"{n:>9}" for n in names))
    for (ex, name, dtype), row in rows.items():
        print(f"{ex + ' ' + name:<38} {dtype:<9} " + " ".join(f"{row[n]:9.1e}" for n in names))
    for dtype in DTYPES_MEASURED:
        worst = max(max(r.values()) for (_, _, d), r in rows.items() if d == dtype)
        print(f"{dtype}: worst {worst:.2e}, times the margin {TOLERANCE_MARGIN:g} = {worst * TOLERANCE_MARGIN:.2e}; "
              f"tolerance now {TOLERANCES[dtype]}")


if __name__ == "__main__":
    main()
