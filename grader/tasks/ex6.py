"""Tasks of exercise 6 (the loss across shards): shift_labels, sharded_cross_entropy, argument errors."""

from __future__ import annotations

from typing import Any

import torch

from grader.tasks import task, try_call

# call -> (keyword arguments, local tokens, the argument its ValueError must name); the judge reads them too
BAD_LABELS = {
    "shift_labels(tokens, scheme='diagonal')": ({"scheme": "diagonal"}, 4, "scheme"),
    "shift_labels(tokens of 3 local tokens, scheme='zigzag')": ({"scheme": "zigzag"}, 3, "seq_len"),
}


def _ignore_kwargs(spec: Any) -> dict:
    """ignore_index only where the case sets it: the other cases check the default."""
    return {"ignore_index": spec.params["ignore_index"]} if "ignore_index" in spec.params else {}


@task("ex6", "labels")
def labels(ctx):
    return {"labels": ctx.call("shift_labels", ctx.tensor("tokens"), scheme=ctx.spec.scheme, group=ctx.group,
                               **_ignore_kwargs(ctx.spec))}


@task("ex6", "loss")
def loss(ctx):
    """The loss, then every rank's own .backward() on it, as a training loop would."""
    logits = ctx.tensor("logits").clone().requires_grad_(True)  # (B, S/P, V), a leaf in the case's dtype
    out = ctx.call("sharded_cross_entropy", logits, ctx.tensor("labels"), group=ctx.group,
                   **_ignore_kwargs(ctx.spec))
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        return {"loss": out, "no_grad": True}
    ctx.submission.run("ex6 sharded_cross_entropy backward", out.backward)
    return {"loss": out, "grad": logits.grad}


@task("ex6", "errors")
def errors(ctx):
    tokens = ctx.tensor("tokens")
    return {call: try_call(ctx, "shift_labels", tokens[:, :n].contiguous(), group=ctx.group, **kwargs)
            for call, (kwargs, n, _) in BAD_LABELS.items()}
