"""Checks of exercise 3 (all-gather KV attention): outputs, gradients, what moves, causality."""

from grader.checks.attention import register_attention

register_attention("ex3", "all_gather_kv_attention", ("forward", "backward", "comm", "causality"))
