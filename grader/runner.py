"""Forks pools of ranks from the zygote, runs one case on all of them under a budget, kills them when it must.

[How a case runs]
A RankPool holds the P ranks of one world size for one submission, forked
from the preloaded zygote (grader.zygote) in milliseconds. For a case the
runner sends every rank its job (with its own inputs only) and watches the
ranks' pipes, init's reports of dead processes, and the kernel's accounting
of every rank (grader.procfs):
  - every rank answered: done; strays the case started are killed, and the
    pool stays warm for the submission's next case;
  - a rank answered with an error: the others get a short grace to answer
    (they are often blocked in a collective with the failed rank), then the
    pool is killed;
  - a rank process ended without answering: crashed (signal) or early exit
    (exit code), the pool is killed;
  - the budget ran out (below): the live traces say where each rank waits,
    the pool is killed.
A killed pool is replaced at once, in the background. `close()` runs in a
finally (and at exit), so a grader interrupted by pytest-timeout's signal
leaves nothing.

[Budgets that measure the student's code, not the machine]
A case's clock starts when every rank has joined the group and imported the
student's module, and says so. From then on the runner judges by what the
kernel reports, which does not change with how busy the machine is:
  - an endless loop: a rank has used more CPU time than the case's budget, or
    one of its threads has been running or waiting in the run queue for a CPU
    (never sleeping on a socket or a lock) for longer than that;
  - a deadlock or hang: every rank still running sleeps (its main thread is
    never runnable, its threads together run or wait for a CPU under
    IDLE_DEMAND) for IDLE_WINDOW seconds of wall time;
  - the outer guard: wall time past max(WALL_MIN, WALL_FACTOR x budget).
A loop is so named within its budget however busy the machine is. A correct
rank starved by other work is never idle, and its waits for a CPU count only
while it computes: it fails only if the CPU it needs, divided by its share of
a core, exceeds the budget. On the idle 2-core machine the solutions' ranks
use at most 0.15 s of CPU per case and spend at most 0.44 s running or queued
(ex5 memory, 8 ranks on 2 cores) against budgets of 30 s: 70 times that load.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import py_compile
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from multiprocessing import Pipe
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import torch

from grader import instrument, memcg, procfs, sandbox as sandbox_mod, sockets
from grader import worker as worker_mod, zygote as zygote_mod
from grader.sandbox import Sandbox

STARTUP_TIMEOUT = 120.0  # wall seconds for a forked pool to be ready (milliseconds when idle; a guard only)
SETUP_TIMEOUT = 120.0    # wall seconds from the job to every rank's start: joining the group, importing
IDLE_WINDOW = 2.0        # seconds every running rank sleeps with no CPU spent before the case is stuck
# Seconds per second that a sleeping rank's threads may run or wait for a CPU and still be idle:
# gloo's loop thread, woken 100 times a second in any wait, spends 5-12 ms/s idle or under burners.
IDLE_DEMAND = 0.05
WALL_MIN, WALL_FACTOR = 60.0, 4.0  # the outer wall-clock guard, after the start
ERROR_GRACE = 2.0        # seconds the other ranks get to answer after one rank failed
OUTPUT_CAP = 4000        # characters of a rank's stdout/stderr kept per case
FILES = ("stdout", "stderr", "trace")  # per rank and case, in the order the rank takes them
PG_TIMEOUT_MARGIN = 30.0  # torch's own collective timeout sits past our guards, so ours fire first
POLL = 0.05    # seconds the watch waits for a message before it looks at the clock
# Seconds between the watch's readings of the ranks' CPU in /proc (two files per thread: a P=8 pool
# is about 160 reads). Read every POLL, they were about 1 of the 8 CPU-seconds the grader itself
# spends on a full grade; the verdicts they serve (budget, idle) come after seconds, not milliseconds.
SAMPLE = 0.2

_live_pools: "weakref.WeakSet[RankPool]" = weakref.WeakSet()


@dataclass
class RankOutcome:
    """What one rank did in one case, as the parent saw it."""

    rank: int
    status: str                   # ok | error | crashed | early_exit | timeout | aborted | limit | grader_error
    payload: Any = None
    error: dict = field(default_factory=dict)
    exitcode: int | None = None
    stdout: str = ""
    stderr: str = ""
    trace: list = field(default_factory=list)
    cpu: float = 0.0              # CPU seconds the rank spent in the student's call (the kernel's count),
                                  # with that of the processes it (or the pool) started meanwhile
    busy: float = 0.0             # the longest one of its threads ran or waited for a CPU in the call
    # The kernel's evidence of the call, from its start to its end (rank side: "S"/"E" messages):
    # peer rank -> bytes this rank received from it (-1: not a rank); None where no kernel counted (torchrun)
    received: dict | None = None
    peak: int = 0                 # resident bytes above what the rank held when the call started
    # bytes charged to the rank's memory cgroup at most in the call, above its charge at the start: its
    # tmpfs files and memfds too (grader.memcg); None where the grader has no such cgroup
    charged: int | None = None
    # bytes it received after the window closed, until every rank had answered: none, unless code in
    # the rank said "E" early to move its communication out of the window
    late: int = 0
    returned: bool = False        # the student's call returned (the rank may not have answered yet)


@dataclass
class RunOutcome:
    ranks: list[RankOutcome]
    seconds: float
    timed_out: bool = False
    stopped: str = ""             # why the runner stopped the case: cpu | idle | wall | setup
    notes: list[str] = field(default_factory=list)  # what the ranks did that the runner ignored


class PoolError(RuntimeError):
    """The pool could not be started: the kit's problem, never the student's."""


class SandboxError(PoolError):
    """The sandbox's own start-up check found something the ranks could reach: grading is refused."""


