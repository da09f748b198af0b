"""Spawns rank processes, runs one case on all of them under a deadline, and kills them when it must.

[How a case runs]
A RankPool holds P spawned ranks (grader.worker) for one world size and runs
case after case on them. For a case the runner sends every rank the same job
(with its own inputs), then polls the ranks' pipes and process sentinels:
  - every rank answered: done; the pool stays warm for the next case;
  - a rank answered with an error: the others get a short grace to answer
    (they are often blocked in a collective with the failed rank), then the
    pool is killed;
  - a rank process ended without answering: crashed (signal) or early exit
    (exit code), the pool is killed;
  - the deadline passed: the live traces say where each rank waits, the pool
    is killed.
A killed pool is restarted on its next use. Killing uses each rank's process
group, so whatever a rank started dies too; `close()` runs in a finally (and
at exit), so a grader interrupted by pytest-timeout's signal leaves nothing.
"""

from __future__ import annotations

import atexit
import io
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import torch

from grader import instrument
from grader.worker import main as worker_main

STARTUP_TIMEOUT = 120.0  # seconds for P ranks to import torch on a loaded 2-core machine
ERROR_GRACE = 2.0        # seconds the other ranks get to answer after one rank failed
OUTPUT_CAP = 4000        # characters of a rank's stdout/stderr kept per case
PG_TIMEOUT_MARGIN = 5.0  # torch's own collective timeout sits past our deadline, so ours fires first

_live_pools: "weakref.WeakSet[RankPool]" = weakref.WeakSet()


@dataclass
class RankOutcome:
    """What one rank did in one case, as the parent saw it."""

    rank: int
    status: str                   # ok | error | crashed | early_exit | timeout | aborted | grader_error
    payload: Any = None
    error: dict = field(default_factory=dict)
    exitcode: int | None = None
    stdout: str = ""
    stderr: str = ""
    trace: list = field(default_factory=list)


@dataclass
class RunOutcome:
    ranks: list[RankOutcome]
    seconds: float
    timed_out: bool = False


