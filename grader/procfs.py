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
    runnable: bool   # some thread is running or waiting for a CPU (R), or in uninterruptible I/O (D)


def sample(pid: int) -> Sample:
    cpu_ns, runnable = 0, False
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return Sample(0.0, False)
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                cpu_ns += int(f.read().split()[0])
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError, ValueError):
            continue
        runnable = runnable or state in ("R", "D")
    return Sample(cpu_ns / 1e9, runnable)


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
