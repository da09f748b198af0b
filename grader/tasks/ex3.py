"""Tasks of exercise 3 (all-gather KV attention): the shared distributed attention task, in each mode."""

from grader.tasks.attention import register_attention

FUNCTION = "all_gather_kv_attention"
MODES = ("forward", "backward", "comm", "causality")

register_attention("ex3", FUNCTION, MODES)
