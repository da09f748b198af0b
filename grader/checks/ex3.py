"""Checks of exercise 3 (all-gather KV attention): outputs, gradients, what moves, causality, argument errors."""

from grader.checks import Check, judge_value_errors, per_member, randn, register
from grader.checks.attention import register_attention
from grader.tasks.ex3 import BAD_CALLS, FUNCTION, MODES
from grader.verdict import PASS

register_attention("ex3", FUNCTION, MODES)


@register("ex3", "errors")
class Errors(Check):
    """Bad arguments raise ValueError naming them, on every rank alike, before any collective (so none hangs)."""

    sends = ("q", "k", "v")

    def inputs(self, case):
        return per_member(case, lambda i: {n: randn(case, 1, 2, 4, 3, salt=40 + 3 * i + j)
                                           for j, n in enumerate(("q", "k", "v"))})

    def judge(self, case, inputs, outcomes):
        expected = {call: arg for call, (_, _, arg) in BAD_CALLS.items()}
        for r in case.members:
            verdict = judge_value_errors(outcomes[r].payload, expected)
            if verdict:
                verdict.message = f"rank {r}: {verdict.message}"
                verdict.hint = ("Validate before the first collective, on every rank alike: call "
                                "shard_positions(S, rank, P, scheme) first, it raises for an unknown scheme "
                                "or a length the scheme cannot split.")
                return verdict
        return PASS
