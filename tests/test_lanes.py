"""grading.grade's lanes: exercises graded side by side, results in the cases' order, CPU-judged cases alone
(among the lanes of one grader and the machine's other graders alike)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from conftest import KIT
from grader import grading
from grader.manifest import load


def test_results_come_in_the_order_of_the_cases_from_both_lanes():
    lab = load()
    cases = [c for c in lab.cases if c.exercise in ("ex1", "ex2") and not c.hidden][:4]
    cases += [c for c in lab.cases if c.exercise == "ex2" and not c.hidden][:3]
    lanes: dict[str, str] = {}
    run = grading.Grader.run

    def recorded(grader, case):
        lanes[case.exercise] = threading.current_thread().name
        return run(grader, case)

    seen = []
    grading.Grader.run = recorded
    try:
        results = grading.grade(KIT / "solutions", lab, cases, on_result=seen.append, lanes=2)
    finally:
        grading.Grader.run = run
    assert [r.case for r in results] == [r.case for r in seen] == cases
    assert all(r.verdict.passed for r in results), [r.verdict.message for r in results]
    assert len(set(lanes.values())) == 2, lanes  # ex1 and ex2 each had a lane of its own


def test_a_case_that_must_run_alone_overlaps_no_other():
    """The lanes of one grader take their turns like separate graders: each turn opens its own lock."""
    spans: list[tuple[str, float, float]] = []

    def case(name: str, alone: bool, delay: float) -> None:
        time.sleep(delay)
        with grading.machine_turn(alone=alone):
            start = time.monotonic()
            time.sleep(0.2)
            spans.append((name, start, time.monotonic()))

    threads = [threading.Thread(target=case, args=("shared-1", False, 0.0)),
               threading.Thread(target=case, args=("alone", True, 0.05)),
               threading.Thread(target=case, args=("shared-2", False, 0.1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    alone = next(s for s in spans if s[0] == "alone")
    for name, start, end in spans:
        if name != "alone":
            assert end <= alone[1] or start >= alone[2], spans
    # the case that came after the alone one waited for it, not the other way round
    assert [s[0] for s in sorted(spans, key=lambda s: s[1])] == ["shared-1", "alone", "shared-2"]


HOLD = """import fcntl, os, sys, time
fd = os.open({path!r}, os.O_RDONLY | os.O_CREAT, 0o444)
fcntl.flock(fd, fcntl.{lock})
print("held", flush=True)
time.sleep({seconds})
"""


def _holder(lock: str, seconds: float) -> subprocess.Popen:
    """Another grader's process holding the machine's turn lock (`lock`: LOCK_SH or LOCK_EX)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(path=str(grading.TURN_LOCK), lock=lock,
                                                               seconds=seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_cpu_judged_case_waits_for_other_graders_cases():
    holder = _holder("LOCK_SH", 1.0)
    start = time.monotonic()
    with grading.machine_turn(alone=True):
        waited = time.monotonic() - start
    holder.wait()
    assert waited >= 0.8, waited
    start = time.monotonic()
    other = _holder("LOCK_SH", 1.0)
    with grading.machine_turn(alone=False):  # shared turns do not wait for each other
        assert time.monotonic() - start < 0.8
    other.wait()


def test_a_turn_held_forever_delays_a_case_by_turn_wait_only(monkeypatch):
    monkeypatch.setattr(grading, "TURN_WAIT", 0.5)
    holder = _holder("LOCK_EX", 30.0)
    try:
        start = time.monotonic()
        with grading.machine_turn(alone=False):
            waited = time.monotonic() - start
        assert 0.5 <= waited < 2.0, waited
    finally:
        holder.kill()
        holder.wait()
