"""Hostile submissions: each attack of a student who has read the grader's source, and what stops it.

Every attack is planted in ex1's solution (gather_sequence, a collective on
four ranks). Each must end with its case failed under a named kind, or with
no effect at all; the rest of the submission graded normally; no process of
the sandbox uid alive afterwards; nothing written outside the case; the
results the grader's own. The same attacks then go, as one submission,
through `batch` (before two other students) and through the Gradescope
bundle's run_autograder. These need the sandbox, which needs root (CI runs
as root); without root they are skipped with that reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from conftest import EX1_SOLUTION, KIT, descendants, ex1_manifest, make_submission, marked, planted, still_marked
from grader.cli import main
from grader.grading import Grader
from grader.verdict import Kind

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root; grading as a user has none")

# Covered, or (in a checkout others may not enter, such as a mktemp -d clone) not there at all.
HIDDEN = "PermissionError|FileNotFoundError"
OUTSIDE = Path("/tmp") / f"cplab-hostile-{uuid.uuid4().hex}"


def attacks(kit: Path) -> dict[str, tuple[str, Kind | None, str]]:
    """name: (code run first in gather_sequence, kind of the failed case or None when the case may pass,
    text), aimed at the kit in `kit`. The code runs in ex1's module: `torch` and `dist` are its own."""
    return {
        "read_solutions": (f"open({str(kit / 'solutions' / 'ex1_sequence_shard.py')!r}).read()",
                           Kind.EXCEPTION, HIDDEN),
        "read_manifest": (f"open({str(kit / 'lab_manifest.yaml')!r}).read()", Kind.EXCEPTION, HIDDEN),
        "read_reference": (f"open({str(kit / 'grader' / 'reference.py')!r}).read()", Kind.EXCEPTION, HIDDEN),
        "list_tests": (f"import os\nos.listdir({str(kit / 'tests')!r})", Kind.EXCEPTION, HIDDEN),
        "import_reference": ("import grader.reference", Kind.EXCEPTION, "No module named 'grader.reference'"),
        # every rank is a fork of a rank server, which may itself be a fork of a grading process: none of
        # that process's own modules (nor what they held) may come along
        "parent_modules": ("import sys\nleaked = sorted(m for m in sys.modules if m.split('.')[:2] in "
                           "(['grader', 'grading'], ['grader', 'reference'], ['grader', 'checks'], "
                           "['grader', 'manifest'], ['grader', 'batch'], ['grader', 'cli']))\n"
                           "if leaked:\n    raise RuntimeError(f'the rank holds {leaked}')", None, ""),
        "write_grader": (f"open({str(kit / 'grader' / 'grading.py')!r}, 'a').write('# forged')",
                         Kind.EXCEPTION, "PermissionError"),
        "write_kit": (f"open({str(kit / 'forged.py')!r}, 'w').write('x')", Kind.EXCEPTION, "PermissionError"),
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
        # Channels between the ranks of one case that no counter of the kernel sees: each must be closed.
        "tmp_channel": ("import os\n"
                        "names = [os.path.join(d, 'cplab-channel') for d in ('/tmp', '/var/tmp', '/dev/shm', "
                        "'/run/lock', '.') if os.path.isdir(d)]\n"
                        "if dist.get_rank() == 1:\n"
                        "    for n in names:\n"
                        "        open(n, 'w').write('k/v')\n"
                        "        os.chmod(n, 0o666)\n"
                        "dist.barrier()\n"
                        "seen = [n for n in names if os.path.exists(n)] if dist.get_rank() == 0 else []\n"
                        "if seen:\n    raise RuntimeError(f'rank 1 reached rank 0 through {seen}')", None, ""),
        "sysv_shm": ("import ctypes\n"
                     "libc = ctypes.CDLL(None, use_errno=True)\n"
                     "if dist.get_rank() == 1:\n"
                     "    assert libc.shmget(0x5C1AB, 4096, 0o1666) != -1  # IPC_CREAT, rw for all\n"
                     "dist.barrier()\n"
                     "if dist.get_rank() == 0 and libc.shmget(0x5C1AB, 0, 0) != -1:\n"
                     "    raise RuntimeError('rank 1 reached rank 0 through System V shared memory')", None, ""),
        "one_uid_each": ("import os\n"
                         "uids = [None] * dist.get_world_size()\n"
                         "dist.all_gather_object(uids, os.getuid())\n"
                         "if len(set(uids)) != len(uids):\n    raise RuntimeError(f'ranks share uids: {uids}')",
                         None, ""),
        "see_peers": ("import os\n"
                      "for p in filter(str.isdigit, os.listdir('/proc')):\n"
                      "    try:\n"
                      "        owner = os.stat(f'/proc/{p}').st_uid\n"
                      "    except FileNotFoundError:\n"
                      "        continue\n"
                      "    if owner != os.getuid():\n"
                      "        raise RuntimeError(f'the rank sees process {p} of uid {owner}')", None, ""),
        "unix_socket": ("import socket\ns = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
                        "s.bind('\\0cplab-channel')", Kind.EXCEPTION, "PermissionError"),
        "udp_socket": ("import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'k/v', "
                       "('127.0.0.1', 9))", Kind.EXCEPTION, "PermissionError"),
        "pty": ("open('/dev/ptmx', 'rb')", Kind.EXCEPTION, "PermissionError"),
        # out of the memory cgroup whose peak is the rank's memory (grader/memcg.py), up into the pool's
        "leave_memcg": ("line = next((l for l in open('/proc/self/cgroup') if ':memory:' in l), '4:memory:/')\n"
                        "up = '/sys/fs/cgroup/memory' + line.strip().split(':', 2)[2].rsplit('/', 3)[0]\n"
                        "open(up + '/cgroup.procs', 'w').write('0')", Kind.EXCEPTION, "PermissionError"),
        "daemon": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                   f"        time.sleep(3)\n        open({str(OUTSIDE)!r}, 'w').write('late')\n"
                   "    os._exit(0)\nos.wait()", None, ""),
    }


