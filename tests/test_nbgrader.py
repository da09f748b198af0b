"""The nbgrader front end to end: a real course, the real nbgrader CLI, three submissions, exported grades.

One test, because every step needs the one before: `python -m grader
nbgrader` builds the course (twice: re-running changes nothing),
`nbgrader generate_assignment` releases it, students' notebooks are placed
under submitted/, `nbgrader validate` runs a student's public tests, one
autograde runs past nbgrader's own cell timeout, then `nbgrader autograde`,
`generate_feedback` and `export`. Exercise 1 only, on a manifest cut down to
four of its cases with short deadlines, so the infinite-loop submission costs
seconds, not minutes.

Expected scores (auto-graded points; each "say it out loud" answer waits for a
human):
  alice, the solution                                 positions 3/3, gather 4/4 = 7/7
  bob, zigzag's late chunk off by one (public case)   positions 2/3, gather 4/4 = 6/7
  carol, gather_sequence never leaves its loop        positions 3/3, gather 0/4 = 3/7
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nbformat
import pytest
import yaml

from conftest import KIT, descendants
from grader import manifest as lab_manifest
from grader import notebooks, stubs
from grader.nbgrader_cell import answer_id, answer_source, module_code
from grader.notebooks import CONFIG_BEGIN

ASSIGNMENT = "cplab"
NOTEBOOK = "ex1_sequence_shard"
MODULE = f"{NOTEBOOK}.py"
SOLUTION = (KIT / "solutions" / MODULE).read_text()
CASE_TIMEOUT = 4  # seconds; a correct case takes well under one
# name -> (points, visibility); the kit's own definitions otherwise
CASES = {"positions_zigzag": (1, "public"), "positions_striped_p3": (2, "hidden"),
         "gather_contiguous": (1, "public"), "gather_heads_p1": (3, "hidden")}
HIDDEN = [n for n, (_, vis) in CASES.items() if vis == "hidden"]


def edited(old: str, new: str) -> str:
    assert SOLUTION.count(old) == 1, f"solutions/{MODULE} changed: {old!r} is not in it once"
    return SOLUTION.replace(old, new)


STUDENTS = {
    "alice": (SOLUTION, 7.0, {"ex1_test_positions": 3.0, "ex1_test_gather": 4.0}),
    "bob": (edited("late = chunks - 1 - rank", "late = chunks - rank"), 6.0,
            {"ex1_test_positions": 2.0, "ex1_test_gather": 4.0}),
    "carol": (edited("    dist.all_gather(parts, x_local, group=group)\n",
                     "    filled = 0\n    while filled < world_size:  # never advances\n"
                     "        dist.all_gather(parts, x_local, group=group)\n"), 3.0,
              {"ex1_test_positions": 3.0, "ex1_test_gather": 0.0}),
}
AUTO_MAX = 7.0


def small_manifest(path: Path, timeout: float = CASE_TIMEOUT) -> Path:
    """The kit's ex1 with four of its cases, their points and visibility as in CASES, short deadlines."""
    kit = yaml.safe_load((KIT / "lab_manifest.yaml").read_text())
    ex1 = next(ex for ex in kit["exercises"] if ex["id"] == "ex1")
    cases = [dict(c, points=CASES[c["name"]][0], visibility=CASES[c["name"]][1])
             for c in ex1["cases"] if c["name"] in CASES]
    assert len(cases) == len(CASES), "a case of CASES is gone from lab_manifest.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "defaults": {"timeout": timeout},
                                    "exercises": [dict(ex1, cases=cases)]}))
    return path


class Course:
    """Runs commands in the course folder, every process marked so that leftovers can be found."""

    def __init__(self, root: Path):
        self.root = root
        self.mark = f"cplab-nbgrader-test-{uuid.uuid4().hex}"
        # nbgrader runs `alembic` from PATH when it creates gradebook.db: put this interpreter's scripts first.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env = {**os.environ, "PATH": path, "CPLAB_TEST_MARK": self.mark}
        self.seconds: dict[str, float] = {}

    def run(self, *args: str, timeout: float) -> str:
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", *args], cwd=self.root, env=self.env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        self.seconds[" ".join(a for a in args if not a.startswith("/"))] = time.monotonic() - start
        assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-6000:]}"
        return proc.stdout

    def leftovers(self) -> list[str]:
        """Live processes that carry this test's mark, wherever they were reparented."""
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
                if f"CPLAB_TEST_MARK={self.mark}".encode() in environ.split(b"\0"):
                    found.append(f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes()[:200]!r}")
            except OSError:
                continue
        return found


