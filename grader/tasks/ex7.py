"""Tasks of exercise 7 (one context-parallel training step): cp_train_step on the kit's model.

Every rank builds the kit's TinyCausalLM (grader.model, trusted code) from the
model seed it is sent, so the ranks and the grader's float64 reference start
from the same weights, and hands it and the rank's token shard to the
student's cp_train_step.
"""

from __future__ import annotations

from typing import Any

import torch

from grader.adapter import StudentError
from grader.model import ModelConfig, build_model
from grader.tasks import DTYPES, task, try_call
from grader.tasks.attention import from_function

RING_MODULE = "ex5_ring_attention"
BAD = "cp_train_step(model, tokens, attention='flash')"


def model_config(case: Any, seed: int) -> ModelConfig:
    """The kit's model; `params: {model: {...}}` overrides ModelConfig fields (n_head for Ulysses at P = 3)."""
    return ModelConfig(seed=seed, **case.params.get("model", {}))


def attention_kind(case: Any) -> str:
    return case.params.get("attention", "all_gather")


def _model(ctx: Any) -> torch.nn.Module:
    return build_model(model_config(ctx.spec, ctx.inputs["model_seed"]), dtype=DTYPES[ctx.spec.dtype],
                       device=ctx.device)  # .grad all None


@task("ex7", "step")
def step(ctx):
    spec = ctx.spec
    model = _model(ctx)
    before = [p.detach().clone() for p in model.parameters()]
    attention = attention_kind(spec)
    try:
        loss = ctx.call("cp_train_step", model, ctx.tensor("tokens"), scheme=spec.scheme, attention=attention,
                        group=ctx.group)
    except StudentError as e:
        # Ring without the ex5 bonus backward: a clear error is "not attempted", not a failure
        if attention != "ring" or e.kind not in ("not_implemented", "exception"):
            raise e
        without_bonus = _ring_without_backward(ctx)
        if not without_bonus:
            raise e
        return {"ring_not_attempted": f"{without_bonus}; cp_train_step stopped with {e.message}"}
    if attention == "ring":
        # a forward-only ring whose output requires grad through local ops trains wrongly, not "not attempted"
        without_bonus = _ring_without_backward(ctx)
        if without_bonus:
            return {"ring_not_attempted": without_bonus}
    named = list(model.named_parameters())
    return {"loss": loss, "loss_requires_grad": isinstance(loss, torch.Tensor) and loss.requires_grad,
            "grads": {n: p.grad for n, p in named},
            "changed": [n for (n, p), b in zip(named, before) if not torch.equal(p.detach(), b)]}


def _ring_without_backward(ctx: Any) -> str:
    """Why the student's ring_attention cannot train ("" when its output comes from a torch.autograd.Function:
    the bonus is there).

    Called after cp_train_step returned or failed on every rank alike, so the ranks call it together.
    """
    q, k, v = (torch.randn(1, 1, 2, 2, dtype=torch.float64, device=ctx.device, requires_grad=True)
               for _ in range(3))  # 2 local tokens: valid under every scheme
    try:
        out = ctx.call_in(RING_MODULE, "ring_attention", q, k, v, scheme=ctx.spec.scheme, group=ctx.group)
    except StudentError as e:
        return f"ring_attention raised {e.message}"
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        return "ring_attention's output does not require grad"
    if not from_function(out):
        return "ring_attention's output does not come from a torch.autograd.Function (the bonus backward)"
    return ""


@task("ex7", "errors")
def errors(ctx):
    return {BAD: try_call(ctx, "cp_train_step", _model(ctx), ctx.tensor("tokens"), scheme=ctx.spec.scheme,
                          attention="flash", group=ctx.group)}