class RankPool:
    """P warm rank processes for one world size."""

    def __init__(self, world_size: int, workdir: Path):
        self.world_size = world_size
        self.workdir = workdir
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        self.jobs_run = 0
        _live_pools.add(self)

    @property
    def alive(self) -> bool:
        return bool(self.procs) and all(p.is_alive() for p in self.procs)

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        for rank in range(self.world_size):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child_end, rank), daemon=True,
                               name=f"cplab-rank{rank}")
            proc.start()
            child_end.close()
            self.procs.append(proc)
            self.conns.append(parent_end)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        pending = set(range(self.world_size))
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise RuntimeError(f"{len(pending)} rank process(es) did not start in {STARTUP_TIMEOUT:.0f} s")
            ready = wait([self.conns[r] for r in pending] + [self.procs[r].sentinel for r in pending], left)
            for r in list(pending):
                if self.conns[r] in ready:
                    self.conns[r].recv()
                    pending.discard(r)
                elif self.procs[r].sentinel in ready:
                    code = self.procs[r].exitcode
                    self.kill()
                    raise RuntimeError(f"rank process {r} died while starting (exit code {code})")

    def kill(self) -> None:
        """Kill every rank and everything it started; safe to call twice."""
        for proc in self.procs:
            if proc.pid is None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in self.procs:
            proc.join(timeout=5)
        for conn in self.conns:
            conn.close()
        self.procs, self.conns = [], []

    def close(self) -> None:
        """Ask the ranks to leave, then make sure they did."""
        for conn in self.conns:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        for proc in self.procs:
            proc.join(timeout=2)
        self.kill()

    def run(self, job: dict, inputs: list[dict], timeout: float) -> RunOutcome:
        """Run one job on every rank; never returns before all ranks answered or were killed."""
        if not self.alive:
            self.kill()
            self.start()
        case_dir = Path(tempfile.mkdtemp(prefix=f"case{self.jobs_run}-", dir=self.workdir))
        self.jobs_run += 1
        buf = io.BytesIO()
        torch.save(inputs, buf)
        paths = {r: {k: str(case_dir / f"{k}{r}") for k in ("trace", "stdout", "stderr")}
                 for r in range(self.world_size)}
        start = time.monotonic()
        try:
            for r, conn in enumerate(self.conns):
                conn.send({**job, "inputs": buf.getvalue(), "world_size": self.world_size,
                           "store_path": str(case_dir / "store"), "workdir": str(case_dir),
                           "pg_timeout": timeout + PG_TIMEOUT_MARGIN,
                           "trace_path": paths[r]["trace"], "stdout_path": paths[r]["stdout"],
                           "stderr_path": paths[r]["stderr"]})
            outcomes: dict[int, RankOutcome] = {}
            deadline = start + timeout
            failed_at: float | None = None
            timed_out = False
            while len(outcomes) < self.world_size:
                now = time.monotonic()
                limit = deadline if failed_at is None else min(deadline, failed_at + ERROR_GRACE)
                if now >= limit:
                    timed_out = failed_at is None
                    break
                pending = [r for r in range(self.world_size) if r not in outcomes]
                ready = wait([self.conns[r] for r in pending] + [self.procs[r].sentinel for r in pending],
                             min(0.1, limit - now))
                for r in pending:
                    answer = None
                    if self.conns[r] in ready or self.conns[r].poll():
                        answer = _read_answer(r, self.conns[r])
                    if answer is None and (self.conns[r] in ready or self.procs[r].sentinel in ready):
                        answer = _ended(r, self.procs[r])
                    if answer is None:
                        continue
                    outcomes[r] = answer
                    if outcomes[r].status != "ok" and failed_at is None:
                        failed_at = time.monotonic()
        except BaseException:
            # Interrupted mid-case (Ctrl-C, pytest-timeout, a notebook cell past its timeout): ranks
            # busy in the case cannot answer a polite shutdown, so kill them now.
            self.kill()
            raise
        seconds = time.monotonic() - start
        clean = len(outcomes) == self.world_size and all(o.status in ("ok", "error") for o in outcomes.values())
        if not clean:
            self.kill()
        for r in range(self.world_size):
            if r not in outcomes:
                outcomes[r] = RankOutcome(r, "timeout" if timed_out else "aborted")
            o = outcomes[r]
            o.trace = instrument.read(paths[r]["trace"])
            o.stdout = _tail(paths[r]["stdout"])
            o.stderr = _tail(paths[r]["stderr"])
        shutil.rmtree(case_dir, ignore_errors=True)
        return RunOutcome([outcomes[r] for r in range(self.world_size)], seconds, timed_out)


def _ended(rank: int, proc: Any) -> RankOutcome:
    """A rank whose process ended without answering: a signal is a crash, an exit code an early exit."""
    proc.join(timeout=2)
    code = proc.exitcode
    return RankOutcome(rank, "crashed" if code is not None and code < 0 else "early_exit", exitcode=code)


def _read_answer(rank: int, conn: Any) -> RankOutcome | None:
    """The rank's answer, or None when its pipe closed without one."""
    try:
        data = conn.recv_bytes()
    except (EOFError, OSError):
        return None
    try:
        # weights_only: the rank ran untrusted code, so its answer may hold tensors and builtins only.
        answer = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as e:
        return RankOutcome(rank, "error", error={"kind": "exception", "message": f"unreadable result ({e})"})
    status = answer.get("status")
    if status == "ok":
        return RankOutcome(rank, "ok", payload=answer.get("payload"))
    if status == "error":
        return RankOutcome(rank, "error", error=answer)
    return RankOutcome(rank, "grader_error", error=answer)


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - OUTPUT_CAP))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return text if size <= OUTPUT_CAP else f"[... {size - OUTPUT_CAP} bytes cut ...]\n{text}"


class Runner:
    """The pools of one grading session (one submission): one per world size, closed together."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="cplab-"))
        self.pools: dict[int, RankPool] = {}

    def pool(self, world_size: int) -> RankPool:
        if world_size not in self.pools:
            self.pools[world_size] = RankPool(world_size, self.workdir)
        return self.pools[world_size]

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@atexit.register
def _kill_leftovers() -> None:
    for pool in list(_live_pools):
        pool.kill()
