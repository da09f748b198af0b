"""Verdicts that do not depend on how busy the machine is: grading under CPU burners on every core.

A correct submission keeps every point while other work takes the CPUs, and
the planted hang, endless loop and deadlock are still named, each within its
budget plus a few seconds, with nothing left running.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

import pytest

from conftest import KIT, descendants, make_submission, planted
from grader.grading import Grader, grade
from grader.verdict import Kind

BURN_SECONDS = 600  # each burner stops by itself after this, whatever happens to the test
BUDGET = 4.0

BURNER = f"import time\nend = time.monotonic() + {BURN_SECONDS}\nwhile time.monotonic() < end:\n    pass\n"


@pytest.fixture
def burners():
    """One busy process per core (and one more), for the length of the test."""
    procs = [subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range((os.cpu_count() or 2) + 1)]
    time.sleep(0.5)
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_solutions_keep_full_marks_under_load(burners, lab):
    results = grade(KIT / "solutions", lab, lab.cases)
    failed = [f"{r.case.title}: {r.verdict.kind.value}: {r.verdict.message[:200]}"
              for r in results if not r.verdict.passed]
    assert not failed, "\n".join(failed)
    assert set(descendants()) <= {p.pid for p in burners}


FAULTS = {
    "endless_loop": (planted("gather_sequence", "while True:\n    pass"), "made no torch.distributed call"),
    "hang": (planted("gather_sequence", "if dist.get_rank() == 0:\n    return x_local"),
             "waits in all_gather()"),
    "deadlock": (planted("gather_sequence", "buf = x_local.clone()\n"
                                            "dist.recv(buf, src=(dist.get_rank() + 1) % dist.get_world_size())"),
                 "waits in recv(src=1)"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_faults_are_named_in_time_under_load(fault, burners, tmp_path, lab):
    source, text = FAULTS[fault]
    sub = make_submission(tmp_path, {"ex1_sequence_shard.py": source})
    case = next(c for c in lab.cases if c.exercise == "ex1" and c.name == "gather_zigzag")
    case = dataclasses.replace(case, timeout=BUDGET)
    with Grader(sub, lab) as grader:
        grader.runner.pool(case.world_size).wait_ready()
        start = time.monotonic()
        result = grader.run(case)
        elapsed = time.monotonic() - start
    assert result.verdict.kind is Kind.TIMEOUT, result.verdict.message
    assert text in result.verdict.message
    # A loop's time waiting for a CPU counts, so the burners do not stretch its budget.
    assert elapsed < BUDGET + 5, elapsed
    assert set(descendants()) <= {p.pid for p in burners}
