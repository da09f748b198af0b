"""What the kernel says about a rank process: CPU time, whether it can run, its pid inside its namespace.

Read by the grader from /proc, where code in the rank cannot reach: the
budget and the hang verdicts rest on these numbers, not on anything the rank
reports about itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    cpu: float       # CPU seconds of all the process's threads (nanosecond counts from schedstat)
    # The main thread, where the student's call runs, is running or waiting for a CPU (R), or in
    # uninterruptible I/O (D). gloo's own threads wake about 100 times a second in any wait, so
    # their state says nothing; their demand (below) stays a few ms per second.
    runnable: bool
    # Per thread, the seconds it spent running or waiting in the run queue for a CPU: what it would
    # have run on a core of its own. A loop's demand grows with wall time however busy the machine is;
    # a thread that waits on a socket or a lock adds nothing.
    demand: dict[int, float]

    def demand_since(self, before: "Sample") -> float:
        """The most demand one thread added since `before` (threads started since count from zero)."""
        return max((d - before.demand.get(tid, 0.0) for tid, d in self.demand.items()), default=0.0)

    def total_demand_since(self, before: "Sample") -> float:
        return sum(d - before.demand.get(tid, 0.0) for tid, d in self.demand.items())


def _stat(folder: str) -> list[str]:
    """The fields of a process's or thread's stat after its name (which may hold spaces and parentheses):
    [0] the state, [11:15] utime, stime, cutime, cstime; [] when it is gone."""
    try:
        with open(f"{folder}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def sample(pid: int) -> Sample:
    cpu_ns, demand, runnable = 0, {}, False
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return Sample(0.0, False, {})
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                on_cpu, queued = (int(v) for v in f.read().split()[:2])
            cpu_ns += on_cpu
            demand[int(tid)] = (on_cpu + queued) / 1e9
            state = _stat(f"/proc/{pid}/task/{tid}")[0]
        except (OSError, IndexError, ValueError):
            continue
        runnable = runnable or (int(tid) == pid and state in ("R", "D"))
    return Sample(cpu_ns / 1e9, runnable, demand)


_TICK = 1 / os.sysconf("SC_CLK_TCK")


def _ticks(pid: int) -> tuple[int, int]:
    """(utime + stime, cutime + cstime) of pid in clock ticks: its own CPU, and its reaped children's."""
    fields = _stat(f"/proc/{pid}")
    try:
        return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
    except (IndexError, ValueError):
        return 0, 0


def spawned_cpu(pid: int, descendants: list[int]) -> float:
    """CPU seconds of the processes pid started: those it reaped, and every one of `descendants` (its
    processes still there) with what they reaped. Work a rank hands to a child of its own, which its
    own count does not include, is in here, and a process that ends is counted by whoever reaps it."""
    ticks = _ticks(pid)[1] + sum(sum(_ticks(d)) for d in descendants)
    return ticks * _TICK


def running(pid: int) -> bool:
    """The process exists and is not a zombie (nor past one)."""
    fields = _stat(f"/proc/{pid}")
    return bool(fields) and fields[0] not in ("Z", "X")


def inner_pid(pid: int) -> int | None:
    """The pid the process has inside its own PID namespace (the last NSpid field), or None if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except OSError:
        pass
    return None


def reset_peak(pid: int) -> int:
    """Start a new peak-memory window (VmHWM := VmRSS); returns the resident bytes now, or 0 if gone."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return 0
    return _status_kib(pid, "VmRSS:") * 1024


def peak(pid: int) -> int:
    """The most resident bytes since the last reset_peak."""
    return _status_kib(pid, "VmHWM:") * 1024


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0
