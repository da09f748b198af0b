"""What student code may touch: its own uid, namespaces and limits, set up before a rank loads it.

[What a sandbox is here]
When the grader runs as root (Gradescope's run_autograder, a course server,
CI), every pool of ranks gets:
  - its own PID namespace: init is PID 1, and when it dies the kernel kills
    every process in it, however it detached (setsid, double fork); its
    /proc shows a rank no process but its own (hidepid);
  - its own network namespace with only loopback (gloo still works on it);
  - its own mount namespace, in which the kit's solutions/, tests/ and .git,
    the manifest, the original submission folder, the other submissions and
    the grader's parent-side modules (references, checks, judges) are covered
    by empty mounts;
  - per-rank limits: address space, open files, file size, processes.
Every rank of it then gets more of its own, so that the ranks of one case
can talk only through what the kernel counts (grader.sockets):
  - its own unprivileged uid (from a block no process uses and /etc/passwd
    does not name): no rank can signal, trace or read another;
  - its own mount namespace, with /tmp, /var/tmp, /dev/shm and /run/lock
    small private tmpfs, nothing else writable, and no /dev/ptmx;
  - its own IPC namespace (System V shared memory, semaphores and message
    queues, POSIX message queues);
  - a seccomp filter: socket() makes only TCP sockets and the netlink route
    socket getaddrinfo asks; no Unix, UDP or raw socket, and no io_uring.
The rendezvous store is a TCP store served by rank 0 (grader.worker), so its
traffic is counted like any other.
Without root none of this is possible: ranks run as the grading user, which
is fine for a student's self-check (the student can only attack
themselves), and the grader says so once.
"""

from __future__ import annotations

import ctypes
import os
import random
import resource
import signal
import struct
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

KIT_ROOT = Path(__file__).resolve().parent.parent
GIB = 1 << 30
MIB = 1 << 20

# Modules a rank needs; every other grader module stays outside the sandbox (see grader.adapter too).
RANK_MODULES = ("__init__.py", "__main__.py", "worker.py", "adapter.py", "instrument.py", "probes.py",
                "model.py", "sandbox.py", "zygote.py", "tasks", "procfs.py")

CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 4096, 16384, 1 << 18
PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWIPC = 0x08000000
UID_RANGE = (1_000_000, 2_000_000)
MAX_RANKS = 64  # rank r of every pool runs as the session's uid + r
TMP_FOLDERS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")  # each a private tmpfs of every rank
DEVICES = ("/dev/ptmx",)  # a pseudo-terminal another rank could open: covered


@dataclass
class Limits:
    """Per-rank resource limits; each, when hit, is reported as its own failure kind."""

    memory: int = 3 * GIB       # address space beyond what a forked rank already maps
    open_files: int = 1024
    file_size: int = 64 * MIB   # any one file, the captured stdout/stderr included
    processes: int = 512        # tasks (processes and threads) of the sandbox uid, all ranks together
    answer: int = 32 * MIB      # bytes of one rank's answer read by the grader
    tmpfs: int = 256 * MIB      # each private /tmp, /var/tmp, /dev/shm


@dataclass
class Sandbox:
    """The settings a pool is forked with; `active` False means none could be set up (not root)."""

    active: bool
    reason: str = ""
    uid: int = -1  # the first of MAX_RANKS free uids
    workdir: str = ""
    hide: list[str] = field(default_factory=list)
    reach: dict[str, list[str]] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)

    def to_json(self) -> dict:
        return asdict(self)


def plan(workdir: Path, hide: list[Path] = ()) -> Sandbox:
    """The sandbox this process can give its ranks: active as root, inactive (with the reason) otherwise."""
    if os.geteuid() != 0:
        return Sandbox(False, "the grader does not run as root, so ranks cannot get their own user or "
                              "namespaces: fine for a self-check, where the only files at risk are yours")
    secret = [KIT_ROOT / "solutions", KIT_ROOT / "tests", KIT_ROOT / ".git", KIT_ROOT / "lab_manifest.yaml"]
    secret += [p for p in (KIT_ROOT / "grader").iterdir()
               if p.name not in RANK_MODULES and p.name != "__pycache__"]
    paths = [str(p.resolve()) for p in [*secret, *hide] if p.exists()]
    return Sandbox(True, uid=_free_uids(), workdir=str(workdir), hide=sorted(set(paths)), reach=_reach())