def submission(release: Path, code: str) -> nbformat.NotebookNode:
    nb = nbformat.read(release, as_version=4)
    for cell in nb.cells:
        if cell.get("id") == answer_id("ex1"):
            cell.source = answer_source(MODULE, code)
        elif cell.get("id") == "ex1_say_it":
            cell.source = "The state: activations (B, S, ...). The axis: S, cut into P shards. Trade-off: ..."
    return nb


@pytest.mark.long
@pytest.mark.timeout(480)
def test_course_from_build_to_exported_grades(tmp_path):
    course = Course(tmp_path / "course")
    manifest = small_manifest(tmp_path / "manifest.yaml")
    course.root.mkdir()
    config = course.root / "nbgrader_config.py"
    config.write_text('c = get_config()  # noqa\nc.CourseDirectory.course_id = "cplab-test"\n')

    # 1. Build, then build again: the second run writes nothing and the config keeps one block and our line.
    first = course.run("grader", "nbgrader", str(course.root), "--manifest", str(manifest), timeout=120)
    assert first.count("wrote ") == 2, first
    again = notebooks.build(course.root, lab_manifest.load(manifest), KIT / "solutions",
                            manifest=str(manifest.resolve()))
    assert [w.changed for w in again] == [False, False], again
    text = config.read_text()
    assert text.count(CONFIG_BEGIN) == 1 and text.count('course_id = "cplab-test"') == 1, text
    # Case deadlines of 4 s: the two-case gather cell may need 2 * (4 + 30) s, not nbgrader's 30 s default.
    assert "c.Execute.timeout = 68" in text, text

    # 2. Release, as if the instructor had run the source notebook: its %%writefile put the solution there.
    source = course.root / "source" / ASSIGNMENT
    (source / MODULE).write_text(SOLUTION)
    course.run("nbgrader", "generate_assignment", ASSIGNMENT, timeout=120)
    release = course.root / "release" / ASSIGNMENT
    assert sorted(p.name for p in release.iterdir()) == [f"{NOTEBOOK}.ipynb"], "the solution file was released"
    released = (release / f"{NOTEBOOK}.ipynb").read_text()
    for secret in HIDDEN + ["BEGIN HIDDEN TESTS", "BEGIN SOLUTION", "Grading guide"]:
        assert secret not in released, f"{secret!r} is in the students' notebook"
    answer = next(c for c in nbformat.reads(released, as_version=4).cells if c.get("id") == answer_id("ex1"))
    assert module_code(answer.source).rstrip() == stubs.clear_solutions(SOLUTION).rstrip(), \
        "nbgrader's stub differs from exercises/'s"

    # 3. Three students hand in; bob first checks his public cases with nbgrader validate.
    for student, (code, _, _) in STUDENTS.items():
        folder = course.root / "submitted" / student / ASSIGNMENT
        folder.mkdir(parents=True)
        nbformat.write(submission(release / f"{NOTEBOOK}.ipynb", code), folder / f"{NOTEBOOK}.ipynb")
    work = tmp_path / "bob_home"
    work.mkdir()
    nbformat.write(submission(release / f"{NOTEBOOK}.ipynb", STUDENTS["bob"][0]), work / f"{NOTEBOOK}.ipynb")
    validate = course.run("nbgrader", "validate", str(work / f"{NOTEBOOK}.ipynb"), timeout=180)
    assert "VALIDATION FAILED ON 1 CELL(S)" in validate, validate  # the positions tests
    assert "FAIL ex1 - positions_zigzag P=4  [numeric mismatch]" in validate, validate
    assert "gather_contiguous" not in validate, validate  # the gather cell passed its public case

    # 4. A cell that outlives nbgrader's own timeout is interrupted and scores 0; the rest of the notebook
    #    is graded and its ranks are gone. Here nbgrader's timeout (20 s) must come before the case's own:
    #    the cells read the manifest when they run, so this autograde runs under deadlines of 60 s. (The
    #    first test cell also starts the rank server: 20 s leaves that room beside another test worker.)
    small_manifest(manifest, timeout=60)
    course.run("nbgrader", "autograde", ASSIGNMENT, "--student", "carol", "--Execute.timeout=20", timeout=180)
    small_manifest(manifest)
    graded = nbformat.read(course.root / "autograded" / "carol" / ASSIGNMENT / f"{NOTEBOOK}.ipynb", 4)
    gather = next(c for c in graded.cells if c.get("id") == "ex1_test_gather")
    assert any(o.get("ename") == "CellTimeoutError" for o in gather.outputs), gather.outputs
    assert course.leftovers() == []

    # 5. Autograde everyone, feedback, export.
    course.run("nbgrader", "autograde", ASSIGNMENT, "--force", timeout=360)
    course.run("nbgrader", "generate_feedback", ASSIGNMENT, timeout=120)
    course.run("nbgrader", "export", timeout=120)

    with open(course.root / "grades.csv", newline="") as f:
        rows = {row["student_id"]: row for row in csv.DictReader(f)}
    assert sorted(rows) == sorted(STUDENTS)
    for student, (_, auto, _) in STUDENTS.items():
        assert float(rows[student]["raw_score"]) == auto, (student, rows[student])
        assert float(rows[student]["max_score"]) == AUTO_MAX + notebooks.SAY_IT_POINTS, (student, rows[student])

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course.root / 'gradebook.db'}") as gb:
        for student, (_, _, cells) in STUDENTS.items():
            nb = gb.find_submission_notebook(NOTEBOOK, ASSIGNMENT, student)
            scores = {g.name: g.auto_score for g in nb.grades if g.name in cells}
            assert scores == cells, (student, scores)

    feedback = {s: (course.root / "feedback" / s / ASSIGNMENT / f"{NOTEBOOK}.html").read_text()
                for s in STUDENTS}
    for student, html in feedback.items():
        for secret in HIDDEN + ["BEGIN HIDDEN TESTS"]:
            assert secret not in html, f"{secret!r} leaks into {student}'s feedback"
        assert "CellTimeoutError" not in html, f"a cell of {student} ran past nbgrader's timeout"
    assert "FAIL ex1 - positions_zigzag P=4" in feedback["bob"]
    assert "returned [0, 1, 16, 17],\n    expected [0, 1, 14, 15]" in feedback["bob"]
    assert f"more than the case's budget of {CASE_TIMEOUT} s" in feedback["carol"]
    assert "ex1 - hidden case 2: FAIL [timeout or deadlock]" in feedback["carol"]  # gather_heads_p1
    assert "FAIL ex1" not in feedback["alice"] and "FAIL [" not in feedback["alice"]

    # 6. Bounded time, and nothing left running: not below this process, not reparented anywhere.
    print({k: round(v, 1) for k, v in course.seconds.items()})
    assert course.seconds[f"nbgrader autograde {ASSIGNMENT} --force"] < 240, course.seconds
    assert descendants() == []
    assert course.leftovers() == []


