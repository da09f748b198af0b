"""Held-out implementations, written independently against the contract (tests/variants/).

`exN_correct_*` must get full marks on every case of its exercise (no false
failures). `exN_bug_*` must lose the case named in EXPECT, with a message
that points at the bug.
"""

from __future__ import annotations

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
    sub = make_submission(tmp_path, {ex.file: path.read_text()})
    with Grader(sub, lab, runner=runner) as grader:
        result = grader.run(case)
    assert not result.verdict.passed, f"{path.stem} passed {case.title}"
    said = f"{result.verdict.message}\n{result.verdict.hint}"
    assert text in said, said
