"""The three fronts on the same cases: grade (results.json, exit codes), check (table, hints), pytest exercises/."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

from conftest import KIT, descendants, ex1_manifest, make_submission, planted

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
    hidden = tests["ex1 - hidden case 2"]  # positions_striped_p3, the second hidden case of ex1
    assert hidden["visibility"] == "after_published" and hidden["status"] == "failed"
    assert "hidden case" in hidden["output"] and "shard_positions" not in hidden["output"]
    assert "positions_striped_p3" not in out.read_text()
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


def test_pytest_front_shows_a_passed_case_s_note(tmp_path):
    """Whole blocks under zigzag keep the points (the contract: the rectangle is recommended, not graded);
    pytest passes the case and shows the note in its warnings summary."""
    from variants import VARIANTS, apply

    variant = next(v for v in VARIANTS if v.name == "ex5_correct_whole_blocks_off_contiguous")
    sub = make_submission(tmp_path, {variant.solution: apply(variant)})
    (sub / "conftest.py").write_text((KIT / "exercises" / "conftest.py").read_text())
    r = run("-m", "pytest", str(sub / variant.solution), "-p", "no:cacheprovider", "-q", "-k", "compute_zigzag",
            cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "1 passed" in r.stdout and "CaseNote: NOTE ex5 - compute_zigzag" in r.stdout, r.stdout[-3000:]
    assert "recommended, not graded" in r.stdout


STRIKE_MANIFEST = ex1_manifest("""\
- {name: gather_a, check: gather, world_size: 2, shape: {B: 2, S: 8, F: 3}}
- {name: positions, check: positions, world_size: 2, shape: {S: 8}}
- {name: gather_b, check: gather, world_size: 2, shape: {B: 2, S: 8, F: 3}}
- {name: gather_c, check: gather, world_size: 2, shape: {B: 2, S: 8, F: 3}}
- {name: gather_d, check: gather, world_size: 2, shape: {B: 2, S: 8, F: 3}, visibility: hidden}
- {name: gather_extra, check: gather, world_size: 2, shape: {B: 2, S: 8, F: 3}, bonus: true}
""", timeout=20)
# every rank sleeps in gather_sequence: the runner calls it a deadlock after its idle window
SLEEPER = planted("gather_sequence", "import time\ntime.sleep(600)")


def strike_lab(tmp_path):
    from grader import manifest

    (tmp_path / "manifest.yaml").write_text(STRIKE_MANIFEST)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "ex1_sequence_shard.py").write_text(SLEEPER)
    return manifest.load(tmp_path / "manifest.yaml"), tmp_path / "sub"


def test_after_two_deadlocks_an_exercise_s_other_cases_are_not_run(tmp_path):
    """Two hangs of one kind in one exercise: its later cases are reported at once, 0 points, naming the
    first; a case between the two still runs; bonus cases count their own strikes."""
    from grader import grading
    from grader.verdict import Kind

    lab, sub = strike_lab(tmp_path)
    results = {r.case.name: r for r in grading.grade(sub, lab, lab.cases)}
    for name in ("gather_a", "gather_b", "gather_extra"):  # run to the deadlock
        assert results[name].verdict.kind is Kind.TIMEOUT and "not run" not in results[name].verdict.message
    assert results["positions"].verdict.passed
    for name in ("gather_c", "gather_d"):
        r = results[name]
        assert (r.verdict.kind, r.score) == (Kind.TIMEOUT, 0)
        assert r.verdict.message.startswith("not run: same timeout or deadlock as ex1 - gather_a P=2 (and "
                                            "ex1 - gather_b P=2)"), r.verdict.message
        assert r.seconds < 1.0
    assert results["gather_d"].name == "ex1 - hidden case 1"


def test_a_time_budget_leaves_later_exercises_their_share(tmp_path):
    """With a budget, an exercise's cases start only within its share; the ones past it are not run."""
    from grader import grading
    from grader.runner import Runner

    lab, sub = strike_lab(tmp_path)
    cases = [lab.cases[i] for i in (0, 1, 3)]  # gather_a hangs past its share of a 1 s budget: the rest is not run
    with Runner() as warm:  # the shared rank server's first imports (seconds, once per process) are not the case's
        warm.pool(1).wait_ready()
    assert grading.deadlines(cases, 1.0) == {"ex1": 1.0}
    results = grading.grade(sub, lab, cases, budget=1.0)
    assert "not run" not in results[0].verdict.message
    assert [r.verdict.message for r in results[1:]] == [
        "not run: ex1 used up its share of the grading time (its cases had to start within 1 s of the 1 s budget)"] * 2
    two = [dataclasses.replace(c, exercise="ex2") for c in lab.select(hidden=False)[:1]]
    assert grading.deadlines(cases + two, 8.0) == {"ex1": 6.0, "ex2": 8.0}  # in proportion to the deadlines


def test_the_strikes_hold_in_the_pytest_and_grade_fronts(tmp_path):
    lab, sub = strike_lab(tmp_path)
    (sub / "conftest.py").write_text((KIT / "exercises" / "conftest.py").read_text())
    r = run("-m", "pytest", str(sub / "ex1_sequence_shard.py"), "-p", "no:cacheprovider", "-q",
            "--manifest", str(tmp_path / "manifest.yaml"), cwd=tmp_path)
    assert r.returncode == 1
    assert "not run: same timeout or deadlock as ex1 - gather_a P=2" in r.stdout, r.stdout[-3000:]
    out = tmp_path / "results.json"
    r = run("-m", "grader", "grade", str(tmp_path), "--manifest", str(tmp_path / "manifest.yaml"),
            "--results-json", str(out))
    assert r.returncode == 0, r.stderr
    assert "Graded 1 exercise file(s) from sub/ of the submission" in r.stderr  # found one folder down
    tests = {t["name"]: t for t in json.loads(out.read_text())["tests"]}
    assert "not run: same timeout" in tests["ex1 - gather_c P=2"]["output"]
    assert tests["ex1 - hidden case 1"]["output"] == ("Failed (timeout or deadlock). This is a hidden case: "
                                                      "its details are not shown.")
    # the staff's console shows why a hidden case failed; results.json never does
    assert "[hidden: staff only] FAIL ex1 - gather_d P=2  [timeout or deadlock]" in r.stdout
    assert "gather_d" not in out.read_text()


def test_grade_names_the_files_it_found_and_what_it_saw_when_none(tmp_path):
    (tmp_path / "deep" / "deeper" / "exercises").mkdir(parents=True)
    (tmp_path / "deep" / "deeper" / "exercises" / "ex1_sequence_shard.py").write_text("")
    (tmp_path / "notes.txt").write_text("")
    r = run("-m", "grader", "grade", str(tmp_path))
    assert r.returncode == 2
    assert "no exercise files here, under exercises/ or one folder down" in r.stderr and "found notes.txt" in r.stderr
