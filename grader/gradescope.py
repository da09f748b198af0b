"""The Gradescope autograder zip: setup.sh installs the kit, run_autograder grades the submission.

Gradescope extracts the zip to /autograder/source, runs setup.sh once when it
builds the image, and runs /autograder/run_autograder (a copy of ours) for
every submission, which lands in /autograder/submission; the score is read
from /autograder/results/results.json. The zip holds the grader package, the
full manifest (hidden cases included: students never see the image) and
pyproject.toml; never solutions/, which student code running in the image
could read.

run_autograder always leaves a results.json (see its docstring):
`RUN_AUTOGRADER` is its source, filled in with the maximum score, the time
limit and the grading budget when the zip is built.

[The time plan]
Gradescope kills a run that passes its limit and gives 0 for everything; a
hanging exercise must cost its own points only. So the run is bounded twice:
  1. inside the grader (grading.Grader), two hangs or two crashes in one
     exercise end it: its other cases are "not run";
  2. `grade --time-budget` gives each exercise a share of the budget, in
     proportion to its case deadlines, and does not start a case past its
     exercise's share.
The budget is the time limit less START_ALLOWANCE (starting the grader,
writing results) and the longest wall-clock guard of a case (the runner
stops any case within it: the last case started within the budget ends
before the limit). `Plan` computes it, and the build prints it.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import string
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from grader import grading, results_json, runner
from grader.manifest import KIT_ROOT, Manifest
from grader.manifest import load as load_manifest

#: seconds `python -m grader grade` may run before run_autograder stops it and reports why
DEFAULT_TIME_LIMIT = 540.0
TIME_LIMIT_HELP = ("seconds run_autograder lets grading take; the cases get this less the start-up allowance "
                   "and the longest wall-clock guard of a case, shared by exercise (the plan is printed). Keep it "
                   f"below the autograder timeout set on Gradescope (default: {DEFAULT_TIME_LIMIT:g})")
#: seconds to start `python -m grader grade` (torch, the rank server) and write results.json, outside the
#: cases' budget: 14 s on the kit's shared 2-core machine (docs/instructors.md), doubled
START_ALLOWANCE = 30.0
ROOT_VARIABLE = "CPLAB_AUTOGRADER_ROOT"
EXECUTABLE = 0o755
#: what `python -m grader grade` imports, pinned by setup.sh to the versions this kit was built with;
#: nbgrader, JupyterLab, pytest, rich and matplotlib are for the other fronts, not the image
GRADING_PACKAGES = ("torch", "numpy", "pyyaml")
DEFAULT_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_INDEX_HELP = ("the package index setup.sh installs torch from; '' for pip's default (PyPI, whose Linux "
                    f"wheels bundle CUDA: gigabytes the CPU-only ranks never use) (default: {DEFAULT_TORCH_INDEX})")

SETUP_SH = """\
#!/usr/bin/env bash
# cplab autograder image: Gradescope runs this once, as root, when it builds the image.
set -euo pipefail
# Where torch comes from: the one line to edit when this index is unreachable ('' for PyPI).
TORCH_INDEX="$torch_index"
ROOT="$${$root_variable:-/autograder}"
apt-get update
apt-get install -y --no-install-recommends python3 python3-venv python3-pip
python3 -m venv "$$ROOT/venv"
"$$ROOT/venv/bin/pip" install --upgrade pip
# Only what grading imports, at the versions the kit was built and tested with.
"$$ROOT/venv/bin/pip" install $${TORCH_INDEX:+--index-url "$$TORCH_INDEX"} $torch
"$$ROOT/venv/bin/pip" install $pins
# Editable and without dependencies: the grader reads lab_manifest.yaml beside its package, in $$ROOT/source.
"$$ROOT/venv/bin/pip" install --no-deps -e "$$ROOT/source"
"""

RUN_AUTOGRADER = '''\
#!/usr/bin/env python3
"""cplab on Gradescope: grade /autograder/submission and always leave /autograder/results/results.json.

1. A results.json that says "grading did not finish" is written first, so
   that even an autograder stopped from outside leaves one.
2. `python -m grader grade` runs on the submission (from the kit in
   source/, with the interpreter setup.sh installed), for at most TIME_LIMIT s.
