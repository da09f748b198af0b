"""`python -m grader gradescope`: the zip's run_autograder, run on a fake /autograder, always writes results.json."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest

from conftest import EX1_SOLUTION as SOLUTION, still_marked
from grader import gradescope
from grader import manifest as manifest_mod
from grader.cli import main

MANIFEST = """\
version: 1
defaults: {timeout: 30, points: 1}
exercises:
  - id: ex1
    title: Sequence sharding
    file: ex1_sequence_shard.py
    functions: [shard_positions, sequence_shard, sequence_unshard, gather_sequence]
    cases:
      - {name: positions_contiguous, check: positions, world_size: 4, shape: {S: 16}}
      - {name: shard_zigzag, check: shard, world_size: 4, scheme: zigzag, shape: {B: 3, S: 16, F: 5}}
      - {name: unshard_heads, check: unshard, world_size: 2, shape: {B: 1, H: 2, S: 6, D: 3},
         visibility: hidden, seed: 3, points: 2}
"""
RUN_LIMIT = 240  # seconds for one run_autograder on a loaded 2-core machine
STATUSES = {"passed", "failed"}
VISIBILITIES = {"hidden", "after_due_date", "after_published", "visible"}


@pytest.fixture(scope="module")
def autograder(tmp_path_factory) -> Path:
    """A fake /autograder: the zip extracted to source/, run_autograder copied up, a venv/bin/python."""
    root = tmp_path_factory.mktemp("gradescope")
    (root / "manifest.yaml").write_text(MANIFEST)
    assert main(["gradescope", str(root / "autograder.zip"), "--manifest", str(root / "manifest.yaml"),
                 "--time-limit", "200"]) == 0
    layout = root / "autograder"
    with zipfile.ZipFile(root / "autograder.zip") as z:
        z.extractall(layout / "source")
        modes = {i.filename: i.external_attr >> 16 for i in z.infolist()}
    for name in ("setup.sh", "run_autograder"):
        assert modes[name] & stat.S_IXUSR, f"{name} is not executable in the zip"
        (layout / "source" / name).chmod(0o755)  # extractall drops the mode bits
    shutil.copy(layout / "source" / "run_autograder", layout / "run_autograder")  # as Gradescope's build does
    # what setup.sh would install: an interpreter with torch and the kit's dependencies
    (layout / "venv" / "bin").mkdir(parents=True)
    (layout / "venv" / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (layout / "venv" / "bin" / "python").chmod(0o755)
    return layout


def test_zip_holds_the_kit_without_solutions(autograder):
    names = {p.relative_to(autograder / "source").as_posix() for p in (autograder / "source").rglob("*")}
    assert {"setup.sh", "run_autograder", "lab_manifest.yaml", "pyproject.toml", "grader/grading.py",
            "grader/checks/ex1.py"} <= names
    assert not any(n.startswith(("solutions", "exercises", "tests")) or "__pycache__" in n for n in names)
    assert (autograder / "source" / "lab_manifest.yaml").read_text() == MANIFEST  # hidden cases included
    setup = (autograder / "source" / "setup.sh").read_text()
    assert 'pip" install -e "$ROOT/source"' in setup and "download.pytorch.org/whl/cpu" in setup


def run_autograder(autograder: Path, files: dict[str, str], script: Path | None = None) -> dict:
    """Grade `files` as the submission with `script` (the layout's run_autograder); results.json, checked."""
    shutil.rmtree(autograder / "submission", ignore_errors=True)
    shutil.rmtree(autograder / "results", ignore_errors=True)
    (autograder / "submission").mkdir()
    for name, text in files.items():
        (autograder / "submission" / name).write_text(text)
    mark = uuid.uuid4().hex
    env = {**os.environ, gradescope.ROOT_VARIABLE: str(autograder), "CPLAB_TEST_MARK": mark}
    proc = subprocess.run([str(script or autograder / "run_autograder")], cwd=autograder, env=env,
                          capture_output=True, text=True, timeout=RUN_LIMIT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not still_marked(mark), "run_autograder left processes behind"
    assert sorted(p.name for p in (autograder / "results").iterdir()) == ["results.json"]
    data = json.loads((autograder / "results" / "results.json").read_text())
    assert isinstance(data["score"], (int, float)) and isinstance(data["execution_time"], (int, float))
    for t in data["tests"]:
        assert {"name", "score", "max_score", "status", "output", "visibility"} <= set(t), t
        assert t["status"] in STATUSES and t["visibility"] in VISIBILITIES and 0 <= t["score"] <= t["max_score"]
    assert data["score"] == sum(t["score"] for t in data["tests"])
    assert data["stdout_visibility"] == "hidden"  # the grader's own output is for the course staff
    return data


def test_good_submission_gets_full_marks(autograder):
    data = run_autograder(autograder, {"ex1_sequence_shard.py": SOLUTION})
    assert data["score"] == 4
    assert [t["status"] for t in data["tests"]] == ["passed"] * 3
    assert [t["visibility"] for t in data["tests"]] == ["visible", "visible", "after_published"]


def test_submission_without_exercise_files_is_told_so(autograder):
    data = run_autograder(autograder, {"notes.txt": "I forgot the code\n"})
    [test] = data["tests"]
    assert (test["name"], test["score"], test["max_score"], test["status"]) == ("autograder failed", 0, 4, "failed")
    assert "no exercise files here" in test["output"] and "ex1_sequence_shard.py" in test["output"]


def test_submission_that_kills_the_grader_still_gets_results(autograder):
    # the first solution block is shard_positions', which every case here calls first
    block = "    ### BEGIN SOLUTION\n"
    planted = SOLUTION.replace(block, block + "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n", 1)
    data = run_autograder(autograder, {"ex1_sequence_shard.py": planted})
    if os.geteuid() == 0:
        # Sandboxed: the rank's parent is its pool's init, owned by root, so the kill is refused and
        # the grader writes its own results, every case graded.
        assert data["score"] == 0 and data["tests"] and all(t["name"].startswith("ex1") for t in data["tests"])
        assert all("Operation not permitted" in t["output"] for t in data["tests"] if t["visibility"] == "visible")
        return
    [test] = data["tests"]
    assert (test["name"], test["score"], test["max_score"]) == ("autograder failed", 0, 4)
    assert test["output"] == ("the grader was killed by SIGKILL before it wrote results. "
                              "The course staff can see the details.")
    assert "Checking" not in test["output"] and "Traceback" not in json.dumps(data["tests"])


def test_grading_past_the_time_limit_is_stopped_and_reported(autograder, tmp_path):
    hurried = tmp_path / "run_autograder"
    lab = manifest_mod.load(autograder / "source" / "lab_manifest.yaml")
    hurried.write_text(gradescope.run_autograder(lab, 1.0))
    hurried.chmod(0o755)
    data = run_autograder(autograder, {"ex1_sequence_shard.py": SOLUTION}, script=hurried)
    [test] = data["tests"]
    assert (test["name"], test["score"]) == ("autograder failed", 0)
    assert test["output"] == "grading did not finish within 1 s. The course staff can see the details."