ATTACKS = attacks(KIT)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _uid_processes(first: int) -> list[int]:
    """Live processes of the sandbox's uids (one per rank, from `first`)."""
    from grader.sandbox import MAX_RANKS

    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if first <= os.stat(f"/proc/{entry}").st_uid < first + MAX_RANKS:
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


# The same attacks through the instructor's two unattended fronts. One submission holds them all: its
# gather_sequence runs attack i when its inputs have i + 1 features, so one grading process meets every
# attack, with two plain cases of other functions graded around them.
FRONT_CASES = [f"- {{name: attack_{name}, check: gather, world_size: 2, shape: {{B: 1, S: 4, F: {i + 1}}}}}"
               for i, name in enumerate(sorted(ATTACKS))]
FRONT_MANIFEST = ex1_manifest("\n".join([
    "- {name: positions_contiguous, check: positions, world_size: 4, shape: {S: 16}}",
    *FRONT_CASES,
    "- {name: shard_zigzag, check: shard, world_size: 4, scheme: zigzag, shape: {B: 3, S: 16, F: 5}}",
]) + "\n", timeout=10)

# the two plain cases and the attacks that change nothing (the case itself still passes)
ATTACKER_SCORE = 2 + sum(kind is None for _, kind, _ in ATTACKS.values())


def attacker(kit: Path, results: Path) -> str:
    """ex1's solution with every attack on the kit in `kit` planted, plus two aimed at `results` (the file
    the front writes): one at once, one from a daemon after the grader is done."""
    forge = json.dumps({"score": 999, "tests": []})
    # one function now holds every attack: a local `import torch` would shadow the module's everywhere in
    # it (the attacks use the module's own `torch` and `dist`)
    code = {name: c.replace("import torch\n", "") for name, (c, _, _) in attacks(kit).items()}
    branches = [f"if x_local.shape[-1] == {i + 1}:  # {name}\n" + textwrap.indent(code[name], "    ")
                for i, name in enumerate(sorted(ATTACKS))]
    branches.append(
        "if x_local.shape[-1] == 1:  # and in the first attack's case, forge the results now and later\n"
        "    import os, time\n"
        "    try:\n"
        f"        open({str(results)!r}, 'w').write({forge!r})\n"
        "    except OSError:\n"
        "        pass\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(3)\n"
        f"            open({str(results)!r}, 'w').write({forge!r})\n"
        "        os._exit(0)\n"
        "    os.wait()")
    return planted("gather_sequence", "\n".join(branches))


