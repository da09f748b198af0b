"""A preloaded server that forks rank processes, so that a rank starts in milliseconds, not seconds.

[Why a zygote]
Importing torch is nearly all of a fresh rank's start (1.5-2 s idle, 20 s
and more on a loaded 2-core machine). The zygote imports torch,
torch.distributed and the rank-side grader modules once; every rank is then
an os.fork() of it. The zygote must stay fork-safe: it runs no torch op
(a live intra-op thread pool does not survive a fork) and never touches
CUDA (a CUDA context does not either).

[The process tree of one pool]
    grader ── zygote ── leader ── init ── rank 0 ... rank P-1
  - zygote: one per grading process; it dies with the grader (PDEATHSIG and
    the end of its socket) and forks one leader per pool asked for. It is
    spawned (a fresh interpreter), or, where the grading process is itself
    still that clean (`python -m grader`, a batch worker), a fork of it,
    which saves it the second torch import (1.1 of its 1.5 CPU-s).
  - leader: in a sandbox, enters the pool's own PID, network and mount
    namespaces (grader.sandbox), then forks init and waits for it. It holds
    the pool's lifeline, a pipe to the grader: when it closes, init is reaped,
    and in a PID namespace that means every process of the pool is gone.
  - init: PID 1 of the pool's namespace (or, without one, a child subreaper):
    every orphan of the pool is reparented to it, and when it dies the kernel
    kills whatever is left in the namespace.
  - ranks: grader.worker.serve, each with its own pipe to the grader.
Each level dies with its parent (PR_SET_PDEATHSIG), so a SIGKILLed grader
takes the whole tree with it. A batch uses the same server for its workers
(`fork_call`): a leader forks the worker and reports how it ended.

Everything the zygote imported is frozen out of the garbage collector
(gc.freeze) before it forks: a rank's collections then never walk, nor write
to, the inherited torch heap.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from grader import procfs

MAX_REQUEST = 1 << 16
# Everything a rank imports for a case, so that none of it lands in a case's time: symbolic_shapes
# (with sympy, 1.7 s per rank) is what torch imports on the first backward given a gradient.
# torch._dynamo is not here (2 s of the server's start): grader.probes keeps it from being imported.
PRELOAD = ("torch", "torch.distributed", "torch.utils.flop_counter", "torch.utils._python_dispatch",
           "torch.fx.experimental.symbolic_shapes", "grader.worker", "grader.tasks", "grader.probes",
           "grader.model", "grader.sandbox", "grader.procfs")


@dataclass
class PoolHandle:
    """The grader's view of a forked pool: the leader's pid and the lifeline it holds."""

    leader: int
    lifeline: int  # read end; EOF when the leader, and so the whole pool, is gone
    status: int    # read end; init writes (pid, wait status) for every process it reaps

    def init_pid(self, timeout: float) -> int | None:
        """init's pid (as the grader sees it), which the leader writes first on the lifeline."""
        ready, _, _ = select.select([self.lifeline], [], [], timeout)
        if not ready:
            return None
        data = os.read(self.lifeline, 8)
        return struct.unpack("q", data)[0] if len(data) == 8 else None

    def wait_gone(self, timeout: float) -> bool:
        """Block until the pool's processes are all gone: the lifeline closed, and the leader, whose exit
        closed it, past its exit (the kernel closes a process's files before it is a zombie: a busy
        machine can leave it running its exit for milliseconds more)."""
        end = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self.lifeline], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                return False
            if not os.read(self.lifeline, 4096):
                break
        while procfs.running(self.leader):
            if time.monotonic() > end:
                return False
            time.sleep(0.001)
        return True

    def reaped(self) -> list[tuple[int, int]]:
        """(pid inside the pool, wait status) of the processes init reaped since the last call."""
        out = []
        while True:
            try:
                data = os.read(self.status, 8 * 64)
            except BlockingIOError:
                return out
            if not data:
                return out
            out += list(struct.iter_unpack("ii", data[: len(data) // 8 * 8]))

    def close(self) -> None:
        for fd in (self.lifeline, self.status):
            if fd >= 0:
                os.close(fd)
        self.lifeline = self.status = -1


class Zygote:
    """The grader's end of the server: start it once, then ask it for pools (or, for a batch, workers)."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen | None = None  # a spawned server; a forked one has only a pid
        self._pid: int | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._pid

    def start(self, *, fork: bool = False) -> None:
        """Start the server without waiting for its imports; the first fork waits for them.

        fork=True makes the server a fork of this process, which saves it importing torch again. Only a
        process that is as clean as the server must stay may ask for that: no torch op run, no thread
        started, none of the grader's own modules (references, checks, the manifest) imported and no
        case read, since every rank is a copy of the server.
        """
        if self._sock is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if fork:
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _serve_forked(theirs.fileno())
        else:
            code = (f"import sys; sys.path[:0] = {[p for p in sys.path if p]!r}; import grader.zygote as z; "
                    f"z.serve({theirs.fileno()})")
            self._proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=[theirs.fileno()],
                                          stdin=subprocess.DEVNULL, close_fds=True)
            pid = self._proc.pid
        theirs.close()
        self._sock, self._pid = ours, pid

    def fork_pool(self, settings: dict, rank_fds: list[int]) -> PoolHandle:
        """Fork a pool whose rank r talks through rank_fds[r]; the caller keeps (and closes) its fds."""
        return self._request({"pool": settings}, rank_fds)

    def fork_call(self, target: str, argument: dict, *, env: dict[str, str] | None = None,
                  own_server: bool = False) -> PoolHandle:
        """Fork a process that runs `target(argument)` ("module:function"), under a leader as a pool's
        init is: the handle's init_pid is its pid, its status pipe says how it ended. It gets `env`
        first, then, with own_server, its own rank server forked from it before it imports `target`:
        the ranks hold nothing of a grading process's own modules."""
        return self._request({"call": target, "argument": argument, "env": env or {}, "own_server": own_server},
                             [])

    def _request(self, request: dict, fds: list[int]) -> PoolHandle:
        self.start()
        life_r, life_w = os.pipe()
        status_r, status_w = os.pipe()
        os.set_blocking(status_r, False)
        try:
            with self._lock:
                assert self._sock is not None
                socket.send_fds(self._sock, [json.dumps(request).encode()], [life_w, status_w, *fds])
                reply, _, _, _ = socket.recv_fds(self._sock, MAX_REQUEST, 0)
            if not reply:
                raise RuntimeError(f"the rank server exited (code {self._exit_code()})")
            answer = json.loads(reply)
            if "error" in answer:
                raise RuntimeError(f"the rank server could not fork: {answer['error']}")
        except BaseException:
            os.close(life_r)
            os.close(status_r)
            raise
        finally:
            os.close(life_w)
            os.close(status_w)
        return PoolHandle(answer["leader"], life_r, status_r)

    def _exit_code(self) -> int | None:
        if self._proc is not None:
            return self._proc.poll()
        try:
            pid, status = os.waitpid(self._pid, os.WNOHANG) if self._pid else (0, 0)
        except ChildProcessError:
            return None
        return os.waitstatus_to_exitcode(status) if pid else None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        elif self._pid is not None:
            _reap_within(self._pid, 5.0)
        self._proc = self._pid = None


def _reap_within(pid: int, timeout: float) -> None:
    """Wait for a child that was told to end; SIGKILL it after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return
        time.sleep(0.01)


_shared: Zygote | None = None


def shared() -> Zygote:
    """The process's zygote: started once; it runs no student code, so every grading session shares it."""
    global _shared
    if _shared is None:
        _shared = Zygote()
        atexit.register(_shared.close)
    return _shared


# --- the server side: everything below runs in the zygote and the processes it forks ------------

def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send `sig` when the parent exits; exit now if it already has."""
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:
        os._exit(1)


def _serve_forked(fd: int) -> None:
    """The child of Zygote.start(fork=True): drop what it inherited from the grader, then serve."""
    code = 1
    try:
        os.closerange(3, fd)
        os.closerange(fd + 1, os.sysconf("SC_OPEN_MAX"))
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        serve(fd)
        code = 0
    except KeyboardInterrupt:
        pass
    finally:
        os._exit(code)


def serve(fd: int) -> None:
    """The zygote's loop: import once, then fork a leader per request until the grader hangs up."""
    import importlib

    # It keeps no file of its own (a student's torch.compile caches in the case's folder: grader.worker),
    # so the kernel's SIGTERM, should the grader die first, has nothing left to clean up.
    die_with_parent(signal.SIGTERM)
    sock = socket.socket(fileno=fd)
    for name in PRELOAD:
        importlib.import_module(name)
    # Everything imported so far lives as long as the ranks: the collector need never walk it again,
    # and a rank's collections then write to none of its pages (no copy-on-write of the torch heap).
    gc.collect()
    gc.freeze()
    signal.signal(signal.SIGCHLD, lambda *_: _reap())
    _loop(sock)


def _loop(sock: socket.socket) -> None:
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, MAX_REQUEST, 64)
        except InterruptedError:
            continue
        if not msg:
            return
        try:
            settings = json.loads(msg)
            pid = os.fork()
        except Exception as e:
            for f in fds:
                os.close(f)
            sock.sendall(json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())
            continue
        if pid == 0:
            sock.close()
            _lead(settings, fds[0], fds[1], fds[2:])
        for f in fds:
            os.close(f)
        sock.sendall(json.dumps({"leader": pid}).encode())


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def _lead(request: dict, lifeline: int, status: int, rank_fds: list[int]) -> None:
    """A leader: for a pool, enter the sandbox's namespaces and fork init; for a call, fork the process
    that runs it. Either way report the child's pid on the lifeline and wait for it."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        die_with_parent()
        if "pool" in request:
            from grader import sandbox

            sandbox.enter(request["pool"]["sandbox"])
        pid = os.fork()
        if pid == 0:
            os.close(lifeline)
            if "pool" in request:
                _init(request["pool"], status, rank_fds)
            _call(request, status)
        for f in rank_fds:
            os.close(f)
        if "pool" in request:
            os.close(status)  # init reports the pool's ends; a call's end is this leader's to report
        os.write(lifeline, struct.pack("q", pid))
        _, wait_status = os.waitpid(pid, 0)
        if "call" in request:
            os.write(status, struct.pack("ii", pid, wait_status))
        code = 0
    finally:
        os._exit(code)


def _call(request: dict, status: int) -> None:
    """The process a call request forked: run target(argument), exit 0 when it returned."""
    import importlib
    import traceback

    code = 1
    try:
        os.close(status)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        die_with_parent(signal.SIGTERM)
        os.environ.update(request["env"])
        if request["own_server"]:
            shared().start(fork=True)
        module, name = request["call"].split(":")
        getattr(importlib.import_module(module), name)(request["argument"])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _init(settings: dict, status: int, rank_fds: list[int]) -> None:
    """PID 1 of the pool: fork the ranks, then reap until none is left; SIGTERM kills the whole pool."""
    code = 1
    try:
        die_with_parent()
        os.setsid()
        from grader import sandbox

        sandbox.become_init()
        signal.signal(signal.SIGTERM, lambda *_: _kill_descendants_and_exit())
        for rank, fd in enumerate(rank_fds):
            if os.fork() == 0:
                for other in (status, *rank_fds):
                    if other != fd:
                        os.close(other)
                _rank(settings, rank, fd)
        for fd in rank_fds:
            os.close(fd)
        while True:
            try:
                pid, code = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            os.write(status, struct.pack("ii", pid, code))
        code = 0
    finally:
        os._exit(code)


def _kill_descendants_and_exit() -> None:
    from grader import sandbox

    sandbox.kill_descendants(os.getpid())
    os._exit(0)


def _rank(settings: dict, rank: int, fd: int) -> None:
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        die_with_parent()
        from multiprocessing.connection import Connection

        from grader import worker

        worker.serve(Connection(fd), rank, settings)
        code = 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)
