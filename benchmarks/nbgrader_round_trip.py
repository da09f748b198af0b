"""The nbgrader round trip of the whole lab on one submission of the solutions, each step timed.

    python benchmarks/nbgrader_round_trip.py        # needs the instructor extra: pip install -e ".[instructor]"

Builds a course in a temporary folder (`python -m grader nbgrader`), puts
the solutions in source/cplab/ (as the instructor's run of the source
notebooks would), releases it, fills the solutions into every released
notebook's answer cell as one student's submission, then autogrades,
generates feedback and exports, timing each command as a user runs it.
Prints the load average before and after, and the exported score. Not a
timed test: docs/instructors.md quotes the figures.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

KIT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(KIT))

from grader import manifest  # noqa: E402
from grader.nbgrader_cell import answer_id, answer_source  # noqa: E402


def step(name: str, cmd: list[str], cwd: Path) -> None:
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    print(f"{name:10} {time.monotonic() - start:6.1f} s   {' '.join(cmd[-3:])}", flush=True)
    if proc.returncode:
        sys.exit(f"{name} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def main() -> None:
    lab = manifest.load()
    print(f"load average before: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "course"
        step("build", [sys.executable, "-m", "grader", "nbgrader", str(root)], KIT)
        for ex in lab.exercises:
            shutil.copy(KIT / "solutions" / ex.file, root / "source" / "cplab" / ex.file)
        step("release", ["nbgrader", "generate_assignment", "cplab"], root)
        submitted = root / "submitted" / "student" / "cplab"
        submitted.mkdir(parents=True)
        for ex in lab.exercises:
            released = root / "release" / "cplab" / f"{Path(ex.file).stem}.ipynb"
            nb = nbformat.read(released, as_version=4)
            for cell in nb.cells:
                if cell.get("id") == answer_id(ex.id):
                    cell.source = answer_source(ex.file, (KIT / "solutions" / ex.file).read_text())
            nbformat.write(nb, submitted / released.name)
        step("autograde", ["nbgrader", "autograde", "cplab"], root)
        step("feedback", ["nbgrader", "generate_feedback", "cplab"], root)
        step("export", ["nbgrader", "export"], root)
        [row] = list(csv.DictReader(open(root / "grades.csv")))
        print(f"exported: {row['raw_score']} of {row['max_score']} (the 'say it out loud' answers wait for a human)")
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