def _reach() -> dict[str, list[str]]:
    """What a rank must read (Python itself, its libraries, the grader package), grouped under the
    folder that the sandbox covers on the way to it: a private tmp folder (/tmp gets its own tmpfs), or
    a folder that shuts others out (mode without o+x, e.g. pyenv's Python under /root, a checkout made
    by mktemp -d). Such a folder is covered by an empty tmpfs with only those paths bound back in."""
    import sys

    needed = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, KIT_ROOT / "grader",
                                          *sys.path) if p and Path(p).is_dir()}
    # A folder others may not enter (a checkout made by mktemp -d) is of no use bound back as it is.
    needed = {p for p in needed if os.stat(p).st_mode & 0o001}
    covers: dict[str, set[str]] = {}
    for path in needed:
        for ancestor in [*reversed(path.parents), path][1:]:
            private = str(ancestor) in TMP_FOLDERS
            if private or (ancestor != path and not os.stat(ancestor).st_mode & 0o001):
                covers.setdefault(str(ancestor), set()).add(str(path))
                break
    return {a: sorted(paths) for a, paths in covers.items()}


def _free_uids() -> int:
    """The first of MAX_RANKS uids no process uses and /etc/passwd does not name: nothing on the machine
    belongs to them."""
    used = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            used.add(os.stat(f"/proc/{entry}").st_uid)
        except OSError:
            pass
    while True:
        first = random.randrange(*UID_RANGE)
        block = range(first, first + MAX_RANKS)
        if used.isdisjoint(block) and all(_unnamed(uid) for uid in block):
            return first


def _unnamed(uid: int) -> bool:
    import pwd

    try:
        pwd.getpwuid(uid)
    except KeyError:
        return True
    return False


# --- in the pool's processes ----------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
TCP_TABLE = 512  # buckets: a pool of 8 has 28 connections per case, and the last minute's in TIME_WAIT


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source.encode() if source else None, target.encode(),
                       fstype.encode() if fstype else None, flags, data.encode() if data else None),
           f"mount {target}")


def enter(settings: dict) -> None:
    """In the leader: new PID (for its children), network and mount namespaces, then cover the secrets."""
    if not settings["active"]:
        return
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET), "unshare")
    _own_tcp_table()
    _mount("", "/", None, MS_REC | MS_PRIVATE)
    _loopback_up()
    # Each rank covers the tmp folders with its own (confine); here only the folders that shut others
    # out on the way to what a rank must read, with the run's own folder bound back if one holds it.
    covers = {folder: "size=64k,mode=755" for folder in settings["reach"]}
    back = [p for paths in settings["reach"].values() for p in paths]
    back += [settings["workdir"]] if any(settings["workdir"].startswith(f + "/") for f in covers) else []
    _cover(covers, back)
    empty_file = os.path.join(settings["workdir"], ".hidden")
    for path in settings["hide"]:
        if os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "size=4k,mode=000")
        elif os.path.exists(path):
            _mount(empty_file, path, None, MS_BIND)
    for device in DEVICES:
        if os.path.exists(device):
            _mount(empty_file, device, None, MS_BIND)


def _private_tmp(settings: dict) -> tuple[dict[str, str], list[str]]:
    """The tmp folders to cover with a fresh tmpfs, and what must be bound back into them: the run's own
    folder (under /tmp) and whatever a rank must read there (a checkout made by mktemp -d)."""
    size = settings["limits"]["tmpfs"]
    covers = {tmp: f"size={size},mode=1777" for tmp in TMP_FOLDERS if os.path.isdir(tmp) and not os.path.islink(tmp)}
    inside = [settings["workdir"], *(p for paths in settings["reach"].values() for p in paths)]
    return covers, [p for p in inside if any(p.startswith(tmp + "/") for tmp in covers)]


