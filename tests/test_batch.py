"""`python -m grader batch`: the right CSV for five kinds of submission; killed batches; --jobs 2 = --jobs 1.

The cases are three of exercise 1's one-rank cases, so a submission costs two
torch imports (its grading process and one rank); the hidden case has a 5 s
deadline, which the hanging submission runs into.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from conftest import EX1_SOLUTION as SOLUTION, KIT, ex1_manifest, planted, still_marked
from grader import batch
from grader.cli import main

STUB = (KIT / "exercises" / "ex1_sequence_shard.py").read_text()
RUN_LIMIT = 300  # seconds for one whole batch of five submissions on a loaded 2-core machine

MANIFEST = ex1_manifest("""\
- {name: positions_contiguous, check: positions, world_size: 4, shape: {S: 16}}
- {name: shard_zigzag, check: shard, world_size: 4, scheme: zigzag, shape: {B: 3, S: 16, F: 5}}
- {name: unshard_heads, check: unshard, world_size: 2, shape: {B: 1, H: 2, S: 6, D: 3},
   visibility: hidden, seed: 3, timeout: 5}
""")

# As root the sandbox refuses the kill (the rank's parent is its pool's init, owned by root), so the
# submission is graded like any other; without it, the grading process dies and the row says so.
SANDBOXED = os.geteuid() == 0
CRASHED = "" if SANDBOXED else "the grading process was killed by SIGKILL (the submission may kill its parent process)"
EXPECTED_CSV = f"""\
student,score,max_score,ex1,error
crash,0,3,0,{CRASHED}
full,3,3,3,
hang,2,3,2,
partial,2,3,2,
stub,0,3,0,
"""
EXPECTED_FAILURES = {"crash": ["exception"] * 3 if SANDBOXED else [], "full": [], "hang": ["timeout or deadlock"], "partial": ["wrong shape"],
                     "stub": ["not implemented yet"] * 3}


# what open() gives a new file under the umask the tests run with
EXPECTED_MODE = batch.results_json.file_mode()

SUBMISSIONS = {
    "full": SOLUTION,
    "partial": planted("sequence_shard", "return x"),
    "stub": STUB,
    "hang": planted("sequence_unshard", "while True:\n    pass"),
    # kills the process that grades it: the batch must still give it a row
    "crash": planted("shard_positions", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)"),
}


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("batch")
    (root / "manifest.yaml").write_text(MANIFEST)
    for student, source in SUBMISSIONS.items():
        (root / "subs" / student).mkdir(parents=True)
        (root / "subs" / student / "ex1_sequence_shard.py").write_text(source)
    return root


def command(root: Path, out: str, jobs: int) -> list[str]:
    return [sys.executable, "-m", "grader", "batch", str(root / "subs"), "--out", str(root / out / "grades.csv"),
            "--manifest", str(root / "manifest.yaml"), "--jobs", str(jobs)]


def marked_env(mark: str, tmp: Path) -> dict[str, str]:
    """The batch's environment: a mark every process it starts inherits, and its own TMPDIR to check."""
    tmp.mkdir(exist_ok=True)
    return {**os.environ, "CPLAB_TEST_MARK": mark, "TMPDIR": str(tmp)}


def left_behind(mark: str, tmp: Path, seconds: float = 30.0) -> list:
    """Processes of the batch still alive (after a grace for orphans to die), then files in its TMPDIR."""
    return still_marked(mark, seconds) + sorted(p.name for p in tmp.iterdir())


def results(out: Path) -> dict[str, dict]:
    """Each student's results.json, less its timings."""
    data = {}
    for path in sorted((out / "results").glob("*.json")):
        d = json.loads(path.read_text())
        d.pop("execution_time")
        data[path.stem] = d
    return data


@pytest.fixture(scope="module")
def reference(lab_dir) -> Path:
    """An uninterrupted batch, one submission at a time."""
    mark = uuid.uuid4().hex
    start = time.monotonic()
    proc = subprocess.run(command(lab_dir, "ref", 1), capture_output=True, text=True, timeout=RUN_LIMIT,
                          env=marked_env(mark, lab_dir / "ref-tmp"))
    print(f"batch of {len(SUBMISSIONS)}, --jobs 1: {time.monotonic() - start:.1f} s")
    assert proc.returncode == 0, proc.stderr
    assert left_behind(mark, lab_dir / "ref-tmp") == []
    return lab_dir / "ref"


