"""`python -m grader gradescope`: the zip's run_autograder, run on a fake /autograder, always writes results.json."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import uuid
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

from conftest import EX1_SOLUTION as SOLUTION, KIT, ex1_manifest, still_marked
from grader import gradescope
from grader import manifest as manifest_mod
from grader.cli import main

MANIFEST = ex1_manifest("""\
- {name: positions_contiguous, check: positions, world_size: 4, shape: {S: 16}}
- {name: shard_zigzag, check: shard, world_size: 4, scheme: zigzag, shape: {B: 3, S: 16, F: 5}}
- {name: unshard_heads, check: unshard, world_size: 2, shape: {B: 1, H: 2, S: 6, D: 3},
   visibility: hidden, seed: 3, points: 2}
- {name: gather_extra, check: gather, world_size: 2, shape: {B: 2, S: 8, F: 3}, bonus: true}
""")
MAX_SCORE = 4  # the bonus case adds to the score, not to the maximum
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
    return unpack(root / "autograder.zip", root / "autograder")


def unpack(bundle: Path, layout: Path, python: str = f'exec "{sys.executable}" "$@"') -> Path:
    """The zip as Gradescope lays it out, with `python` (a shell line) as the venv's interpreter."""
    with zipfile.ZipFile(bundle) as z:
        z.extractall(layout / "source")
        modes = {i.filename: i.external_attr >> 16 for i in z.infolist()}
    for name in ("setup.sh", "run_autograder"):
        assert modes[name] & stat.S_IXUSR, f"{name} is not executable in the zip"
        (layout / "source" / name).chmod(0o755)  # extractall drops the mode bits
    shutil.copy(layout / "source" / "run_autograder", layout / "run_autograder")  # as Gradescope's build does
    # what setup.sh would install: an interpreter with torch and the kit's dependencies
    (layout / "venv" / "bin").mkdir(parents=True)
    (layout / "venv" / "bin" / "python").write_text(f"#!/bin/sh\n{python}\n")
    (layout / "venv" / "bin" / "python").chmod(0o755)
    return layout


def test_zip_holds_the_kit_without_solutions(autograder):
    names = {p.relative_to(autograder / "source").as_posix() for p in (autograder / "source").rglob("*")}
    assert {"setup.sh", "run_autograder", "lab_manifest.yaml", "pyproject.toml", "grader/grading.py",
            "grader/checks/ex1.py"} <= names
    assert not any(n.startswith(("solutions", "exercises", "tests")) or "__pycache__" in n for n in names)
    assert (autograder / "source" / "lab_manifest.yaml").read_text() == MANIFEST  # hidden cases included
    setup = (autograder / "source" / "setup.sh").read_text()
    assert 'pip" install --no-deps -e "$ROOT/source"' in setup
    assert 'TORCH_INDEX="https://download.pytorch.org/whl/cpu"' in setup and setup.count("download.pytorch") == 1
    # only what grading imports, each at the version installed here (what the kit was tested with)
    for package in gradescope.GRADING_PACKAGES:
        assert f'"{package}=={version(package).split("+")[0]}"' in setup
    assert not any(word in setup for word in ("nbgrader", "jupyter", "matplotlib", "rich"))


def test_the_torch_index_is_chosen_in_one_place(tmp_path):
    assert main(["gradescope", str(tmp_path / "a.zip"), "--torch-index", ""]) == 0
    with zipfile.ZipFile(tmp_path / "a.zip") as z:
        setup = z.read("setup.sh").decode()
    assert 'TORCH_INDEX=""' in setup and "download.pytorch" not in setup
    # bash leaves out --index-url when the variable is empty: pip's default index
    line = next(l for l in setup.splitlines() if '"torch==' in l)
    assert line.split("install ")[1].startswith('${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "torch==')


def test_the_build_prints_its_time_plan(tmp_path, capsys):
    assert main(["gradescope", str(tmp_path / "a.zip"), "--time-limit", "500"]) == 0
    out = capsys.readouterr().out
    lab = manifest_mod.load()
    plan = gradescope.Plan.of(lab, 500)
    assert plan.budget == 500 - gradescope.START_ALLOWANCE - plan.guard > 0
    assert str(plan) in out and f"{plan.budget:g} s for the cases" in out
    assert list(plan.deadlines) == [ex.id for ex in lab.exercises]
    assert abs(list(plan.deadlines.values())[-1] - plan.budget) < 1e-6  # the shares use the whole budget
    with zipfile.ZipFile(tmp_path / "a.zip") as z:
        assert f"BUDGET = {plan.budget!r}" in z.read("run_autograder").decode()
        assert str(plan) in z.read("README.md").decode()
    assert main(["gradescope", str(tmp_path / "b.zip"), "--time-limit", "100"]) == 2
    assert "leaves no time for the cases" in capsys.readouterr().err and not (tmp_path / "b.zip").exists()


