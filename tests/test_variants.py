"""Held-out implementations, written independently against the contract (tests/variants/).

`exN_correct_*` must get full marks on every case of its exercise (no false
failures). `exN_bug_*` must lose the case named in EXPECT, with a message
that points at the bug.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from conftest import KIT, make_submission
from grader.grading import Grader
from grader.runner import Runner

VARIANTS = sorted((KIT / "tests" / "variants").glob("ex*.py"))

# variant -> (case that must fail, text its message or hint must contain)
EXPECT = {
    "ex1_bug_zigzag_chunk_order": ("positions_zigzag", "the same tokens in another order"),
    "ex1_bug_unshard_rank_order": ("unshard_zigzag", "sequence_unshard(shards) differs"),
    "ex1_bug_shard_is_view": ("shard_contiguous", "not a contiguous copy"),
    "ex1_bug_no_validation": ("errors", "shard_positions(seq_len=10, rank=0, world_size=4) raised RuntimeError"),
    "ex1_bug_gather_ignores_group": ("gather_subgroup", "rank"),
    "ex2_bug_local_index_mask": ("attention", "Mask by global positions"),
    "ex2_bug_merge_no_max": ("merge_large_lse", "subtracted first"),
    "ex2_bug_nan_masked_rows": ("attention_empty_rows", "sees no key must give out = 0"),
    "ex3_bug_local_positions_mask": ("forward_contiguous", "only at tokens that see keys held by other ranks"),
    "ex3_bug_backward_no_reduce_scatter": ("backward_zigzag", "reduce-scatter"),
    "ex3_bug_backward_returns_none": ("backward_zigzag", "k.grad should be a tensor, got None"),
    "ex3_bug_contiguous_positions": ("forward_zigzag", "only at tokens that see keys held by other ranks"),
    "ex4_bug_all_to_all_wrong_dim": ("seq_to_head_zigzag", "move the head axis there first"),
    "ex4_bug_no_heads_check": ("heads_error", "must raise ValueError naming 'heads'"),
    "ex5_bug_blocking_send_recv": ("forward_contiguous", "rank 0 waits in send(dst=1), call #1"),
    "ex5_bug_fake_ring_allgather": ("comm", "calls all_gather on large tensors"),
    "ex5_bug_group_rank_peers": ("comm_subgroup", "is not part of group"),
    "ex5_bug_keeps_all_blocks": ("memory", "must not grow with P"),
    "ex5_bug_no_skip": ("compute_contiguous", "rank 0 computes 4.00 blocks"),
    "ex5_bug_overwrite_no_merge": ("forward_contiguous", "only at tokens that see keys held by other ranks"),
    "ex5_bug_reversed_ring_owner": ("comm", "in the ring it sends to rank"),
    "ex6_bug_local_shift": ("labels_contiguous", "labels differ only at shard boundaries"),
    "ex6_bug_rank_order_shift": ("labels_zigzag", "concatenated in rank order"),
    "ex6_bug_mean_of_means": ("loss_uneven", "mean of per-rank means"),
    "ex6_bug_autograd_allreduce": ("loss_contiguous", "the gradients are P times the reference"),
    "ex6_bug_nan_empty_rank": ("loss_empty_rank", "holds no valid label (all ignore_index)"),
    "ex7_bug_local_positions": ("step_p2", "local rotary positions"),
    "ex7_bug_no_grad_allreduce": ("step_p2", "no all-reduce over the group"),
    "ex7_bug_grad_average": ("step_p2", "averaged over the group, so they are P times too small"),
}


@pytest.fixture(scope="module")
def runner():
    with Runner() as r:
        yield r


def _exercise(path: Path, lab):
    return next(ex for ex in lab.exercises if ex.id == path.stem.split("_")[0])


@pytest.mark.parametrize("path", [p for p in VARIANTS if "_correct_" in p.stem], ids=lambda p: p.stem)
def test_correct_variant_gets_full_marks(path, tmp_path, lab, runner):
    ex = _exercise(path, lab)
    sub = make_submission(tmp_path, {ex.file: path.read_text()})
    with Grader(sub, lab, runner=runner) as grader:
        failed = [r for r in map(grader.run, lab.select([ex.id])) if not r.verdict.passed]
    assert not failed, "\n".join(f"{r.case.title}: {r.verdict.message}" for r in failed)


@pytest.mark.parametrize("path", [p for p in VARIANTS if "_bug_" in p.stem], ids=lambda p: p.stem)
def test_buggy_variant_loses_the_right_case(path, tmp_path, lab, runner):
    assert path.stem in EXPECT, f"say which case {path.stem} must fail, in EXPECT"
    case_name, text = EXPECT[path.stem]
    ex = _exercise(path, lab)
    case = next(c for c in lab.cases if c.exercise == ex.id and c.name == case_name)
    case = dataclasses.replace(case, timeout=min(case.timeout, 10.0))  # a deadlock shows in seconds
    sub = make_submission(tmp_path, {ex.file: path.read_text()})
    with Grader(sub, lab, runner=runner) as grader:
        result = grader.run(case)
    assert not result.verdict.passed, f"{path.stem} passed {case.title}"
    said = f"{result.verdict.message}\n{result.verdict.hint}"
    assert text in said, said


# ---- the variants as edits to solutions/ (tests/variants/__init__.py)

from variants import VARIANTS as EDITED, Span, StaleEdit, Variant, apply  # noqa: E402


@pytest.mark.parametrize("variant", EDITED, ids=lambda v: v.name)
def test_variant_edits_apply_to_the_solution(variant, lab):
    ex = next(ex for ex in lab.exercises if ex.id == variant.exercise)
    assert variant.solution == ex.file, f"{variant.name} edits {variant.solution}, but {ex.id} is {ex.file}"
    assert ("_bug_" in variant.name) == (variant.fails is not None), \
        f"{variant.name}: a bug variant names the case it must fail, a correct one none"
    compile(apply(variant), f"{variant.name}.py", "exec")


def test_variant_names_are_unique():
    names = [v.name for v in EDITED]
    assert len(names) == len(set(names))


def test_an_edit_that_no_longer_applies_fails_naming_the_variant_and_the_text():
    solution = (KIT / "solutions" / "ex3_allgather_attention.py").read_text()
    variant = next(v for v in EDITED if v.name == "ex3_bug_backward_returns_none")
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