def test_batch_gives_every_submission_its_row(reference):
    assert (reference / "grades.csv").read_text() == EXPECTED_CSV
    data = results(reference)
    assert {s: d["extra_data"]["cplab"]["failures"] for s, d in data.items()} == EXPECTED_FAILURES
    if SANDBOXED:
        assert all("Operation not permitted" in t["output"] for t in data["crash"]["tests"]
                   if t["visibility"] == "visible")
    else:
        [crash_test] = data["crash"]["tests"]
        assert (crash_test["name"], crash_test["max_score"], crash_test["output"]) == ("autograder failed", 3, CRASHED)
    hang = {t["name"]: t for t in data["hang"]["tests"]}["ex1 - hidden case 1"]
    assert hang["visibility"] == "after_published" and "did not finish" not in hang["output"]
    assert "unshard_heads" not in json.dumps(data)
    # the staff's log of the student says why the hidden case failed
    assert "FAIL ex1 - unshard_heads P=2  [timeout or deadlock]" in (reference / "logs" / "hang.log").read_text()
    # the other TAs can read every output: the usual umask, not mkstemp's 0600
    for path in [reference / "grades.csv", reference / "grades-summary.txt", reference / "grades.png",
                 *(reference / "results").iterdir()]:
        assert path.stat().st_mode & 0o777 == EXPECTED_MODE, (path, oct(path.stat().st_mode))
    summary = (reference / "grades-summary.txt").read_text()
    assert "ex1    Sequence sharding" in summary and "1.40 / 3" in summary
    assert "      3  not implemented yet" in summary and (SANDBOXED or f"crash: {CRASHED}" in summary)
    assert (reference / "grades.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_killed_batch_resumes_with_the_same_results(lab_dir, reference):
    out = lab_dir / "killed"
    mark = uuid.uuid4().hex
    with open(lab_dir / "killed.log", "w") as log:
        proc = subprocess.Popen(command(lab_dir, "killed", 2), stdout=log, stderr=subprocess.STDOUT,
                                env=marked_env(mark, lab_dir / "killed-tmp"))
        try:
            deadline = time.monotonic() + RUN_LIMIT
            while not list((out / "results").glob("*.json")) and time.monotonic() < deadline:
                assert proc.poll() is None, (lab_dir / "killed.log").read_text()
                time.sleep(0.1)
        finally:
            proc.kill()  # SIGKILL: the batch cleans up nothing; its workers and ranks must still go
            proc.wait(timeout=30)
    assert left_behind(mark, lab_dir / "killed-tmp") == []
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "results").glob("*.json")}
    assert 1 <= len(kept) < len(SUBMISSIONS), kept
    for p in (out / "results").iterdir():  # whole files only: each was renamed into place
        json.loads(p.read_text())

    again = subprocess.run(command(lab_dir, "killed", 2), capture_output=True, text=True, timeout=RUN_LIMIT,
                           env=marked_env(mark, lab_dir / "killed-tmp"))
    assert again.returncode == 0, again.stderr
    assert (f"{len(SUBMISSIONS)} submission(s): {len(kept)} already graded, "
            f"grading {len(SUBMISSIONS) - len(kept)} with 2 job(s)") in again.stderr
    # nothing graded before the kill was graded again: same files, never rewritten
    assert {n: ((out / "results" / n).stat().st_ino, (out / "results" / n).stat().st_mtime_ns) for n in kept} == kept
    assert (out / "grades.csv").read_text() == (reference / "grades.csv").read_text()
    assert results(out) == results(reference)
    assert left_behind(mark, lab_dir / "killed-tmp") == []