def run_autograder(autograder: Path, files: dict[str, str], script: Path | None = None,
                   timeout: float = RUN_LIMIT) -> dict:
    """Grade `files` as the submission with `script` (the layout's run_autograder); results.json, checked."""
    shutil.rmtree(autograder / "submission", ignore_errors=True)
    shutil.rmtree(autograder / "results", ignore_errors=True)
    (autograder / "submission").mkdir()
    for name, text in files.items():
        (autograder / "submission" / name).parent.mkdir(parents=True, exist_ok=True)
        (autograder / "submission" / name).write_text(text)
    mark = uuid.uuid4().hex
    env = {**os.environ, gradescope.ROOT_VARIABLE: str(autograder), "CPLAB_TEST_MARK": mark}
    proc = subprocess.run([str(script or autograder / "run_autograder")], cwd=autograder, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not still_marked(mark), "run_autograder left processes behind"
    assert sorted(p.name for p in (autograder / "results").iterdir()) == ["results.json"]
    data = json.loads((autograder / "results" / "results.json").read_text())
    assert isinstance(data["score"], (int, float)) and isinstance(data["execution_time"], (int, float))
    for t in data["tests"]:
        assert {"name", "score", "max_score", "status", "output", "visibility"} <= set(t), t
        assert t["status"] in STATUSES and t["visibility"] in VISIBILITIES and t["score"] >= 0
        assert t["score"] <= t["max_score"] or t["max_score"] == 0, t  # a bonus case: extra credit
    assert data["score"] == sum(t["score"] for t in data["tests"])
    assert data["stdout_visibility"] == "hidden"  # the grader's own output is for the course staff
    return data


def test_good_submission_gets_full_marks(autograder):
    data = run_autograder(autograder, {"ex1_sequence_shard.py": SOLUTION})
    assert data["score"] == MAX_SCORE + 1
    assert [t["status"] for t in data["tests"]] == ["passed"] * 4
    assert [t["visibility"] for t in data["tests"]] == ["visible", "visible", "after_published", "visible"]
    # a hidden case is named by its number only, as everywhere else; its name stays in the image
    assert data["tests"][2]["name"] == "ex1 - hidden case 1" and "unshard_heads" not in json.dumps(data)
    assert data["output"].startswith("Graded 1 exercise file(s) from the top folder of the submission: "
                                     "ex1_sequence_shard.py")


def test_a_zipped_release_folder_is_found_one_folder_down(autograder):
    data = run_autograder(autograder, {"cplab-release/exercises/ex1_sequence_shard.py": SOLUTION,
                                       "cplab-release/README.md": "# the release README\n"})
    assert data["score"] == MAX_SCORE + 1
    assert data["output"].startswith("Graded 1 exercise file(s) from cplab-release/exercises/ of the submission")


def test_submission_without_exercise_files_is_told_so(autograder):
    data = run_autograder(autograder, {"notes.txt": "I forgot the code\n"})
    [test] = data["tests"]
    assert (test["name"], test["score"], test["max_score"], test["status"]) == ("autograder failed", 0, MAX_SCORE,
                                                                                 "failed")
    assert "no exercise files here" in test["output"] and "ex1_sequence_shard.py" in test["output"]
    assert "found notes.txt" in test["output"]


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
    assert (test["name"], test["score"], test["max_score"]) == ("autograder failed", 0, MAX_SCORE)
    assert test["output"] == ("the grader was killed by SIGKILL before it wrote results. "
                              "The course staff can see the details.")
    assert "Checking" not in test["output"] and "Traceback" not in json.dumps(data["tests"])


def test_a_killed_grader_leaves_the_staff_something_to_read(autograder, tmp_path):
    """Whatever kills the grader (here its interpreter, after one line), the staff's stdout says what ran,
    what it printed and how it ended: the student is told the staff can see the details."""
    layout = unpack(autograder.parent / "autograder.zip", tmp_path / "autograder",
                    python='echo "grading ex1 - positions_contiguous P=4"; kill -9 $$')
    (layout / "submission").mkdir()
    (layout / "submission" / "ex1_sequence_shard.py").write_text(SOLUTION)
    env = {**os.environ, gradescope.ROOT_VARIABLE: str(layout)}
    proc = subprocess.run([str(layout / "run_autograder")], cwd=layout, env=env, capture_output=True, text=True,
                          timeout=RUN_LIMIT)
    assert proc.returncode == 0, proc.stderr
    [test] = json.loads((layout / "results" / "results.json").read_text())["tests"]
    assert (test["score"], test["max_score"]) == (0, MAX_SCORE)
    assert test["output"].startswith("the grader was killed by SIGKILL") and "course staff" in test["output"]
    staff = proc.stdout
    assert "-m grader grade" in staff and "--time-budget" in staff
    assert "grading ex1 - positions_contiguous P=4" in staff and "the grader was killed by SIGKILL after" in staff


def test_grading_past_the_time_limit_is_stopped_and_reported(autograder, tmp_path):
    hurried = tmp_path / "run_autograder"
    lab = manifest_mod.load(autograder / "source" / "lab_manifest.yaml")
    hurried.write_text(gradescope.run_autograder(lab, dataclasses.replace(gradescope.Plan.of(lab, 200), time_limit=1.0)))
    hurried.chmod(0o755)
    data = run_autograder(autograder, {"ex1_sequence_shard.py": SOLUTION}, script=hurried)
    [test] = data["tests"]
    assert (test["name"], test["score"]) == ("autograder failed", 0)
    assert test["output"] == "grading did not finish within 1 s. The course staff can see the details."


def blocking_ring(solution: str) -> str:
    """ex5's solution with its exchange replaced by the README's flagship bug: dist.send, then dist.recv."""
    start = solution.index("    return dist.batch_isend_irecv([")
    end = solution.index("    ])\n", start) + len("    ])\n")
    return (solution[:start] + "    dist.send(send_buf, send_to, group)\n    dist.recv(recv_buf, recv_from, group)\n"
            "    return []\n" + solution[end:])


def test_a_hanging_exercise_costs_that_exercise_only(tmp_path):
    """The whole lab's bundle on the solutions with ex5's ring deadlocked: every other exercise keeps full
    marks, ex5's cases after two deadlocks are not run, and the run ends within the bundle's budget."""
    assert main(["gradescope", str(tmp_path / "autograder.zip")]) == 0
    layout = unpack(tmp_path / "autograder.zip", tmp_path / "autograder")
    lab = manifest_mod.load()
    plan = gradescope.Plan.of(lab, gradescope.DEFAULT_TIME_LIMIT)
    files = {p.name: p.read_text() for p in (KIT / "solutions").glob("ex*.py")}
    files["ex5_ring_attention.py"] = blocking_ring(files["ex5_ring_attention.py"])
    start = time.monotonic()
    data = run_autograder(layout, files, timeout=plan.time_limit + 60)
    print(f"whole lab, ex5 deadlocked: {time.monotonic() - start:.1f} s, grading {data['execution_time']} s")
    assert data["execution_time"] < plan.budget
    tests = {t["name"]: t for t in data["tests"]}
    assert sorted(tests) == sorted(lab.label(c) for c in lab.cases)
    for case in lab.cases:
        t = tests[lab.label(case)]
        if case.exercise == "ex5" or (case.exercise == "ex7" and case.params.get("attention") == "ring"):
            assert t["status"] == "failed", t
        else:
            assert t["status"] == "passed", t
    not_run = [t for t in data["tests"] if t["name"].startswith("ex5") and "not run: same timeout or deadlock as "
               "ex5 - forward_contiguous P=4" in t["output"]]
    assert len(not_run) >= len([c for c in lab.cases if c.exercise == "ex5" and not c.bonus and not c.hidden]) - 2
    regular = sum(c.points for c in lab.cases if not c.bonus)
    assert data["score"] == regular - sum(c.points for c in lab.cases if c.exercise == "ex5" and not c.bonus)


def test_grade_needs_only_what_setup_sh_installs(tmp_path):
    """setup.sh installs GRADING_PACKAGES alone: `grade` must run with every other dependency missing."""
    others = ("nbformat", "nbgrader", "rich", "matplotlib", "pytest", "jupyterlab", "notebook")
    code = ("import sys\n"
            f"for name in {others!r}:\n"
            "    sys.modules[name] = None  # import raises ImportError\n"
            "from grader.cli import main\n"
            f"sys.exit(main(['grade', {str(KIT / 'solutions')!r}, '--exercises', 'ex2', '--results-json', "
            f"{str(tmp_path / 'r.json')!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=KIT, capture_output=True, text=True, timeout=RUN_LIMIT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["tests"] and all(t["status"] == "passed" for t in data["tests"])
