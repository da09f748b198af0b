"""Tasks of exercise 2 (blockwise attention on one device): attention_with_lse and merge_attention."""

from __future__ import annotations

from typing import Any

from grader.tasks import task


def _pair(result: Any) -> dict:
    """(out, lse) as the judge reads it; anything else lands in out, for the judge to name."""
    if isinstance(result, (list, tuple)) and len(result) == 2:
        return {"out": result[0], "lse": result[1]}
    return {"out": result, "lse": None}


@task("ex2", "attention")
def attention(ctx):
    params = ctx.spec.params
    return _pair(ctx.call("attention_with_lse", ctx.tensor("q"), ctx.tensor("k"), ctx.tensor("v"),
                          ctx.tensor("q_pos"), ctx.tensor("k_pos"), causal=params.get("causal", True),
                          scale=params.get("scale")))


@task("ex2", "merge")
def merge(ctx):
    return _pair(ctx.call("merge_attention", *(ctx.tensor(k) for k in ("out_a", "lse_a", "out_b", "lse_b"))))
