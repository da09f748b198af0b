"""Checks of exercise 5 (ring attention): outputs, the ring's traffic, skipped work, bounded memory,
causality, and the bonus backward over the ring."""

from grader.checks.attention import register_attention
from grader.tasks.ex5 import FUNCTION, MODES

register_attention("ex5", FUNCTION, MODES)
