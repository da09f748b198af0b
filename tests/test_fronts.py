"""The three fronts on the same cases: grade (results.json, exit codes), check (table, hints), pytest exercises/."""

from __future__ import annotations

import json
import os
import subprocess
import sys


from conftest import KIT, descendants, make_submission

RUN_TIMEOUT = 300


def run(*args, cwd=KIT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_grade_missing_path_and_empty_dir_exit_2(tmp_path):
    r = run("-m", "grader", "grade", str(tmp_path / "nope"))
    assert r.returncode == 2 and "no such file or directory" in r.stderr
    r = run("-m", "grader", "grade", str(tmp_path))
    assert r.returncode == 2 and "no exercise files" in r.stderr


def test_grade_writes_gradescope_results(tmp_path):
    source = (KIT / "solutions" / "ex1_sequence_shard.py").read_text()
    broken = source.replace("return torch.arange(rank, seq_len, world_size)", "return torch.arange(rank, seq_len)")
    sub = make_submission(tmp_path, {"ex1_sequence_shard.py": broken})
    out = tmp_path / "results.json"
    r = run("-m", "grader", "grade", str(sub), "--exercises", "ex1", "--results-json", str(out))
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert set(data) >= {"score", "execution_time", "tests"}
    tests = {t["name"]: t for t in data["tests"]}
    assert all(set(t) >= {"name", "score", "max_score", "status", "output", "visibility"} for t in tests.values())
    assert all(name.startswith("ex1 - ") for name in tests)
    bad = tests["ex1 - positions_striped P=4"]
    assert bad["status"] == "failed" and bad["score"] == 0
    assert "shard_positions" in bad["output"] and "expected" in bad["output"]
    hidden = tests["ex1 - positions_striped_p3 P=3"]
    assert hidden["visibility"] == "after_published" and hidden["status"] == "failed"
    assert "hidden case" in hidden["output"] and "shard_positions" not in hidden["output"]
    assert tests["ex1 - gather_zigzag P=4"]["status"] == "passed"
    assert data["score"] == sum(t["score"] for t in data["tests"])
    assert 0 < data["score"] < sum(t["max_score"] for t in data["tests"])


def test_check_reports_table_hints_and_exit_code(tmp_path):
    sub = make_submission(tmp_path)
    r = run("-m", "grader", "check", "ex1", "--submission", str(sub))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ex1" in r.stdout and "11/11" in r.stdout
    r = run("-m", "grader", "check", "ex1", "--submission", str(KIT / "exercises"))
    assert r.returncode == 1
    assert "ex1 shard_positions: not implemented yet" in r.stdout
    assert "0/11" in r.stdout


def test_pytest_front_one_line_per_stub_and_score_table(tmp_path):
    r = run("-m", "pytest", str(KIT / "exercises" / "ex1_sequence_shard.py"), "-p", "no:cacheprovider")
    assert r.returncode == 1
    assert "ex1-shard_zigzag-P4" in r.stdout
    assert "ex1 sequence_shard: not implemented yet" in r.stdout
    assert "Traceback" not in r.stdout
    assert "cplab score" in r.stdout and "0/11" in r.stdout
    assert "cplab: backend auto" in r.stdout


def test_pytest_front_passes_on_solutions(tmp_path):
    sub = make_submission(tmp_path)
    (sub / "conftest.py").write_text((KIT / "exercises" / "conftest.py").read_text())
    r = run("-m", "pytest", str(sub / "ex1_sequence_shard.py"), "-p", "no:cacheprovider", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "11 passed" in r.stdout
    assert descendants() == []
