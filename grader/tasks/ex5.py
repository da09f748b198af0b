"""Tasks of exercise 5 (ring attention): the shared distributed attention task, in each mode."""

from grader.tasks.attention import register_attention

FUNCTION = "ring_attention"
MODES = ("forward", "backward", "comm", "compute", "memory", "causality")

register_attention("ex5", FUNCTION, MODES, bonus_backward=True)  # the backward is the bonus
