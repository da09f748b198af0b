"""Held-out implementations of the exercises, each the few edits it makes to its solution (tests/variants/).

`exN_correct_*` must get full marks on every case of its exercise (no false
failures). `exN_bug_*` must lose the case its variant names, with the failure
kind named there and a message or hint that points at the bug. A variant's
source is made at test time by applying its edits to solutions/; an edit that
no longer applies fails that variant's test, naming it and the text.
"""

from __future__ import annotations

import dataclasses

import pytest

from conftest import KIT, make_submission
from grader.grading import Grader
from grader.runner import Runner
from variants import VARIANTS, Span, StaleEdit, Variant, apply


@pytest.fixture(scope="module")
def runner():
    with Runner() as r:
        yield r


def _exercise(variant: Variant, lab):
    return next(ex for ex in lab.exercises if ex.id == variant.exercise)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_variant_edits_apply_to_the_solution(variant, lab):
    ex = _exercise(variant, lab)
    assert variant.solution == ex.file, f"{variant.name} edits {variant.solution}, but {ex.id} is {ex.file}"
    assert ("_bug_" in variant.name) == (variant.fails is not None), \
        f"{variant.name}: a bug variant names the case it must fail, a correct one none"
    compile(apply(variant), f"{variant.name}.py", "exec")


def test_every_bug_variant_fails_a_public_case(lab):
    """The self-check predicts the grade: each bug class a variant stands for shows in a public case."""
    hidden = [v.name for v in VARIANTS if v.fails and next(
        c for c in lab.cases if c.exercise == v.exercise and c.name == v.fails.case).hidden]
    assert not hidden, f"bug variants graded only by hidden cases: {hidden}"


def test_variant_names_are_unique():
    names = [v.name for v in VARIANTS]
    assert len(names) == len(set(names))


def test_an_edit_that_no_longer_applies_fails_naming_the_variant_and_the_text():
    solution = (KIT / "solutions" / "ex3_allgather_attention.py").read_text()
    variant = next(v for v in VARIANTS if v.name == "ex3_bug_backward_returns_none")
    (old, _), = variant.edits
    # The solution changed under the variant: the text it replaces is gone
    with pytest.raises(StaleEdit) as gone:
        apply(variant, solution.replace(old, "        return grad_x.clone(), None\n"))
    said = str(gone.value)
    assert "variant ex3_bug_backward_returns_none" in said and "occurs 0 times" in said
    assert "return grad_x, None" in said and "ex3_allgather_attention.py" in said
    # ... or now stands twice: which one the bug belongs to is ambiguous
    with pytest.raises(StaleEdit, match="occurs 2 times"):
        apply(variant, solution + "\n" + old)
    # A span needs its first line once and its end after it
    spanned = Variant("ex3_bug_example", variant.solution, "an example",
                      [(Span("        return grad_x, None\n", "no such end"), "")])
    with pytest.raises(StaleEdit, match="has no end after its first line") as no_end:
        apply(spanned)
    assert "ex3_bug_example" in str(no_end.value) and "no such end" in str(no_end.value)
    # Edits that change nothing are a variant that tests nothing
    with pytest.raises(StaleEdit, match="unchanged"):
        apply(Variant("ex3_bug_noop", variant.solution, "nothing", [(old, old)]))


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.fails is None], ids=lambda v: v.name)
def test_correct_variant_gets_full_marks(variant, tmp_path, lab, runner):
    ex = _exercise(variant, lab)
    sub = make_submission(tmp_path, {ex.file: apply(variant)})
    with Grader(sub, lab, runner=runner) as grader:
        results = list(map(grader.run, lab.select([ex.id])))
    left_alone = [r for r in results if r.case.bonus and not variant.bonus]
    failed = [r for r in results if not r.verdict.passed and r not in left_alone]
    assert not failed, "\n".join(f"{r.case.title}: {r.verdict.message}" for r in failed)
    # A bonus left alone loses nothing and reads "not attempted", not FAIL with a hint
    assert all(r.bonus_not_attempted for r in left_alone), [(r.case.title, r.verdict.message) for r in left_alone]


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.fails is not None], ids=lambda v: v.name)
def test_buggy_variant_loses_the_right_case(variant, tmp_path, lab, runner):
    expect = variant.fails
    ex = _exercise(variant, lab)
    case = next(c for c in lab.cases if c.exercise == ex.id and c.name == expect.case)
    case = dataclasses.replace(case, timeout=min(case.timeout, 10.0))  # a deadlock shows in seconds
    sub = make_submission(tmp_path, {ex.file: apply(variant)})
    with Grader(sub, lab, runner=runner) as grader:
        result = grader.run(case)
    assert not result.verdict.passed, f"{variant.name} ({variant.bug}) passed {case.title}"
    said = f"{result.verdict.message}\n{result.verdict.hint}"
    assert result.verdict.kind is expect.kind, f"{variant.name}: {result.verdict.kind.value}, not {expect.kind.value}\n{said}"
    assert expect.text in said, said


def test_a_forward_only_ring_leaves_ex7_ring_bonus_not_attempted(tmp_path, lab, runner):
    """ex7's ring cases train through ex5's ring: without its bonus they are not attempted, not FAIL."""
    variant = next(v for v in VARIANTS if v.name == "ex5_correct_forward_only")
    sub = make_submission(tmp_path, {variant.solution: apply(variant)})
    case = next(c for c in lab.cases if c.exercise == "ex7" and c.name == "ring_p2")
    with Grader(sub, lab, runner=runner) as grader:
        result = grader.run(case)
    assert result.bonus_not_attempted, (result.verdict.kind, result.verdict.message)
    assert "torch.autograd.Function" in result.verdict.message
