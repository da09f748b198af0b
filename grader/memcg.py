"""Memory the kernel charges to each rank: one memory cgroup per rank, and its peak during the call.

A rank's VmHWM counts the pages mapped into its address space. Pages it
writes to a file on its private tmpfs, or to a memfd it never maps, are memory
it holds just the same, and no resident set shows them; the kernel charges
every one of them (anonymous, tmpfs, shared memory, page cache, kernel
objects) to the memory cgroup of the process that allocated it. So the grader,
as root, puts each rank in a cgroup of its own and reads that cgroup's peak
over the call. Processes a rank starts inherit its cgroup; a rank cannot move
out of it (the files are root's, the rank is not).

This reads cgroup v1's memory controller, where a peak is reset by writing 0
to memory.max_usage_in_bytes. Where the grader cannot create such a cgroup
(not root, a cgroup v2-only system, a container without one), `available()` is
False, says why, and the rank's VmHWM is the only evidence of its memory.

The kernel charges pages to a cgroup in batches of CHARGE_BATCH per CPU, so a
peak may run ahead of the pages by up to one batch on each CPU the rank ran
on: `slack()` is that bound, which a verdict subtracts.
"""

from __future__ import annotations

import functools
import os
from itertools import count
from pathlib import Path

CHARGE_BATCH = 64 * 4096  # MEMCG_CHARGE_BATCH pages, the most a CPU's stock holds for one cgroup

_pools = count()


@functools.cache
def _own_group() -> Path | None:
    """The folder of this process's cgroup v1 memory cgroup, if the memory hierarchy is mounted (read once:
    the grader does not change cgroups, and every pool's cgroups are made under it)."""
    try:
        line = next((entry for entry in Path("/proc/self/cgroup").read_text().splitlines()
                     if "memory" in entry.split(":")[1].split(",")), None)
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except (OSError, IndexError):
        return None
    if line is None:
        return None
    for m in mounts:
        fields = m.split(" - ")
        if len(fields) == 2 and fields[1].split()[0] == "cgroup" and "memory" in fields[1].split()[-1].split(","):
            root, point = m.split()[3], m.split()[4]
            inside = line.split(":", 2)[2]
            # a mount of a sub-tree (a container's) shows our path relative to its root
            rel = inside[len(root):] if inside.startswith(root) and root != "/" else inside
            return Path(point) / rel.lstrip("/")
    return None


def _base() -> Path:
    return _own_group() / f"cplab-{os.getpid()}"


def why_not() -> str:
    """'' when per-rank memory cgroups can be made here, else the reason."""
    if os.geteuid() != 0:
        return "the grader is not root"
    own = _own_group()
    if own is None:
        return "no cgroup v1 memory hierarchy is mounted"
    probe = own / f"cplab-probe-{os.getpid()}"
    try:
        probe.mkdir()
        try:
            (probe / "memory.max_usage_in_bytes").write_text("0")
        finally:
            probe.rmdir()
    except OSError as e:
        return f"cannot create a memory cgroup under {own}: {e.strerror}"
    return ""


_why: str | None = None


def available() -> bool:
    global _why
    if _why is None:
        _why = why_not()
    return not _why


def slack() -> int:
    """Bytes a peak may exceed the charged pages by: one charge batch on each CPU this machine lets run."""
    return CHARGE_BATCH * len(os.sched_getaffinity(0))


class Groups:
    """One memory cgroup per rank of a pool, made when the ranks are known and removed with them."""

    def __init__(self, pids: dict[int, int]):
        self.folder = _base() / f"pool{next(_pools)}"
        self.folder.mkdir(parents=True)
        self.ranks: dict[int, Path] = {}
        for r, pid in pids.items():
            group = self.folder / f"rank{r}"
            group.mkdir()
            (group / "cgroup.procs").write_text(str(pid))
            self.ranks[r] = group
        self._start: dict[int, int] = {}

    def reset(self, rank: int) -> None:
        """Start a new peak window for the rank: its peak is its charge now."""
        group = self.ranks[rank]
        try:
            (group / "memory.max_usage_in_bytes").write_text("0")
            self._start[rank] = int((group / "memory.usage_in_bytes").read_text())
        except (OSError, ValueError):
            self._start.pop(rank, None)

    def peak(self, rank: int) -> int | None:
        """Bytes charged to the rank at most since its reset, above its charge then; None if unread."""
        if rank not in self._start:
            return None
        try:
            top = int((self.ranks[rank] / "memory.max_usage_in_bytes").read_text())
        except (OSError, ValueError):
            return None
        return max(0, top - self._start[rank])

    def remove(self) -> None:
        """Remove the pool's cgroups; their processes must be gone (what they held moves to the parent)."""
        for group in self.ranks.values():
            _rmdir(group)
        _rmdir(self.folder)


def _rmdir(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def remove_base() -> None:
    """At exit: this process's folder of pools, once empty, and those of graders that died (killed)."""
    own = _own_group()
    if own is None or not available():
        return
    _rmdir(_base())
    for folder in own.glob("cplab-*"):
        pid = folder.name.removeprefix("cplab-")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            for pool in folder.glob("pool*"):
                for group in pool.glob("rank*"):
                    _rmdir(group)
                _rmdir(pool)
            _rmdir(folder)