class RankPool:
    """P warm rank processes of one world size, for one submission's cases."""

    def __init__(self, world_size: int, workdir: Path, sandbox: Sandbox, zygote: zygote_mod.Zygote):
        self.world_size = world_size
        self.workdir = workdir
        self.sandbox = sandbox
        self.zygote = zygote
        self.handle: zygote_mod.PoolHandle | None = None
        self.conns: list[Any] = []
        self.pids: dict[int, int] = {}   # rank -> pid as this process sees it
        self.inner: dict[int, int] = {}  # pid inside the pool -> rank
        self.init = 0
        self.ready = False
        self.store_port = 0  # rank 0's rendezvous store
        self.jobs_run = 0
        self._diag: socket.socket | None = None
        self.memcg: memcg.Groups | None = None
        _live_pools.add(self)

    def diag(self) -> socket.socket:
        """A sock_diag socket in the ranks' network namespace, opened once per set of ranks."""
        if self._diag is None:
            self._diag = sockets.open_diag(self.pids[0] if self.sandbox.active else None)
        return self._diag

    @property
    def alive(self) -> bool:
        return self.handle is not None

    def launch(self) -> None:
        """Ask the zygote for the ranks; returns at once, `wait_ready` collects them."""
        if self.handle is not None:
            return
        pipes = [Pipe(duplex=True) for _ in range(self.world_size)]
        try:
            self.handle = self.zygote.fork_pool({"world_size": self.world_size, "sandbox": self.sandbox.to_json()},
                                                [child.fileno() for _, child in pipes])
        finally:
            for _, child in pipes:
                child.close()
        self.conns = [ours for ours, _ in pipes]
        self.ready = False

    def wait_ready(self) -> None:
        self.launch()
        if self.ready:
            return
        assert self.handle is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        init = self.handle.init_pid(STARTUP_TIMEOUT)
        if init is None:
            self.kill()
            raise PoolError(f"the pool of {self.world_size} ranks did not start in {STARTUP_TIMEOUT:.0f} s")
        self.init = init
        pending = set(range(self.world_size))
        while pending:
            left = deadline - time.monotonic()
            ready = wait([self.conns[r] for r in pending] + [self.handle.status], max(0.0, left))
            if not ready:
                self.kill()
                raise PoolError(f"{len(pending)} rank(s) of {self.world_size} did not start in "
                                f"{STARTUP_TIMEOUT:.0f} s")
            if self.handle.status in ready and self.handle.reaped():
                self.kill()
                raise PoolError("a rank process died while starting (see the grader's stderr)")
            for r in list(pending):
                if self.conns[r] in ready:
                    try:
                        msg = self.conns[r].recv_bytes(4096)
                    except (EOFError, OSError):
                        self.kill()
                        raise PoolError(f"rank {r} died while starting") from None
                    hello = json.loads(msg[1:])
                    if hello.get("exposed"):
                        self.kill()
                        raise SandboxError(
                            f"refusing to grade: as the sandbox uid a rank {'; '.join(hello['exposed'][:3])}. "
                            f"Make the kit and its virtual environment owned by root and not writable by "
                            f"others (chmod -R o-w), then grade again")
                    self.inner[hello["pid"]] = hello["rank"]
                    self.store_port = hello.get("store_port") or self.store_port
                    pending.discard(r)
        for pid in sandbox_mod.children(self.init):
            inner = procfs.inner_pid(pid)
            if inner in self.inner:
                self.pids[self.inner[inner]] = pid
        if len(self.pids) != self.world_size:
            self.kill()
            raise PoolError(f"found {len(self.pids)} of {self.world_size} rank processes under the pool's init")
        if self.sandbox.active and memcg.available():
            try:
                self.memcg = memcg.Groups(self.pids)
            except OSError as e:
                self.kill()
                raise PoolError(f"could not give the ranks their memory cgroups: {e}") from None
        self.ready = True

    def kill(self) -> None:
        """Kill every process of the pool, however it detached; returns once they are all gone."""
        handle, self.handle = self.handle, None
        if handle is not None:
            if not self.init:
                self.init = handle.init_pid(STARTUP_TIMEOUT) or 0
            self._signal_all(handle)
            handle.wait_gone(10.0)
            handle.close()
        if self.memcg is not None:
            self.memcg.remove()
        for conn in self.conns:
            conn.close()
        if self._diag is not None:
            self._diag.close()
        self.conns, self.pids, self.inner, self.init, self.ready, self._diag = [], {}, {}, 0, False, None
        self.memcg = None

    def abort(self) -> None:
        """Kill the ranks from another thread than the one running a case on them: that case then ends
        as if they had died, and the pool is left for `kill` or `close` to clean up."""
        handle = self.handle
        if handle is not None and self.init:
            self._signal_all(handle)

    def _signal_all(self, handle: zygote_mod.PoolHandle) -> None:
        if self.init:
            if self.sandbox.active:
                _signal(self.init, signal.SIGKILL)  # PID 1 of the namespace: the kernel kills the rest
            else:
                sandbox_mod.kill_descendants(self.init)
                _signal(self.init, signal.SIGKILL)
        else:
            _signal(handle.leader, signal.SIGKILL)

    def recycle(self) -> None:
        """Replace the ranks with fresh ones (after a failed case: threads or state it left die with them)."""
        self.kill()
        self.launch()

    def close(self) -> None:
        """Ask the ranks to leave, then make sure everything of the pool is gone."""
        for conn in self.conns:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        if self.handle is not None:
            self.handle.wait_gone(0.5)
        self.kill()

    def run(self, job: dict, inputs: list[dict], budget: float, *, evidence: bool = True) -> RunOutcome:
        """Run one job on every rank; never returns before all ranks answered or the pool was killed.

        Ranks that stall before the call (setup) ran none of the case's student code: what stalled them
        is state an earlier case left in them (a thread holding the GIL) or the machine, so fresh ranks
        take the case once more. A second stall is the grader's failure, not the student's.
        """
        outcome = self._attempt(job, inputs, budget, evidence)
        if outcome.stopped != "setup":
            return outcome
        again = self._attempt(job, inputs, budget, evidence)
        again.notes.append(f"the ranks stalled before the call for {SETUP_TIMEOUT:g} s (something an earlier "
                           f"case left running in them?); the case ran again on fresh ranks")
        return again

    def _send(self, jobs: list[dict], paths: dict[int, dict[str, str]]) -> None:
        """Each rank its job, then its case's files (FILES), as descriptors on the same pipe."""
        for r, (conn, rank_job) in enumerate(zip(self.conns, jobs)):
            conn.send(rank_job)
            fds = [os.open(paths[r][k], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) for k in FILES]
            try:
                with socket.socket(fileno=os.dup(conn.fileno())) as pipe:
                    socket.send_fds(pipe, [b"F"], fds)
            finally:
                for fd in fds:
                    os.close(fd)

    def _leave(self) -> None:
        """Every rank answered: they may all leave the case's group now, while the grader judges."""
        for conn in self.conns:
            try:
                conn.send(worker_mod.LEAVE)
            except OSError:
                pass  # a rank gone now is found, and replaced, when the next job is sent

    def _attempt(self, job: dict, inputs: list[dict], budget: float, evidence: bool) -> RunOutcome:
        try:
            self.wait_ready()
        except SandboxError:
            raise
        except PoolError:
            self.launch()  # one retry: a pool that failed to start is the machine's hiccup, not the case's
            self.wait_ready()
        case_dir = self.workdir / f"case{self.jobs_run}-{secrets.token_hex(4)}"
        sandbox_mod.prepare_case_dir(case_dir)
        self.jobs_run += 1
        nonce = secrets.token_hex(16)
        paths = {r: {k: str(case_dir / f"{k}{r}") for k in FILES} for r in range(self.world_size)}
        watch = _Watch(self, nonce, budget, evidence)
        jobs = []
        for r in range(self.world_size):
            buf = io.BytesIO()
            torch.save(inputs[r], buf)
            # a sandboxed rank works in its own private /tmp; without one, in the case's folder
            folder = f"/tmp/case{self.jobs_run}" if self.sandbox.active else str(case_dir / f"rank{r}")
            jobs.append({**job, "inputs": buf.getvalue(), "world_size": self.world_size, "nonce": nonce,
                         "store_port": self.store_port, "workdir": folder,
                         "pg_timeout": budget * WALL_FACTOR + WALL_MIN + SETUP_TIMEOUT + PG_TIMEOUT_MARGIN})
        try:
            try:
                self._send(jobs, paths)
            except OSError:
                # Ranks that died while idle (killed from outside, an interrupted notebook cell): no
                # student code has run in this case yet, so fresh ranks take it.
                self.recycle()
                self.wait_ready()
                for rank_job in jobs:
                    rank_job["store_port"] = self.store_port
                self._send(jobs, paths)
            watch.run()
        except BaseException:
            # Interrupted mid-case (Ctrl-C, pytest-timeout, a notebook cell past its timeout): ranks
            # busy in the case cannot answer a polite shutdown, so kill them now.
            self.kill()
            raise
        outcomes = watch.outcomes
        clean = len(outcomes) == self.world_size and all(o.status in ("ok", "error") for o in outcomes.values())
        if clean and self.init:
            strays = sandbox_mod.kill_descendants(self.init, keep=set(self.pids.values()))
            if strays:
                watch.notes.append(f"{strays} process(es) the case started were still running and were killed")
        if clean:
            self._leave()
        else:
            self.kill()
        for r in range(self.world_size):
            if r not in outcomes:
                outcomes[r] = RankOutcome(r, "timeout" if watch.stopped else "aborted")
            o = outcomes[r]
            o.cpu, o.busy = watch.cpu_used(r) + watch.spawned.get(r, 0.0), watch.busy(r)
            o.returned = o.status == "ok" or r in watch.ended
            o.received, o.peak, o.late = watch.received.get(r, {}), watch.peaks.get(r, 0), watch.late.get(r, 0)
            o.charged = watch.charged.get(r)
            o.trace = instrument.read(paths[r]["trace"])
            o.stdout = _tail(paths[r]["stdout"])
            o.stderr = _tail(paths[r]["stderr"])
            flooded = [k for k in ("stdout", "stderr") if _size(paths[r][k]) >= self.sandbox.limits.file_size]
            if flooded and self.sandbox.active:
                o.status, o.error = "limit", {"limit": "file_size", "message": (
                    f"rank {r} wrote its {flooded[0]} up to its {self.sandbox.limits.file_size >> 20} MiB "
                    f"file-size limit")}
        shutil.rmtree(case_dir, ignore_errors=True)
        if not clean:
            self.launch()
        return RunOutcome([outcomes[r] for r in range(self.world_size)], watch.seconds, bool(watch.stopped),
                          watch.stopped, watch.notes)


