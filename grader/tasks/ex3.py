"""Tasks of exercise 3 (all-gather KV attention): the shared distributed attention task, in each mode,
and the argument errors."""

from grader.tasks import task, try_call
from grader.tasks.attention import register_attention

FUNCTION = "all_gather_kv_attention"
MODES = ("forward", "backward", "comm", "causality")

# call -> (keyword arguments, local tokens, the argument its ValueError must name); the judge reads them too
BAD_CALLS = {
    "all_gather_kv_attention(q, k, v, scheme='diagonal')": ({"scheme": "diagonal"}, 4, "scheme"),
    "all_gather_kv_attention(q, k, v of 3 local tokens, scheme='zigzag')": ({"scheme": "zigzag"}, 3, "seq_len"),
}

register_attention("ex3", FUNCTION, MODES)


@task("ex3", "errors")
def errors(ctx):
    q, k, v = (ctx.tensor(n) for n in ("q", "k", "v"))
    return {call: try_call(ctx, FUNCTION, *(t[:, :, :n].contiguous() for t in (q, k, v)), group=ctx.group, **kwargs)
            for call, (kwargs, n, _) in BAD_CALLS.items()}