3. When it finished, its results replace that file; when it crashed, ran
   out of time or could not start, the file gets one failed "autograder
   failed" test with the reason. The grader's own output (tracebacks) goes to
   stdout, which Gradescope shows to the course staff only.
Only the standard library is used, so this works even when the kit does not.
$root_variable replaces /autograder, to run this against a copy of the layout.
"""

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

MAX_SCORE = $max_score
TIME_LIMIT = $time_limit
BUDGET = $budget
ROOT = Path(os.environ.get("$root_variable", "/autograder"))
STAFF = "The course staff can see the details."


def write(path, data):
    """Write JSON so that a reader never sees half a file: temp file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def failed(reason, seconds):
    return {"score": 0.0, "execution_time": round(seconds, 2), "output": "The autograder failed: " + reason,
            "stdout_visibility": "hidden",
            "tests": [{"name": "autograder failed", "score": 0.0, "max_score": MAX_SCORE, "status": "failed",
                       "output": reason, "visibility": "visible"}]}


def why(code, log):
    """The reason a student sees, from the grader's exit code; its traceback stays in stdout."""
    if code == 2:  # the grader names what it could not use: the submission has no exercise files
        errors = [line[len("error: "):] for line in log.splitlines() if line.startswith("error: ")]
        if errors:
            return errors[-1]
    if code < 0:
        return "the grader was killed by %s before it wrote results. %s" % (signal.Signals(-code).name, STAFF)
    return "the grader stopped with exit code %d before it wrote results. %s" % (code, STAFF)


def grade(results):
    start = time.monotonic()
    graded = results.with_name("cplab-graded.json")
    if graded.exists():
        graded.unlink()
    command = [str(ROOT / "venv" / "bin" / "python"), "-m", "grader", "grade", str(ROOT / "submission"),
               "--results-json", str(graded), "--time-budget", str(BUDGET)]
    print("run_autograder: %s (stopped after %g s)" % (" ".join(command), TIME_LIMIT), flush=True)
    # Unbuffered: a grader killed mid-way still leaves every line it printed, which case it reached too.
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with tempfile.TemporaryFile("w+") as log:
        try:
            code = subprocess.run(command, cwd=str(ROOT / "source"), stdout=log, stderr=subprocess.STDOUT,
                                  timeout=TIME_LIMIT, env=env).returncode
        except subprocess.TimeoutExpired:
            code = None
        log.seek(0)
        text = log.read()
    seconds = time.monotonic() - start
    print(text if text.strip() else "(the grader printed nothing)", flush=True)
    print("run_autograder: the grader %s after %.1f s" % (
        "was stopped" if code is None else "was killed by %s" % signal.Signals(-code).name if code < 0
        else "exited with code %d" % code, seconds), flush=True)
    if code is None:
        return failed("grading did not finish within %g s. %s" % (TIME_LIMIT, STAFF), seconds)
    if code != 0:
        return failed(why(code, text), seconds)
    try:
        data = json.loads(graded.read_text())
    except (OSError, ValueError) as e:
        return failed("the grader's results could not be read (%s). %s" % (e, STAFF), seconds)
    graded.unlink()
    data["stdout_visibility"] = "hidden"
    return data


def main():
    results = ROOT / "results" / "results.json"
    write(results, failed("grading did not finish: the autograder was stopped. " + STAFF, 0.0))
    try:
        data = grade(results)
    except Exception as e:  # this script's own failure (the interpreter missing, a full disk): still a results.json
        print("run_autograder: %s: %s" % (type(e).__name__, e), flush=True)
        data = failed("the autograder could not run the grader (%s). %s" % (type(e).__name__, STAFF), 0.0)
    write(results, data)


if __name__ == "__main__":
    main()