def _cover(covers: dict[str, str], back: list[str]) -> None:
    """Mount a tmpfs (with its options) on each folder of `covers`, then bind `back` in again."""
    # Opened before anything is covered: these are bound back in from the descriptors afterwards.
    kept = [(p, os.open(p, os.O_RDONLY | os.O_DIRECTORY)) for p in sorted(set(back), key=len) if os.path.isdir(p)]
    covered: list[str] = []
    for folder in sorted(covers, key=len):
        if any(folder.startswith(c.rstrip("/") + "/") for c in covered):
            os.makedirs(folder, exist_ok=True)  # already inside a fresh tmpfs: empty and traversable
            continue
        _mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, covers[folder])
        covered.append(folder)
    for path, fd in kept:
        os.makedirs(path, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)


def _own_tcp_table() -> None:
    """Move on into a second network namespace with a TCP table of its own (Linux 6.1+), sized for a pool.

    A namespace shares the machine's table unless its parent namespace set tcp_child_ehash_entries, and
    the grader's sock_diag dumps walk every bucket of it: 262144 here, 2.2 ms a dump, against 0.5 ms
    with 512 (the dumps of one grade took 0.25 CPU-s). The first namespace has no process left after this
    and goes; the machine's own setting is never touched.
    """
    try:
        with open("/proc/sys/net/ipv4/tcp_child_ehash_entries", "w") as f:
            f.write(str(TCP_TABLE))
    except OSError:
        return  # an older kernel: the machine's table it is
    # Refused (a seccomp profile, say): the first namespace serves as well, with the machine's table.
    _libc.unshare(CLONE_NEWNET)


def _loopback_up() -> None:
    """Bring `lo` up in the new network namespace: the only interface there, and all gloo needs."""
    import fcntl
    import socket
    import struct

    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP, IFF_RUNNING = 0x8913, 0x8914, 0x1, 0x40
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0)))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP | IFF_RUNNING))


def become_init() -> None:
    """In init: adopt every orphan of the pool (it is PID 1 of a namespace, or a subreaper without one)."""
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if os.getpid() == 1:
        # hidepid: a rank's /proc lists its own processes only (the ranks have a uid each)
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")


def audit(settings: dict) -> list[str]:
    """In a rank, as the sandbox uid: what it can still read or write that it must not (empty: all well)."""
    if not settings["active"]:
        return []
    exposed = []
    for path in settings["hide"]:
        try:
            if os.path.isdir(path):
                if os.listdir(path):
                    exposed.append(f"can list {path}")
            elif os.path.exists(path):
                with open(path, "rb") as f:
                    if f.read(1):
                        exposed.append(f"can read {path}")
        except OSError:
            pass
    import sys

    for path in (KIT_ROOT, KIT_ROOT / "grader", Path(sys.prefix), *(Path(p) for p in sys.path if os.path.isabs(p))):
        if str(path) and path.is_dir() and os.access(path, os.W_OK):
            exposed.append(f"can write {path}")
    return exposed


