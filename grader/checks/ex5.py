"""Checks of exercise 5 (ring attention): outputs, the ring's traffic, skipped work, bounded memory,
causality, and the bonus backward over the ring."""

from grader.checks.attention import register_attention

register_attention("ex5", "ring_attention", ("forward", "backward", "comm", "compute", "memory", "causality"))