def test_stderr_of_the_cell_and_its_children_reaches_stdout():
    """nbgrader gives 0 to a test cell with any stderr output: a warning, or a rank's startup message."""
    code = ("import os, subprocess, sys, warnings\n"
            "from grader.nbgrader_cell import stderr_to_stdout\n"
            "with stderr_to_stdout():\n"
            "    warnings.warn('python warning')\n"
            "    print('sys.stderr', file=sys.stderr)\n"
            "    os.write(2, b'fd 2\\n')\n"
            "    subprocess.run([sys.executable, '-c', 'import os; os.write(2, b\"child\\\\n\")'])\n"
            "print('restored', file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for text in ("python warning", "sys.stderr", "fd 2", "child"):
        assert text in proc.stdout, (text, proc.stdout)
    assert proc.stderr == "restored\n"


def test_missing_sibling_modules_are_written_from_their_notebooks(tmp_path):
    """ex9 imports ex8, which imports ex1: both are written from their notebooks, an existing file stays."""
    from grader.nbgrader_cell import write_missing_modules

    path = small_manifest(tmp_path / "manifest.yaml")
    raw = yaml.safe_load(path.read_text())
    raw["exercises"] += [{"id": "ex8", "title": "Uses ex1", "file": "ex8_middle.py", "functions": ["f"]},
                         {"id": "ex9", "title": "Uses ex8", "file": "ex9_top.py", "functions": ["g"]}]
    path.write_text(yaml.safe_dump(raw))
    lab = lab_manifest.load(path)
    folder = tmp_path / "student"
    folder.mkdir()
    middle = "from ex1_sequence_shard import shard_positions\n"
    for ex_id, code in (("ex1", SOLUTION), ("ex8", middle)):
        ex = lab.exercise(ex_id)
        nbformat.write(notebooks.notebook(ex, code, lab, say_it_points=1), folder / f"{ex.module}.ipynb")

    assert write_missing_modules(folder, lab, "ex9") == []  # its own module is missing: its cell must run
    (folder / "ex9_top.py").write_text("import ex8_middle\n")
    assert write_missing_modules(folder, lab, "ex9") == ["ex1_sequence_shard.py", "ex8_middle.py"]
    assert (folder / MODULE).read_text() == SOLUTION
    assert (folder / "ex8_middle.py").read_text() == middle
    (folder / MODULE).write_text("# what the student's answer cell last wrote\n")
    (folder / "ex8_middle.py").unlink()
    assert write_missing_modules(folder, lab, "ex9") == ["ex8_middle.py"]
    assert (folder / MODULE).read_text() == "# what the student's answer cell last wrote\n"
