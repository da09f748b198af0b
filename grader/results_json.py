"""Results in Gradescope's results.json format, written atomically.

Fields used: score, execution_time, output, tests[] with name, score,
max_score, status, output, visibility. A hidden case is named by its number
("ex1 - hidden case 3", Manifest.label) and shows only whether it passed and
its failure kind; its name and message (inputs, sizes, values) stay out of
what students see, and its visibility is "after_published". The staff see
its whole report where students never look: `grade`'s console (on
Gradescope, the hidden stdout) and batch's logs/<student>.log.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from grader.grading import CaseResult, totals

OUTPUT_LIMIT = 8000


def test_entry(result: CaseResult) -> dict:
    case, v = result.case, result.verdict
    if v.skipped:
        output = f"Skipped: {v.message}"
    elif v.passed:
        # a note (what is recommended but not graded) names sizes and figures: public cases only
        output = "\n".join(p for p in (v.message, f"Hint: {v.hint}" if v.hint else "") if p) \
            if v.message and not case.hidden else "Passed."
    elif result.bonus_not_attempted:
        output = f"Bonus, not attempted: {v.message}"
    elif case.hidden:
        output = f"Failed ({v.kind.value}). This is a hidden case: its details are not shown."
    else:
        output = "\n".join(p for p in (f"Failed ({v.kind.value}).", v.message, v.detail,
                                       f"Hint: {v.hint}" if v.hint else "") if p)
    return {
        "name": result.name,
        "score": result.score,
        "max_score": result.max_score,
        "status": "passed" if v.passed else "failed",
        "output": output[:OUTPUT_LIMIT],
        "visibility": "after_published" if case.hidden else "visible",
    }


def build(results: list[CaseResult], seconds: float, found: str = "") -> dict:
    """results.json's data; `found` (which exercise files were graded, and where) opens its output."""
    per = totals(results)
    lines = ([found] if found else []) + [f"{ex}: {s:g}/{m:g} points, {p}/{n} cases" for ex, (s, m, p, n) in per.items()]
    return {
        "score": sum(r.score for r in results),
        "execution_time": round(seconds, 2),
        "output": "\n".join(lines),
        "tests": [test_entry(r) for r in results],
    }


def write(path: str | Path, data: dict) -> None:
    """Write JSON so that a reader never sees half a file: temp file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fchmod(f.fileno(), file_mode())
        os.fsync(f.fileno())
    os.replace(tmp, path)


def file_mode() -> int:
    """The mode open() gives a new file under this process's umask: mkstemp's 0600 would keep the results
    from the other TAs."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask
