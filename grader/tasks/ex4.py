"""Tasks of exercise 4 (Ulysses): the two all-to-all layouts, the heads check, and the attention."""

from __future__ import annotations

from grader.tasks import task, try_call
from grader.tasks.attention import register_attention

FUNCTION = "ulysses_attention"
MODES = ("forward", "backward", "comm", "causality")

register_attention("ex4", FUNCTION, MODES)


@task("ex4", "seq_to_head")
def seq_to_head(ctx):
    """Both directions, each from its own input: a wrong seq_to_head does not spoil head_to_seq."""
    return {"to_head": ctx.call("seq_to_head", ctx.tensor("seq"), group=ctx.group),
            "to_seq": ctx.call("head_to_seq", ctx.tensor("head"), group=ctx.group)}


@task("ex4", "heads_error")
def heads_error(ctx):
    x = ctx.tensor("x")
    return {"seq_to_head": try_call(ctx, "seq_to_head", x, group=ctx.group),
            "ulysses_attention": try_call(ctx, "ulysses_attention", x, x, x, group=ctx.group)}