'''

README = """\
# cplab autograder for Gradescope

Built by `python -m grader gradescope`. Upload this zip as the autograder of a
programming assignment. Students upload their exercise files (`ex*.py`, at the
top level, under `exercises/`, or one folder down, as a zipped release
folder has them); `run_autograder` grades them on every case of
lab_manifest.yaml, public and hidden, and always writes results.json.

$plan
"""


@dataclass(frozen=True)
class Plan:
    """How a run spends Gradescope's time: the limit, what is kept outside the cases, and each exercise's share."""

    time_limit: float
    budget: float                 # seconds for the cases: grade --time-budget
    guard: float                  # the longest wall-clock guard of one case: the last one may run that long
    deadlines: dict[str, float]   # grading.deadlines: by when each exercise's cases must have started
    cases: dict[str, int]

    @classmethod
    def of(cls, manifest: Manifest, time_limit: float) -> "Plan":
        cases = manifest.cases
        guard = max(max(runner.WALL_MIN, runner.WALL_FACTOR * c.timeout) for c in cases)
        budget = time_limit - START_ALLOWANCE - guard
        if budget <= 0:
            raise ValueError(f"a time limit of {time_limit:g} s leaves no time for the cases: it must exceed "
                             f"{START_ALLOWANCE:g} s to start the grader plus {guard:g} s, the longest "
                             f"wall-clock guard of a case")
        counts: dict[str, int] = {}
        for c in cases:
            counts[c.exercise] = counts.get(c.exercise, 0) + 1
        return cls(time_limit, budget, guard, grading.deadlines(cases, budget), counts)

    def __str__(self) -> str:
        lines = [f"Time plan: run_autograder stops grading after {self.time_limit:g} s (keep Gradescope's "
                 f"autograder timeout above it).",
                 f"  {START_ALLOWANCE:g} s to start the grader and write results.json;",
                 f"  {self.guard:g} s for the last case to reach its wall-clock guard;",
                 f"  {self.budget:g} s for the cases (grade --time-budget), shared by the exercises in "
                 f"proportion to their case deadlines:"]
        previous = 0.0
        for ex, until in self.deadlines.items():
            lines.append(f"    {ex}  {self.cases[ex]:3d} case(s)  share {until - previous:5.0f} s  "
                         f"cases start before {until:5.0f} s")
            previous = until
        lines.append(f"  and after {grading.STRIKES} hangs or {grading.STRIKES} crashes in one exercise, its "
                     f"other cases are not run. A case not run scores 0 and says why; the others keep "
                     f"their points.")
        return "\n".join(lines)


def build(out_zip: str | Path, manifest: Manifest | None = None, kit: Path = KIT_ROOT,
          time_limit: float = DEFAULT_TIME_LIMIT, torch_index: str = DEFAULT_TORCH_INDEX) -> Path:
    """Write the autograder zip to `out_zip` (atomically); its path."""
    manifest = manifest or load_manifest()
    plan = Plan.of(manifest, time_limit)
    out = Path(out_zip).resolve()
    files: dict[str, tuple[bytes, int]] = {
        "setup.sh": (setup_sh(torch_index).encode(), EXECUTABLE),
        "run_autograder": (run_autograder(manifest, plan).encode(), EXECUTABLE),
        "lab_manifest.yaml": (manifest.path.read_bytes(), 0o644),
        "pyproject.toml": ((kit / "pyproject.toml").read_bytes(), 0o644),
        "README.md": (string.Template(README).substitute(plan=plan).encode(), 0o644),
    }
    for path in sorted((kit / "grader").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files[path.relative_to(kit).as_posix()] = (path.read_bytes(), 0o644)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, (data, mode) in files.items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (0o100000 | mode) << 16  # a regular file with these permission bits
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(buf.getvalue())
    os.chmod(tmp, results_json.file_mode())
    os.replace(tmp, out)
    return out


def run_autograder(manifest: Manifest, plan: Plan) -> str:
    """The run_autograder script, with the maximum score (of the failed test), the time limit and budget filled in."""
    best = sum(c.points for c in manifest.cases if not c.bonus)  # bonus points add to no maximum
    return string.Template(RUN_AUTOGRADER).substitute(max_score=repr(float(best)), budget=repr(float(plan.budget)),
                                                      time_limit=repr(float(plan.time_limit)),
                                                      root_variable=ROOT_VARIABLE)


def setup_sh(torch_index: str = DEFAULT_TORCH_INDEX) -> str:
    """setup.sh, installing GRADING_PACKAGES at the versions installed here, torch from `torch_index`."""
    torch, *others = (f'"{name}=={_tested(name)}"' for name in GRADING_PACKAGES)
    return string.Template(SETUP_SH).substitute(torch_index=torch_index, torch=torch, pins=" ".join(others),
                                                root_variable=ROOT_VARIABLE)


def _tested(package: str) -> str:
    """The installed version, without a local label: torch's '2.13.0+cpu' is '2.13.0' on every index."""
    return importlib.metadata.version(package).split("+")[0]