def confine(settings: dict, rank: int) -> None:
    """In a rank, before any student code: its own namespaces and tmp, limits, the socket filter, then its
    own uid (for good: no way back)."""
    if not settings["active"]:
        return
    if not 0 <= rank < MAX_RANKS:
        raise ValueError(f"a sandbox has uids for {MAX_RANKS} ranks, not rank {rank}")
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWIPC), "unshare")
    _cover(*_private_tmp(settings))
    os.environ.update(HOME="/tmp", TMPDIR="/tmp", GLOO_SOCKET_IFNAME="lo")
    limits = settings["limits"]
    mapped = _mapped_bytes()
    for which, value in ((resource.RLIMIT_AS, mapped + limits["memory"]),
                         (resource.RLIMIT_NOFILE, limits["open_files"]),
                         (resource.RLIMIT_FSIZE, limits["file_size"]),
                         (resource.RLIMIT_NPROC, limits["processes"]),
                         (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(which, (value, value))
    _filter_sockets()
    uid = settings["uid"] + rank
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


# seccomp (linux/seccomp.h, linux/filter.h): a classic BPF program over struct seccomp_data
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
LD_W_ABS, JEQ_K, JGE_K, AND_K, RET_K = 0x20, 0x15, 0x35, 0x54, 0x06
# machine: (AUDIT_ARCH_*, __NR_socket, __NR_io_uring_setup)
SYSCALLS = {"x86_64": (0xC000003E, 41, 425), "aarch64": (0xC00000B7, 198, 425)}
X32_BIT = 0x40000000


def _filter_sockets() -> None:
    """Let socket() make TCP sockets (counted per connection by the kernel) and the netlink route socket
    that getaddrinfo opens, nothing else: a Unix socket (abstract names are shared by the pool's network
    namespace), UDP or raw socket would carry bytes between ranks that no counter sees. io_uring, which
    makes sockets without socket(), is refused too; so is every call of another ABI (x32, i386)."""
    import errno
    import platform

    machine = platform.machine()
    if machine not in SYSCALLS:
        raise OSError(f"the sandbox has no socket filter for {machine}")
    arch, nr_socket, nr_io_uring = SYSCALLS[machine]
    AF_INET, AF_INET6, AF_NETLINK, SOCK_STREAM, SOCK_TYPE_MASK = 2, 10, 16, 1, 0xF
    # (code, k, where to go if true, if false): a label, or None for the next instruction
    program = [
        ("arch", LD_W_ABS, 4, None, None), (None, JEQ_K, arch, None, "deny"),
        (None, LD_W_ABS, 0, None, None), (None, JGE_K, X32_BIT, "deny", None),
        (None, JEQ_K, nr_io_uring, "deny", None), (None, JEQ_K, nr_socket, None, "allow"),
        (None, LD_W_ABS, 16, None, None),  # args[0], the domain
        (None, JEQ_K, AF_INET, "inet", None), (None, JEQ_K, AF_INET6, "inet", None),
        (None, JEQ_K, AF_NETLINK, "netlink", "deny"),
        ("inet", LD_W_ABS, 24, None, None), (None, AND_K, SOCK_TYPE_MASK, None, None),
        (None, JEQ_K, SOCK_STREAM, None, "deny"),
        (None, LD_W_ABS, 32, None, None), (None, JEQ_K, 0, "allow", None), (None, JEQ_K, 6, "allow", "deny"),
        ("netlink", LD_W_ABS, 32, None, None), (None, JEQ_K, 0, "allow", "deny"),  # NETLINK_ROUTE only
        ("allow", RET_K, SECCOMP_RET_ALLOW, None, None),
        ("deny", RET_K, SECCOMP_RET_ERRNO | errno.EACCES, None, None),
    ]
    at = {label: i for i, (label, *_) in enumerate(program) if label}
    jump = lambda i, target: 0 if target is None else at[target] - i - 1  # noqa: E731
    code = b"".join(struct.pack("=HBBI", op, jump(i, yes) if op in (JEQ_K, JGE_K) else 0,
                                jump(i, no) if op in (JEQ_K, JGE_K) else 0, k)
                    for i, (_, op, k, yes, no) in enumerate(program))
    buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("=HxxxxxxQ", len(program), ctypes.addressof(buf))
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.c_char_p(fprog), 0, 0), "seccomp")


def _mapped_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


# --- in the grader ---------------------------------------------------------------------------------

def children(pid: int) -> list[int]:
    """pid's children, as /proc lists them for every one of its threads."""
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return found


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def kill_descendants(pid: int, keep: set[int] = frozenset(), rounds: int = 50) -> int:
    """SIGKILL every descendant of pid except `keep` (and their own descendants are not spared);
    repeat until none is left, so a process forking as fast as it can is still caught. Returns how many."""
    killed = 0
    for _ in range(rounds):
        victims = [p for p in descendants(pid) if p not in keep]
        if not victims:
            return killed
        for p in victims:
            try:
                os.kill(p, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(0.001)
    return killed


def prepare_case_dir(path: Path) -> None:
    """A case folder for the grader's files of the case (captured output, traces): no rank opens it by name.
    Its ranks get their files as descriptors."""
    path.mkdir(mode=0o700)


def prepare_workdir(path: Path, settings: Sandbox) -> None:
    """The run's folder: traversable by the sandbox uid, not listable; the empty file that covers secrets."""
    if not settings.active:
        return
    os.chmod(path, 0o711)
    hidden = path / ".hidden"
    hidden.write_bytes(b"")
    os.chmod(hidden, 0)
