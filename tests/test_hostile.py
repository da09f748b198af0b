"""Hostile submissions: each attack of a student who has read the grader's source, and what stops it.

Every attack is planted in ex1's solution (gather_sequence, a collective on
four ranks). Each must end with its case failed under a named kind, or with
no effect at all; the rest of the submission graded normally; no process of
the sandbox uid alive afterwards; nothing written outside the case; the
results the grader's own. These need the sandbox, which needs root (CI runs
as root); without root they are skipped with that reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import KIT, descendants, make_submission, marked, planted, still_marked
from grader.grading import Grader
from grader.verdict import Kind

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root; grading as a user has none")

# Covered, or (in a checkout others may not enter, such as a mktemp -d clone) not there at all.
HIDDEN = "PermissionError|FileNotFoundError"
OUTSIDE = Path("/tmp") / f"cplab-hostile-{uuid.uuid4().hex}"

# name: (code run first in gather_sequence, kind of the failed case or None when the case may pass, text)
ATTACKS = {
    "read_solutions": (f"open({str(KIT / 'solutions' / 'ex1_sequence_shard.py')!r}).read()",
                       Kind.EXCEPTION, HIDDEN),
    "read_manifest": (f"open({str(KIT / 'lab_manifest.yaml')!r}).read()", Kind.EXCEPTION, HIDDEN),
    "read_reference": (f"open({str(KIT / 'grader' / 'reference.py')!r}).read()", Kind.EXCEPTION, HIDDEN),
    "list_tests": (f"import os\nos.listdir({str(KIT / 'tests')!r})", Kind.EXCEPTION, HIDDEN),
    "write_grader": (f"open({str(KIT / 'grader' / 'grading.py')!r}, 'a').write('# forged')",
                     Kind.EXCEPTION, "PermissionError"),
    "write_kit": (f"open({str(KIT / 'forged.py')!r}, 'w').write('x')", Kind.EXCEPTION, "PermissionError"),
    "write_tmp": (f"open({str(OUTSIDE)!r}, 'w').write('x')", None, ""),
    "network": ("import socket\nnames = [n for _, n in socket.if_nameindex()]\n"
                "if names != ['lo']:\n    raise RuntimeError(f'interfaces: {names}')", None, ""),
    "memory": ("import torch\ntorch.ones(8 << 30, dtype=torch.uint8)", Kind.LIMIT, "GiB memory limit"),
    "stdout_flood": ("import sys\nsys.stdout.write('x' * (100 << 20))\nsys.stdout.flush()",
                     Kind.LIMIT, "MiB file-size limit"),
    "open_files": ("fs = [open('/dev/null') for _ in range(20000)]", Kind.LIMIT, "open-files limit"),
    "threads": ("import threading, time\nfor _ in range(2000):\n"
                "    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()",
                Kind.LIMIT, "processes limit"),
    "huge_answer": ("return torch.zeros(10 << 20, dtype=torch.float64)", Kind.LIMIT, "MiB"),
    "kill_parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", Kind.EXCEPTION, "PermissionError"),
    "daemon": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
               f"        time.sleep(3)\n        open({str(OUTSIDE)!r}, 'w').write('late')\n"
               "    os._exit(0)\nos.wait()", None, ""),
}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _uid_processes(uid: int) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{entry}").st_uid == uid:
                found.append(int(entry))
        except OSError:
            pass
    return found


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_is_contained(attack, tmp_path, lab):
    code, kind, text = ATTACKS[attack]
    sub = make_submission(tmp_path, {"ex1_sequence_shard.py": planted("gather_sequence", code)})
    target = next(c for c in lab.cases if c.exercise == "ex1" and c.name == "gather_zigzag")
    others = [c for c in lab.cases if c.exercise == "ex2" and not c.hidden][:2]
    grading_py = _digest(KIT / "grader" / "grading.py")
    with Grader(sub, lab) as grader:
        uid = grader.runner.sandbox.uid
        assert grader.runner.sandbox.active, grader.runner.sandbox.reason
        result = grader.run(dataclasses.replace(target, timeout=10.0))
        rest = [grader.run(c) for c in others]
    if kind is None:
        assert result.verdict.passed, result.verdict.message
    else:
        assert result.verdict.kind is kind, result.verdict.message
        assert any(t in result.verdict.message for t in text.split("|")), result.verdict.message
    assert all(r.verdict.passed for r in rest), [r.verdict.message for r in rest]
    time.sleep(3.5 if attack == "daemon" else 0)
    assert _uid_processes(uid) == []
    assert descendants() == []
    assert not OUTSIDE.exists()
    assert not (KIT / "forged.py").exists()
    assert _digest(KIT / "grader" / "grading.py") == grading_py


def test_daemon_dies_with_a_killed_grader(tmp_path):
    """SIGKILL the grader while a detached daemon of the submission sleeps: the daemon goes too."""
    code = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        time.sleep(600)\n    os._exit(0)\nos.wait()\nwhile True:\n    pass")
    sub = make_submission(tmp_path, {"ex1_sequence_shard.py": planted("gather_sequence", code)})
    mark = uuid.uuid4().hex
    grader = subprocess.Popen([sys.executable, "-m", "grader", "grade", str(sub), "--exercises", "ex1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "CPLAB_TEST_MARK": mark})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _detached(marked(mark)):
            time.sleep(0.2)
        assert _detached(marked(mark)), "the daemon never started"
        os.kill(grader.pid, signal.SIGKILL)
        grader.wait(timeout=10)
        assert still_marked(mark, 10.0) == []
    finally:
        if grader.poll() is None:
            grader.kill()


def _stat(pid: int) -> tuple[int, int] | None:
    """(session id, owner uid) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[3]), os.stat(f"/proc/{pid}").st_uid
    except (OSError, ValueError, IndexError):
        return None


def _detached(pids: list[int]) -> list[int]:
    """Processes of the sandbox uid in a session of their own (setsid): the daemon, not a rank, whose
    session is its pool's init's (root)."""
    stats = {p: s for p in pids if (s := _stat(p))}
    root_sessions = {sid for sid, uid in stats.values() if uid == 0}
    return [p for p, (sid, uid) in stats.items() if uid != 0 and sid not in root_sessions]


def test_start_up_check_names_what_the_sandbox_uid_could_reach(tmp_path):
    """The audit each rank runs as the sandbox uid before it says ready; here, as root, it must see all."""
    from grader import sandbox

    secret = tmp_path / "answers.txt"
    secret.write_text("42")
    settings = sandbox.Sandbox(True, uid=0, hide=[str(secret)]).to_json()
    exposed = sandbox.audit(settings)
    assert f"can read {secret}" in exposed
    assert any(e.startswith("can write") for e in exposed)
