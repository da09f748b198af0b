"""grading.grade's lanes: exercises graded side by side, results in the cases' order, CPU-judged cases alone
(among the lanes of one grader and the machine's other graders alike)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import KIT
from grader import grading
from grader.manifest import load


@pytest.fixture(autouse=True)
def private_turns(tmp_path, monkeypatch):
    """Turn lock files of this test's own: the machine's are taken by whatever else grades meanwhile
    (the other xdist worker), which would make a wait here depend on it."""
    monkeypatch.setattr(grading, "TURN_GATE", tmp_path / "gate.lock")
    monkeypatch.setattr(grading, "TURN_LOCK", tmp_path / "turns.lock")


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
    """The lanes of one grader take their turns like separate graders: each turn opens its own lock.
    Each thread starts once the one before it is in or queued, so the order does not depend on how busy
    the machine is."""
    spans: list[tuple[str, float, float]] = []
    inside = threading.Event()

    def gate_held() -> bool:
        """A case that must run alone holds the gate while it waits for the others to leave."""
        fd = os.open(grading.TURN_GATE, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def until(condition) -> None:
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline, "a turn never came"
            time.sleep(0.005)

    def case(name: str, alone: bool) -> None:
        with grading.machine_turn(alone=alone):
            start = time.monotonic()
            if name == "shared-1":
                inside.set()
                until(gate_held)  # still in while the alone case queues
            time.sleep(0.2)
            spans.append((name, start, time.monotonic()))

    threads = {name: threading.Thread(target=case, args=(name, name == "alone"))
               for name in ("shared-1", "alone", "shared-2")}
    threads["shared-1"].start()
    until(inside.is_set)
    threads["alone"].start()
    until(gate_held)
    threads["shared-2"].start()
    for t in threads.values():
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
    other = _holder("LOCK_SH", 5.0)
    start = time.monotonic()
    with grading.machine_turn(alone=False):  # shared turns do not wait for each other
        assert time.monotonic() - start < 2.5
    other.kill()
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
