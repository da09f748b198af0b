"""The self-check report: every failing case's message in full, bonus cases marked as bonus."""

from __future__ import annotations

from grader import report
from grader.grading import CaseResult
from grader.manifest import load
from grader.verdict import PASS, Kind, fail


def _case(lab, exercise, name):
    return next(c for c in lab.cases if c.exercise == exercise and c.name == name)


def test_every_failing_case_is_shown_in_full_and_bonus_lines_say_bonus():
    lab = load()
    ex5 = [c for c in lab.select(["ex5"], hidden=False)]
    long = "rank 1: ring_attention output differs " + "x" * 150 + " END"
    results = []
    for c in ex5:
        if c.name in ("forward_contiguous", "forward_zigzag"):
            results.append(CaseResult(c, fail(Kind.MISMATCH, f"{c.name}: {long}", hint="check the merge")))
        elif c.bonus:
            results.append(CaseResult(c, fail(Kind.MISMATCH, "q.grad differs", hint="the backward ring")))
        else:
            results.append(CaseResult(c, PASS))
    text = report.summary(results, lab)
    for name in ("forward_contiguous", "forward_zigzag"):
        assert f"{name}: rank 1" in text and text.count(" END") == 2, text
    assert "[...]" not in text and text.count("hint: check the merge") == 2
    bonus = _case(lab, "ex5", "backward_zigzag")
    assert f"FAIL {bonus.title} (bonus: no points lost)" in text, text
    regular = sum(1 for c in ex5 if not c.bonus)
    assert f"{regular - 2}/{regular} + bonus 0/1" in text, text
