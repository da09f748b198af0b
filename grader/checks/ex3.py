"""Checks of exercise 3 (all-gather KV attention): outputs, gradients, what moves, causality."""

from grader.checks.attention import register_attention
from grader.tasks.ex3 import FUNCTION, MODES

register_attention("ex3", FUNCTION, MODES)