class _Watch:
    """One case's watch over its ranks: their messages, their deaths, and the kernel's count of their CPU."""

    def __init__(self, pool: RankPool, nonce: str, budget: float, evidence: bool = True):
        self.pool, self.nonce, self.budget, self.evidence = pool, nonce.encode(), budget, evidence
        self.ended: set[int] = set()  # ranks waiting after their call for the window to close
        self.outcomes: dict[int, RankOutcome] = {}
        self.started: dict[int, procfs.Sample] = {}  # rank -> the kernel's counts when it started the call
        self.notes: list[str] = []
        self.stopped = ""
        self.seconds = 0.0
        self._now: dict[int, procfs.Sample] = {}
        self._rss0: dict[int, int] = {}
        self._traffic0: sockets.Traffic = {}
        self._owners: dict[int, int] = {}
        self.received: dict[int, dict] = {}
        self.late: dict[int, int] = {}
        self.peaks: dict[int, int] = {}
        self.charged: dict[int, int | None] = {}
        self._spawned0: dict[int, float] = {}
        self.spawned: dict[int, float] = {}  # rank -> CPU of processes started in the pool during the call

    def cpu_used(self, rank: int) -> float:
        if rank not in self.started:
            return 0.0
        return max(0.0, self._now.get(rank, self.started[rank]).cpu - self.started[rank].cpu)

    def _spawned_cpu(self) -> dict[int, float]:
        """Per rank, the CPU of the processes it started; under -1, that of processes the pool's init
        adopted (a helper whose parent left). A rank's count in the call is its own threads' only."""
        pids = self.pool.pids
        found = {r: procfs.spawned_cpu(pid, sandbox_mod.descendants(pid)) for r, pid in pids.items()}
        if self.pool.init:
            ranks = set(pids.values())
            adopted = [c for c in sandbox_mod.children(self.pool.init) if c not in ranks]
            found[-1] = procfs.spawned_cpu(self.pool.init, [d for c in adopted
                                                            for d in [c, *sandbox_mod.descendants(c)]])
        return found

    def busy(self, rank: int) -> float:
        if rank not in self.started:
            return 0.0
        return self._now.get(rank, self.started[rank]).demand_since(self.started[rank])

    def over_budget(self, rank: int) -> bool:
        """All threads' CPU, or one thread's CPU plus its wait for one, past the budget: the second is
        what makes a loop's verdict come in time on a busy machine, while code that needs little CPU
        needs little of either."""
        return max(self.cpu_used(rank), self.busy(rank)) > self.budget

    def run(self) -> None:
        pool, world = self.pool, self.pool.world_size
        assert pool.handle is not None
        sent = time.monotonic()
        start: float | None = None
        failed_at: float | None = None
        idle_since: float | None = None
        idle_from: dict[int, procfs.Sample] = {}
        checked = 0.0
        while len(self.outcomes) < world:
            now = time.monotonic()
            if failed_at is not None and now > failed_at + ERROR_GRACE:
                break
            pending = [r for r in range(world) if r not in self.outcomes]
            ready = wait([pool.conns[r] for r in pending] + [pool.handle.status], POLL)
            for r in pending:
                if pool.conns[r] in ready:
                    self._read(r)
            if pool.handle.status in ready:
                for inner, status in pool.handle.reaped():
                    r = pool.inner.get(inner)
                    if r is not None and r not in self.outcomes:
                        self.outcomes[r] = _ended(r, status)
            if failed_at is None and any(o.status != "ok" for o in self.outcomes.values()):
                failed_at = time.monotonic()
            running = [r for r in range(world) if r not in self.outcomes]
            if not running:
                break
            now = time.monotonic()
            if start is None:
                if all(r in self.started for r in running):
                    start = checked = now
                    self._go(running)
                elif now - sent > SETUP_TIMEOUT:
                    self.stopped = "setup"
                    break
                else:
                    continue
            if all(r in self.ended for r in running) and self.ended - self.received.keys():
                self._end(running)
                continue
            # every rank's message wakes the loop: the kernel's counts are read at most once a SAMPLE
            if now - checked < SAMPLE:
                continue
            checked = now
            samples = {r: procfs.sample(pool.pids[r]) for r in running}
            self._now.update(samples)
            if any(self.over_budget(r) for r in running):
                self.stopped = "cpu"
                break
            if failed_at is not None or any(s.runnable for s in samples.values()):
                idle_since = None
            elif idle_since is None or any(
                    r not in idle_from or s.total_demand_since(idle_from[r]) > IDLE_DEMAND * (now - idle_since) + 0.01
                    for r, s in samples.items()):
                idle_since, idle_from = now, samples
            elif now - idle_since >= IDLE_WINDOW:
                self.stopped = "idle"
                break
            if now - start > max(WALL_MIN, WALL_FACTOR * self.budget):
                self.stopped = "wall"
                break
        self.seconds = time.monotonic() - (start if start is not None else sent)
        if self.evidence and self.received and len(self.outcomes) == world:
            self._after_window()

    def _after_window(self) -> None:
        """Once every rank answered, read the counters a last time: what arrived after a rank's window
        closed is communication the verdict would not have seen."""
        final = sockets.since(self._traffic(), self._traffic0)
        for r, peers in self.received.items():
            self.late[r] = max(0, sum(moved[1] for moved in final.get(r, {}).values()) - sum(peers.values()))

    def _go(self, ranks: list[int]) -> None:
        """Every rank waits at its start: open the evidence window (peak memory, socket counters), then go."""
        if self.evidence:
            pids = self.pool.pids
            for r in ranks:
                self._rss0[r] = procfs.reset_peak(pids[r])
                if self.pool.memcg is not None:
                    self.pool.memcg.reset(r)
            try:
                self._owners = sockets.owners(pids)
            except OSError:
                self._owners = {}
            self._traffic0 = self._traffic()
            self._spawned0 = self._spawned_cpu()
        self._release(ranks, b"G")

    def _end(self, running: list[int]) -> None:
        """Every running rank's call returned and it waits: close their evidence window (one socket dump for
        all: it walks the kernel's whole TCP table), then let them answer."""
        ended = sorted(self.ended - self.received.keys())
        if self.evidence:
            after = sockets.since(self._traffic(ended), self._traffic0)
            for r in ended:
                self.peaks[r] = max(0, procfs.peak(self.pool.pids[r]) - self._rss0.get(r, 0))
                if self.pool.memcg is not None:
                    self.charged[r] = self.pool.memcg.peak(r)
                self.received[r] = {peer: moved[1] for peer, moved in after.get(r, {}).items()}
            spawned = self._spawned_cpu()
            adopted = max(0.0, spawned.get(-1, 0.0) - self._spawned0.get(-1, 0.0))
            for r in ended:
                # whose an adopted process was is not known: every rank is charged with it
                self.spawned[r] = max(0.0, spawned.get(r, 0.0) - self._spawned0.get(r, 0.0)) + adopted
        else:
            self.received.update({r: {} for r in ended})
        self._release(ended, b"F")

    def _release(self, ranks: list[int], word: bytes) -> None:
        for r in ranks:
            try:
                self.pool.conns[r].send_bytes(word + self.nonce)
            except OSError:
                pass  # its death reaches the watch through init

    def _traffic(self, fresh: list[int] = ()) -> sockets.Traffic:
        try:
            return sockets.traffic(self.pool.diag(), self.pool.pids, self._owners, fresh)
        except OSError:
            return {}

    def _read(self, r: int) -> None:
        conn = self.pool.conns[r]
        limit = self.pool.sandbox.limits.answer
        try:
            msg = conn.recv_bytes(limit + 64)
        except (EOFError, ConnectionError):
            return  # the process's end closed: init reports how it died
        except OSError:
            self.outcomes[r] = RankOutcome(r, "limit", error={
                "limit": "answer", "message": f"rank {r} sent an answer of more than {limit >> 20} MiB"})
            return
        kind, body = msg[:1], msg[1:]
        if not body.startswith(self.nonce):
            self.notes.append(f"rank {r} sent a message without this case's nonce; it was ignored")
            return
        body = body[len(self.nonce):]
        if kind == b"S" and r not in self.started:
            self.started[r] = procfs.sample(self.pool.pids[r])
        elif kind == b"E" and r in self.started and r not in self.ended:
            self.ended.add(r)
        elif kind == b"A" and r not in self.outcomes:
            self.outcomes[r] = _read_answer(r, body)
            self._now[r] = procfs.sample(self.pool.pids[r])
            self.started.setdefault(r, self._now[r])
        else:
            what = {b"S": "start", b"E": "end", b"A": "answer"}.get(kind, "message")
            self.notes.append(f"rank {r} sent a second {what}; it was ignored")


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _ended(rank: int, status: int) -> RankOutcome:
    """A rank whose process ended without answering: a signal is a crash, an exit code an early exit."""
    if os.WIFSIGNALED(status):
        return RankOutcome(rank, "crashed", exitcode=-os.WTERMSIG(status))
    return RankOutcome(rank, "early_exit", exitcode=os.waitstatus_to_exitcode(status))


