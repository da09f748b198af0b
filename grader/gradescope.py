"""The Gradescope autograder zip: setup.sh installs the kit, run_autograder grades the submission.

Gradescope extracts the zip to /autograder/source, runs setup.sh once when it
builds the image, and runs /autograder/run_autograder (a copy of ours) for
every submission, which lands in /autograder/submission; the score is read
from /autograder/results/results.json. The zip holds the grader package, the
full manifest (hidden cases included: students never see the image) and
pyproject.toml; never solutions/, which student code running in the image
could read.

run_autograder always leaves a results.json (see its docstring):
`RUN_AUTOGRADER` is its source, filled in with the total points and the time
limit when the zip is built.
"""

from __future__ import annotations

import io
import os
import re
import string
import tempfile
import zipfile
from pathlib import Path

from grader.manifest import KIT_ROOT, Manifest
from grader.manifest import load as load_manifest

#: seconds `python -m grader grade` may run before run_autograder stops it and reports why
DEFAULT_TIME_LIMIT = 540.0
TIME_LIMIT_HELP = ("seconds grading may take before run_autograder stops it and gives score 0 with the reason; "
                   "keep it below the autograder timeout set on Gradescope, so that results.json says why "
                   f"(default: {DEFAULT_TIME_LIMIT:g})")
ROOT_VARIABLE = "CPLAB_AUTOGRADER_ROOT"
EXECUTABLE = 0o755

SETUP_SH = """\
#!/usr/bin/env bash
# cplab autograder image: Gradescope runs this once, as root, when it builds the image.
set -euo pipefail
ROOT="$${$root_variable:-/autograder}"
apt-get update
apt-get install -y --no-install-recommends python3 python3-venv python3-pip
python3 -m venv "$$ROOT/venv"
"$$ROOT/venv/bin/pip" install --upgrade pip
# The CPU build of torch: ranks run on gloo, and the CUDA wheels are gigabytes the image does not need.
"$$ROOT/venv/bin/pip" install "$torch" --index-url https://download.pytorch.org/whl/cpu
# Editable: the grader reads lab_manifest.yaml beside its package, in $$ROOT/source.
"$$ROOT/venv/bin/pip" install -e "$$ROOT/source"
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
               "--results-json", str(graded)]
    with tempfile.TemporaryFile("w+") as log:
        try:
            code = subprocess.run(command, cwd=str(ROOT / "source"), stdout=log, stderr=subprocess.STDOUT,
                                  timeout=TIME_LIMIT).returncode
        except subprocess.TimeoutExpired:
            code = None
        log.seek(0)
        text = log.read()
    print(text, flush=True)
    seconds = time.monotonic() - start
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
top level or under `exercises/`); `run_autograder` grades them on every case
of lab_manifest.yaml, public and hidden, and always writes results.json.
"""


def build(out_zip: str | Path, manifest: Manifest | None = None, kit: Path = KIT_ROOT,
          time_limit: float = DEFAULT_TIME_LIMIT) -> Path:
    """Write the autograder zip to `out_zip` (atomically); its path."""
    manifest = manifest or load_manifest()
    out = Path(out_zip).resolve()
    files: dict[str, tuple[bytes, int]] = {
        "setup.sh": (setup_sh(kit).encode(), EXECUTABLE),
        "run_autograder": (run_autograder(manifest, time_limit).encode(), EXECUTABLE),
        "lab_manifest.yaml": (manifest.path.read_bytes(), 0o644),
        "pyproject.toml": ((kit / "pyproject.toml").read_bytes(), 0o644),
        "README.md": (README.encode(), 0o644),
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
    os.replace(tmp, out)
    return out


def run_autograder(manifest: Manifest, time_limit: float) -> str:
    """The run_autograder script, with the total points (of the failed test) and the time limit filled in."""
    total = sum(c.points for c in manifest.cases)
    return string.Template(RUN_AUTOGRADER).substitute(max_score=repr(float(total)),
                                                      time_limit=repr(float(time_limit)), root_variable=ROOT_VARIABLE)


def setup_sh(kit: Path = KIT_ROOT) -> str:
    """setup.sh, installing torch within the bounds pyproject.toml sets."""
    spec = re.search(r'"(torch\s*[^"]*)"', (kit / "pyproject.toml").read_text())
    return string.Template(SETUP_SH).substitute(torch=spec.group(1) if spec else "torch",
                                                root_variable=ROOT_VARIABLE)