def test_sigterm_stops_the_batch_and_records_nothing_half_done(lab_dir, tmp_path):
    (tmp_path / "subs" / "hang").mkdir(parents=True)
    (tmp_path / "subs" / "hang" / "ex1_sequence_shard.py").write_text(SUBMISSIONS["hang"])
    out = tmp_path / "out"
    mark = uuid.uuid4().hex
    cmd = [sys.executable, "-m", "grader", "batch", str(tmp_path / "subs"), "--out", str(out / "grades.csv"),
           "--manifest", str(lab_dir / "manifest.yaml")]
    with open(tmp_path / "batch.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=marked_env(mark, tmp_path / "tmp"))
        try:
            deadline = time.monotonic() + RUN_LIMIT
            while not (out / "logs" / "hang.log").exists() and time.monotonic() < deadline:  # the worker is up
                assert proc.poll() is None, (tmp_path / "batch.log").read_text()
                time.sleep(0.1)
            time.sleep(1.0)
            proc.terminate()
            code = proc.wait(timeout=60)
        finally:
            proc.kill()
    text = (tmp_path / "batch.log").read_text()
    assert code == 130, text
    assert "interrupted: the finished results are in" in text
    assert left_behind(mark, tmp_path / "tmp") == []
    # the submission in flight is not a failure: it has no results, so the next run grades it
    assert list((out / "results").iterdir()) == [] and not (out / "grades.csv").exists()


def test_a_stopped_worker_whose_cleanup_hangs_still_ends():
    """A worker whose batch was SIGKILLed gets SIGTERM and nobody's SIGKILL after it: if closing its pools
    hangs, it must still end (and take its rank server with it) instead of outliving the batch."""
    code = ("import os, signal, time\n"
            "from grader import batch\n"
            "batch.STOP_GRACE = 1.0\n"
            "signal.signal(signal.SIGTERM, batch._leave)\n"
            "try:\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(5)\n"
            "finally:\n"
            "    time.sleep(60)  # a cleanup that never returns\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=KIT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGALRM, proc.stderr
    assert time.monotonic() - start < 30


def test_plan_regrades_only_what_changed(lab_dir, reference):
    settings = batch.Settings(manifest=lab_dir / "manifest.yaml")
    assert batch.plan(lab_dir / "subs", reference / "grades.csv", settings).todo == []
    full = lab_dir / "subs" / "full" / "ex1_sequence_shard.py"
    try:
        full.write_text(SOLUTION + "\n# resubmitted\n")
        todo = batch.plan(lab_dir / "subs", reference / "grades.csv", settings).todo
        assert [j.student for j in todo] == ["full"]
    finally:
        full.write_text(SOLUTION)
    everyone = batch.plan(lab_dir / "subs", reference / "grades.csv", settings, regrade=True).todo
    assert [j.student for j in everyone] == sorted(SUBMISSIONS)


@pytest.fixture
def grader_copy(tmp_path, monkeypatch) -> Path:
    """A copy of the grader package that batch hashes instead of the real one, which stays untouched."""
    copy = tmp_path / "grader"
    shutil.copytree(batch.GRADER_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(batch, "GRADER_ROOT", copy)
    return copy


def test_plan_regrades_everyone_when_the_grader_changes(lab_dir, reference, grader_copy, monkeypatch):
    """A results file graded by one grader is not kept once any file of the grader differs (a forged
    grading.py restored after a hostile submission rewrote it, say), nor under another torch."""
    settings = batch.Settings(manifest=lab_dir / "manifest.yaml")

    def todo() -> list[str]:
        return [j.student for j in batch.plan(lab_dir / "subs", reference / "grades.csv", settings).todo]

    assert todo() == []  # the same bytes at another path: the same grader
    grading = grader_copy / "grading.py"
    original = grading.read_bytes()
    grading.write_bytes(original + b"# forged: every case passes\n")
    assert todo() == sorted(SUBMISSIONS)
    grading.write_bytes(original)
    assert todo() == []
    check = grader_copy / "checks" / "ex1.py"  # a file in a subpackage counts too
    check_source = check.read_bytes()
    check.write_bytes(check_source + b"\n")
    assert todo() == sorted(SUBMISSIONS)
    check.write_bytes(check_source)
    assert todo() == []
    (grader_copy / "checks" / "ex8.py").write_text("# a new check module\n")  # a file added counts
    assert todo() == sorted(SUBMISSIONS)
    (grader_copy / "checks" / "ex8.py").unlink()
    (grader_copy / "checks" / "ex1.py").rename(grader_copy / "checks" / "ex1_old.py")  # and so does a rename
    assert todo() == sorted(SUBMISSIONS)
    (grader_copy / "checks" / "ex1_old.py").rename(grader_copy / "checks" / "ex1.py")
    # compiled files and other files are not the grader's source
    (grader_copy / "__pycache__").mkdir()
    (grader_copy / "__pycache__" / "grading.py").write_text("stale\n")
    (grader_copy / "NOTES.txt").write_text("notes\n")
    assert todo() == []
    monkeypatch.setattr(torch, "__version__", "0.0.0+other")
    assert todo() == sorted(SUBMISSIONS)


def test_the_grader_is_hashed_once_per_plan(lab_dir, reference, monkeypatch):
    calls = []
    real = batch.kit_digest
    monkeypatch.setattr(batch, "kit_digest", lambda *a: calls.append(a) or real(*a))
    settings = batch.Settings(manifest=lab_dir / "manifest.yaml")
    assert batch.plan(lab_dir / "subs", reference / "grades.csv", settings).todo == []
    assert len(calls) == 1, f"{len(calls)} digests of the grader for {len(SUBMISSIONS)} students"


def test_plan_regrades_everyone_when_the_manifest_bytes_change(lab_dir, reference, tmp_path):
    """The manifest file's bytes count, not only the selected cases: even a comment added regrades."""
    copy = tmp_path / "manifest.yaml"
    copy.write_text(MANIFEST)

    def todo() -> list[str]:
        settings = batch.Settings(manifest=copy)
        return [j.student for j in batch.plan(lab_dir / "subs", reference / "grades.csv", settings).todo]

    assert todo() == []  # the same bytes at another path
    copy.write_text(MANIFEST + "# the deadlines were checked on the new machine\n")
    assert todo() == sorted(SUBMISSIONS)


def fake_schedule(change_grader=None):
    """batch._schedule without processes: every job gets a full-marks results file, as a forged grader gives."""

    def schedule(jobs, width, limit, maxima, finished):
        for job in jobs:
            data = batch.failed_results("", maxima, 1.0, job.fingerprint)
            data.update(score=sum(maxima.values()), tests=[])
            data["extra_data"]["cplab"]["exercises"] = {ex: [mx, mx] for ex, mx in maxima.items()}
            batch.results_json.write(job.results, data)
            if change_grader:
                change_grader()
            finished(job)

    return schedule


def test_results_graded_while_the_grader_changed_are_void(lab_dir, grader_copy, tmp_path, monkeypatch):
    """A submission that rewrites the grader during the run forges the grades graded after it; restoring
    the file does not make them good: the run's results read as failed, and the next run grades them."""
    settings = batch.Settings(manifest=lab_dir / "manifest.yaml")
    out = tmp_path / "out" / "grades.csv"
    grading = grader_copy / "grading.py"
    original = grading.read_bytes()
    monkeypatch.setattr(batch, "_schedule", fake_schedule(lambda: grading.write_bytes(original + b"# forged\n")))
    outcome = batch.execute(batch.plan(lab_dir / "subs", out, settings))
    assert [(r.student, r.score, r.error) for r in outcome.rows] == [(s, 0.0, batch.CHANGED)
                                                                      for s in sorted(SUBMISSIONS)]
    # the file is restored: the void results are still graded again
    grading.write_bytes(original)
    assert [j.student for j in batch.plan(lab_dir / "subs", out, settings).todo] == sorted(SUBMISSIONS)

    monkeypatch.setattr(batch, "_schedule", fake_schedule())  # a run where nothing changes is kept
    outcome = batch.execute(batch.plan(lab_dir / "subs", out, settings))
    assert [(r.score, r.error) for r in outcome.rows] == [(3.0, "")] * len(SUBMISSIONS)
    assert batch.plan(lab_dir / "subs", out, settings).todo == []


def test_an_interrupted_run_that_changed_the_grader_keeps_nothing_forged(lab_dir, grader_copy, tmp_path,
                                                                         monkeypatch):
    settings = batch.Settings(manifest=lab_dir / "manifest.yaml")
    out = tmp_path / "out" / "grades.csv"
    grading = grader_copy / "grading.py"
    forged = fake_schedule(lambda: grading.write_bytes(grading.read_bytes() + b"# forged\n"))

    def interrupted(jobs, *args):
        forged(jobs[:2], *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(batch, "_schedule", interrupted)
    with pytest.raises(KeyboardInterrupt):
        batch.execute(batch.plan(lab_dir / "subs", out, settings))
    written = sorted(p.stem for p in (out.parent / "results").glob("*.json"))
    assert written == sorted(SUBMISSIONS)[:2]  # the students not reached have no results file
    for student in written:
        meta = json.loads((out.parent / "results" / f"{student}.json").read_text())["extra_data"]["cplab"]
        assert (meta["fingerprint"], meta["error"]) == (batch.VOID, batch.CHANGED)


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        batch.results_json.write(tmp_path / "r.json", {"score": 1})
        batch.write_csv(tmp_path / "g.csv", [], ["ex1"])
    finally:
        os.umask(old)
    assert [(tmp_path / n).stat().st_mode & 0o777 for n in ("r.json", "g.csv")] == [0o640, 0o640]


def test_a_score_past_the_maximum_stays_in_the_histogram(tmp_path):
    """Bonus points take a full-marks student past the maximum: every panel still counts every student."""
    import numpy as np

    for scores, mx in (([0, 3, 4], 3), ([16, 17, 2.5], 16), ([99, 104, 0], 99), ([0, 0], 0)):
        counts, _ = np.histogram(scores, bins=batch.bin_edges(scores, mx))
        assert counts.sum() == len(scores), (scores, mx)
    rows = [batch.Row("full", 5.0, 4.0, {"ex1": 5.0}), batch.Row("none", 0.0, 4.0, {"ex1": 0.0})]
    outcome = batch.Outcome(rows, graded=2, skipped=0, maxima={"ex1": 4.0}, titles={"ex1": "Sequence sharding"})
    text = batch.write_reports(outcome, batch.Layout(tmp_path / "grades.csv"))
    assert "100%     1  #" in text and "0-9%     1  #" in text
    assert (tmp_path / "grades.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_batch_refuses_a_folder_without_submissions(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["batch", str(tmp_path / "empty"), "--out", str(tmp_path / "g.csv")]) == 2
    assert "no submission folders in it" in capsys.readouterr().err
    assert not (tmp_path / "g.csv").exists()
