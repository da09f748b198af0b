"""The kit grades itself: solutions/ get full marks on every case, the stubs in exercises/ get zero."""

from __future__ import annotations

import pytest

from conftest import KIT
from grader import results_json
from grader.grading import Grader
from grader.runner import Runner
from grader.verdict import Kind


@pytest.fixture(scope="module")
def runner():
    with Runner() as r:
        yield r


def test_solutions_get_full_marks_on_public_and_hidden_cases(lab, runner):
    with Grader(KIT / "solutions", lab, runner=runner) as grader:
        results = [grader.run(c) for c in lab.cases]
    data = results_json.build(results, 0.0)
    failed = [(t["name"], t["output"]) for t in data["tests"] if t["status"] != "passed"]
    assert not failed, failed
    regular = sum(c.points for c in lab.cases if not c.bonus)
    bonus = sum(c.points for c in lab.cases if c.bonus)
    assert bonus > 0, "the manifest has bonus cases (ring backward)"
    assert sum(t["max_score"] for t in data["tests"]) == regular
    assert data["score"] == regular + bonus
    assert {t["name"].split(" ")[0] for t in data["tests"]} == {ex.id for ex in lab.exercises}


def test_stubs_score_zero_and_say_not_implemented(lab, runner):
    with Grader(KIT / "exercises", lab, runner=runner) as grader:
        results = [grader.run(c) for c in lab.cases]
    assert sum(r.score for r in results) == 0
    wrong = [(r.case.title, r.verdict.kind, r.verdict.message) for r in results
             if r.verdict.kind is not Kind.NOT_IMPLEMENTED or "not implemented yet" not in r.verdict.message]
    assert not wrong, wrong[:5]

