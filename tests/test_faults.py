"""Planted faults in exercise 1: each gets its own failure kind and message, in bounded time, leaving no process."""

from __future__ import annotations

import dataclasses
import os
import time

import pytest

from conftest import EX1_SOLUTION as SOLUTION, KIT, descendants, make_submission, planted
from grader import sockets
from grader.grading import Grader, grade
from grader.verdict import Kind

TIMEOUT = 6.0


FAULTS = {
    "wrong_value": (planted("gather_sequence", "return torch.cat([x_local] * dist.get_world_size(group), dim=dim)"),
                    "gather_zigzag", Kind.MISMATCH, "global token"),
    "exception": (planted("gather_sequence", "return [1, 2][dist.get_rank() + 5]"),
                  "gather_zigzag", Kind.EXCEPTION, "IndexError"),
    "hang_in_collective": (planted("gather_sequence", "if dist.get_rank() == 0:\n    return x_local"),
                           "gather_zigzag", Kind.TIMEOUT, "waits in all_gather()"),
    "exit_0_in_one_rank": (planted("gather_sequence", "import os\nif dist.get_rank() == 1:\n    os._exit(0)"),
                           "gather_zigzag", Kind.EARLY_EXIT, "rank 1 ended (exit code 0)"),
    "segfault": (planted("gather_sequence", "import ctypes\nif dist.get_rank() == 1:\n    ctypes.string_at(0)"),
                 "gather_zigzag", Kind.CRASHED, "SIGSEGV"),
    "wrong_shape": (planted("sequence_shard", "return x"), "shard_zigzag", Kind.WRONG_SHAPE, "has shape (3, 16, 5)"),
    "busy_loop": (planted("gather_sequence", "while True:\n    pass"), "gather_zigzag", Kind.TIMEOUT,
                  "made no torch.distributed call"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_planted_fault(fault, tmp_path, lab):
    source, case_name, kind, text = FAULTS[fault]
    sub = make_submission(tmp_path, {"ex1_sequence_shard.py": source})
    case = next(c for c in lab.cases if c.exercise == "ex1" and c.name == case_name)
    case = dataclasses.replace(case, timeout=TIMEOUT)
    start = time.monotonic()
    [result] = grade(sub, lab, [case])
    elapsed = time.monotonic() - start
    assert result.verdict.kind is kind, result.verdict.message
    assert text in result.verdict.message
    assert result.score == 0
    # pool start-up (importing torch in every rank) plus the case's own deadline
    assert elapsed < TIMEOUT + 45, elapsed
    assert descendants() == []


def test_hang_names_every_rank(tmp_path, lab):
    sub = make_submission(tmp_path, {"ex1_sequence_shard.py": FAULTS["hang_in_collective"][0]})
    case = next(c for c in lab.cases if c.exercise == "ex1" and c.name == "gather_zigzag")
    [result] = grade(sub, lab, [dataclasses.replace(case, timeout=TIMEOUT)])
    message = result.verdict.message
    assert "rank 0 had returned its result" in message
    for rank in (1, 2, 3):
        assert f"rank {rank} waits in all_gather(), call #1" in message
    assert "same collective calls" in result.verdict.hint


def test_syntax_error_fails_only_that_exercise(tmp_path, lab):
    sub = make_submission(tmp_path, {"ex1_sequence_shard.py": SOLUTION.replace("def gather_sequence(", "def gather_sequence(:", 1)})
    ex1 = lab.select(["ex1"], hidden=False)
    others = [c for c in lab.cases if c.exercise == "ex2" and not c.hidden][:2]
    results = grade(sub, lab, ex1 + others)
    for r in results[:len(ex1)]:
        assert r.verdict.kind is Kind.SYNTAX_ERROR
        assert "ex1_sequence_shard.py line" in r.verdict.message
    for r in results[len(ex1):]:
        assert r.verdict.passed, r.verdict.message
    assert descendants() == []


def test_missing_function_and_file(tmp_path, lab):
    source = SOLUTION.replace("def sequence_unshard(", "def sequence_unshard_renamed(", 1)
    sub = make_submission(tmp_path, {"ex1_sequence_shard.py": source})
    unshard = [c for c in lab.cases if c.exercise == "ex1" and c.check == "unshard"][:1]
    [result] = grade(sub, lab, unshard)
    assert result.verdict.kind is Kind.MISSING
    assert "defines no function sequence_unshard" in result.verdict.message
    (sub / "ex1_sequence_shard.py").unlink()
    [result] = grade(sub, lab, unshard)
    assert result.verdict.kind is Kind.MISSING
    assert "ex1_sequence_shard.py is not in the submission" in result.verdict.message


def test_rank_cannot_import_kit_solutions(tmp_path, lab):
    source = planted("shard_positions", "import solutions.ex1_sequence_shard")
    sub = make_submission(tmp_path, {"ex1_sequence_shard.py": source})
    case = next(c for c in lab.cases if c.exercise == "ex1" and c.check == "positions")
    [result] = grade(sub, lab, [case])
    assert result.verdict.kind is Kind.EXCEPTION
    assert "No module named 'solutions'" in result.verdict.message


def test_ranks_die_with_a_killed_grader(tmp_path):
    """SIGKILL the grader mid-case: its ranks (PR_SET_PDEATHSIG) and what they started must go too."""
    import os
    import signal
    import subprocess
    import sys

    sub = make_submission(tmp_path, {"ex1_sequence_shard.py": FAULTS["busy_loop"][0]})
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    grader = subprocess.Popen([sys.executable, "-m", "grader", "grade", str(sub), "--exercises", "ex1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "TMPDIR": str(tmp)})
    try:
        deadline = time.monotonic() + 60
        ranks: list[int] = []
        while time.monotonic() < deadline and len(ranks) < 2:
            time.sleep(0.5)
            ranks = [p for p in descendants(grader.pid) if p != grader.pid]
        assert len(ranks) >= 2, "the grader never started its ranks"
        os.kill(grader.pid, signal.SIGKILL)
        grader.wait(timeout=10)
        deadline = time.monotonic() + 10
        alive = ranks
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [p for p in ranks if os.path.exists(f"/proc/{p}") and _state(p) != "Z"]
        assert not alive, f"ranks outlived their grader: {alive}"
        # the grader's own folder of cases cannot go with a SIGKILL; nothing else may stay (the rank server
        # keeps no file)
        assert len(list(tmp.iterdir())) <= 1, sorted(p.name for p in tmp.iterdir())
    finally:
        if grader.poll() is None:
            grader.kill()


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


# A passing case that leaves the rank's torch.distributed patched so that the next case's group never forms:
# the rank stalls in its setup, before any of that case's own code runs. (A thread that grabs the GIL once
# the next job arrives did the same, but only when the machine let it run within the setup's 30 ms.)
STALLS_NEXT_SETUP = planted("shard_positions", """\
import time
import torch.distributed
torch.distributed.init_process_group = lambda *args, **kwargs: time.sleep(600)""")


def test_ranks_that_stall_before_the_call_are_replaced_not_blamed(tmp_path, lab, monkeypatch):
    """No student code of a case runs before its call, so a stall there is retried on fresh ranks."""
    from grader import runner

    monkeypatch.setattr(runner, "SETUP_TIMEOUT", 3.0)
    sub = make_submission(tmp_path, {"ex1_sequence_shard.py": STALLS_NEXT_SETUP})
    cases = [c for c in lab.cases if c.exercise == "ex1" and c.check == "positions"][:2]
    assert len({c.world_size for c in cases}) == 1, "two cases on one pool"
    first, second = grade(sub, lab, cases)
    assert first.verdict.passed and "stalled" not in first.output, first.output
    assert second.verdict.passed, second.verdict.message
    assert "the ranks stalled before the call for 3 s" in second.output


def test_each_case_leaves_its_group_before_the_next_window(lab):
    """Ranks tear a case's group down in a thread once every rank has answered: by the next case's
    window its threads and sockets are gone (none pile up over cases), and what the kernel counts in
    a window is that case's traffic alone: each rank receives the same bytes case after case (gloo's
    all-gather ring may run either way round, so from which peer may change)."""
    def held(pool) -> list[tuple[int, int]]:
        return [(len(os.listdir(f"/proc/{pid}/task")), len(sockets.socket_inodes(pid))) for pid in pool.pids.values()]

    comm = next(c for c in lab.cases if c.exercise == "ex3" and c.name == "forward_zigzag")
    with Grader(KIT / "solutions", lab) as grader:
        first = grader.run(comm)
        before = held(grader.runner.pool(comm.world_size))
        received = []
        for _ in range(8):
            result = grader.run(comm)
            assert result.verdict.passed, result.verdict.message
            received.append([sum(e["received"].values()) for e in result.evidence])
        # A teardown may still run as the last answers come in (its thread, gloo's, P-1 closing sockets),
        # and the first snapshot may have caught one too: what must not happen is a pile that stays.
        pool, deadline = grader.runner.pool(comm.world_size), time.monotonic() + 10
        while True:
            after = held(pool)
            if all(t1 <= t0 + 3 and s1 <= s0 + comm.world_size - 1 for (t0, s0), (t1, s1) in zip(before, after)):
                break
            assert time.monotonic() < deadline, (before, after)
            time.sleep(0.1)
    assert first.verdict.passed, first.verdict.message
    assert all(r == received[0] for r in received), received