def assert_front_results(data: dict) -> None:
    """results.json of the attacker: each attack's case as in ATTACKS, the two plain cases passed."""
    tests = {t["name"].split(" - ")[1].split(" ")[0]: t for t in data["tests"]}
    assert tests.pop("positions_contiguous")["status"] == "passed"
    assert tests.pop("shard_zigzag")["status"] == "passed"
    for name, (_, kind, text) in ATTACKS.items():
        t = tests[f"attack_{name}"]
        if kind is None:
            assert t["status"] == "passed", (name, t["output"])
        else:
            assert t["status"] == "failed" and f"Failed ({kind.value})." in t["output"], (name, t["output"])
            assert any(s in t["output"] for s in text.split("|")), (name, t["output"])
    assert data["score"] == ATTACKER_SCORE


def test_attacks_through_batch_leave_the_next_submission_alone(tmp_path):
    """batch grades the attacker first, then the untouched stubs and the solutions: their grades are those
    of a batch without it, nothing of the sandbox survives, and the attacker's results are the grader's."""
    from test_batch import command, left_behind, marked_env

    (tmp_path / "manifest.yaml").write_text(FRONT_MANIFEST)
    out = tmp_path / "out"
    students = {"a-attacker": attacker(KIT, out / "results" / "a-attacker.json"),
                "b-stub": (KIT / "exercises" / "ex1_sequence_shard.py").read_text(), "c-full": EX1_SOLUTION}
    for student, source in students.items():
        (tmp_path / "subs" / student).mkdir(parents=True)
        (tmp_path / "subs" / student / "ex1_sequence_shard.py").write_text(source)
    grading_py = _digest(KIT / "grader" / "grading.py")
    mark = uuid.uuid4().hex
    proc = subprocess.run(command(tmp_path, "out", 1), capture_output=True, text=True, timeout=600,
                          env=marked_env(mark, tmp_path / "tmp"))
    assert proc.returncode == 0, proc.stderr
    time.sleep(3.5)  # the forging daemon's delay, had it survived
    assert left_behind(mark, tmp_path / "tmp") == []
    cases, kept = len(FRONT_CASES) + 2, ATTACKER_SCORE
    assert (out / "grades.csv").read_text().splitlines()[1:] == [
        f"a-attacker,{kept},{cases},{kept},", f"b-stub,0,{cases},0,", f"c-full,{cases},{cases},{cases},"]
    assert_front_results(json.loads((out / "results" / "a-attacker.json").read_text()))
    assert not OUTSIDE.exists() and not (KIT / "forged.py").exists()
    assert _digest(KIT / "grader" / "grading.py") == grading_py


def test_attacks_through_run_autograder_leave_the_grader_its_results(tmp_path):
    """The Gradescope bundle's run_autograder, as root in a simulated /autograder, on the attacker."""
    from test_gradescope import run_autograder, unpack

    (tmp_path / "manifest.yaml").write_text(FRONT_MANIFEST)
    assert main(["gradescope", str(tmp_path / "autograder.zip"), "--manifest", str(tmp_path / "manifest.yaml"),
                 "--time-limit", "300"]) == 0
    layout = unpack(tmp_path / "autograder.zip", tmp_path / "autograder")
    results = layout / "results" / "results.json"
    kit = layout / "source"
    grading_py = _digest(kit / "grader" / "grading.py")
    data = run_autograder(layout, {"ex1_sequence_shard.py": attacker(kit, results)}, timeout=400)
    written = results.read_bytes()
    time.sleep(3.5)  # the forging daemon's delay, had it survived
    assert results.read_bytes() == written
    assert_front_results(data)
    assert not OUTSIDE.exists() and not (kit / "forged.py").exists()
    assert _digest(kit / "grader" / "grading.py") == grading_py