def _read_answer(rank: int, data: bytes) -> RankOutcome:
    """The rank's answer; anything but a well-formed one is an error of the submission."""
    try:
        # weights_only: the rank ran untrusted code, so its answer may hold tensors and builtins only.
        answer = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as e:
        return RankOutcome(rank, "error", error={"kind": "exception", "message": f"unreadable result ({e})"})
    status = answer.get("status") if isinstance(answer, dict) else None
    if status == "ok":
        return RankOutcome(rank, "ok", payload=answer.get("payload"))
    if status == "error":
        return RankOutcome(rank, "error", error=answer)
    return RankOutcome(rank, "grader_error", error=answer if isinstance(answer, dict) else {})


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


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

    def __init__(self, *, hide: list[Path] = ()) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="cplab-"))
        self.sandbox = sandbox_mod.plan(self.workdir, list(hide))
        _say_once_without_sandbox(self.sandbox)
        sandbox_mod.prepare_workdir(self.workdir, self.sandbox)
        self.zygote = zygote_mod.shared()
        self.zygote.start()
        self.pools: dict[int, RankPool] = {}
        self._staged = 0

    def stage(self, directory: Path, modules: list[str]) -> Path:
        """A copy of the submission's exercise files for the ranks to import: in a sandbox the
        original folder is covered, so a submission can neither read its neighbours nor change itself."""
        self._staged += 1
        target = self.workdir / f"submission{self._staged}"
        target.mkdir(mode=0o755)
        for name in modules:
            source = directory / f"{name}.py"
            if source.is_file():
                shutil.copyfile(source, target / source.name)
                os.chmod(target / source.name, 0o644)
                _precompile(target / source.name)
        return target

    def pool(self, world_size: int) -> RankPool:
        if world_size not in self.pools:
            self.pools[world_size] = RankPool(world_size, self.workdir, self.sandbox, self.zygote)
        return self.pools[world_size]

    def prestart(self, world_sizes: list[int]) -> None:
        """Fork the pools these sizes need now, so that they get ready while the first cases run."""
        for size in dict.fromkeys(world_sizes):
            self.pool(size).launch()

    def abort(self) -> None:
        """Kill every pool's ranks now, from any thread (see RankPool.abort)."""
        for pool in list(self.pools.values()):
            pool.abort()

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_said: list[str] = []


def _precompile(path: Path) -> None:
    """Compile once here what every rank imports afresh in every case (the ranks cannot write a .pyc
    themselves); compiling runs none of the code, and a file that does not compile is the rank's to report."""
    try:
        py_compile.compile(str(path), doraise=True)
    except py_compile.PyCompileError:
        return
    os.chmod(path.parent / "__pycache__", 0o755)  # the sandbox's uid reads it, whatever the umask


def _say_once_without_sandbox(settings: Sandbox) -> None:
    if not settings.active and not _said:
        _said.append(settings.reason)
        sys.stderr.write(f"cplab: student code runs without a sandbox: {settings.reason}.\n")


@atexit.register
def _kill_leftovers() -> None:
    for pool in list(_live_pools):
        pool.kill()
    memcg.remove_base()
