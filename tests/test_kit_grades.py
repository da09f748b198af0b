"""The kit grades itself: solutions/ get full marks on every case, the stubs in exercises/ get zero."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import KIT, descendants
from grader.grading import grade
from grader.verdict import Kind


def test_solutions_get_full_marks_on_public_and_hidden_cases(tmp_path, lab):
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "grader", "grade", str(KIT / "solutions"), "--results-json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    failed = [t["name"] for t in data["tests"] if t["status"] != "passed"]
    assert not failed, failed
    assert len(data["tests"]) == len(lab.cases)
    regular = sum(c.points for c in lab.cases if not c.bonus)
    bonus = sum(c.points for c in lab.cases if c.bonus)
    assert bonus > 0, "the manifest has bonus cases (ring backward)"
    assert sum(t["max_score"] for t in data["tests"]) == regular
    assert data["score"] == regular + bonus
    assert {t["name"].split(" ")[0] for t in data["tests"]} == {ex.id for ex in lab.exercises}


def test_stubs_score_zero_and_say_not_implemented(lab):
    results = grade(KIT / "exercises", lab, lab.cases)
    assert sum(r.score for r in results) == 0
    wrong = [(r.case.title, r.verdict.kind, r.verdict.message) for r in results
             if r.verdict.kind is not Kind.NOT_IMPLEMENTED or "not implemented yet" not in r.verdict.message]
    assert not wrong, wrong[:5]
    assert descendants() == []
