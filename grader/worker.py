"""A rank process: joins a fresh process group per case, runs one check's task, sends the result up.

[How a rank lives]
The zygote forks P of these per pool (grader.zygote); they serve case after
case of one submission. A rank first confines itself (grader.sandbox: limits,
then the sandbox uid), then for each job:
  1. points fd 1 and 2 at this case's capture files and works in a folder of
     its own (the grader sends the files as descriptors: no rank can open
     another's by name),
  2. joins a new process group and starts the live trace. The rendezvous
     store is a TCP store that rank 0 serves for the pool's life (a prefix
     per case), so what moves through it is counted like any other traffic,
  3. tells the grader it is ready to start and waits for it: the case's
     budget counts from here (starting ranks, joining the group never spend
     it), and the grader opens its evidence window (socket counters, peak
     memory) before any student code of the case runs,
  4. imports the student's exercise module afresh through the adapter (the
     rank knows of its case only the job's Spec and its own inputs, cut to
     what the task reads) and runs the check's task, which calls the
     student's functions,
  5. tells the grader the call returned and waits while it reads the
     kernel's counts, then sends back the packed result (plain CPU tensors,
     serialised with torch.save so the grader can load it with
     weights_only=True) with the case's nonce, or the student's error with
     the line it came from.

[Messages up the pipe] one byte of kind, then its body:
  R {"rank", "pid", "store_port"}  ready, once, before any student code;
  S nonce            about to start the case (the grader replies G nonce);
  E nonce            the call returned (the grader replies F nonce);
  A nonce + bytes    the answer (torch.save of {"status", ...}).
[Messages down the pipe] a job (a dict, then its three file descriptors),
LEAVE once every rank of the case has answered, or None to end.
What a rank sends after student code ran is untrusted: the grader caps its
size, checks the nonce and believes the first answer only.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import shutil
import socket
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

KIT_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RankContext:
    """What a check's task sees in a rank: who it is, the case's Spec, its inputs, and the student's functions."""

    rank: int
    world_size: int
    group: Any
    group_rank: int | None
    group_size: int
    device: Any
    spec: Any
    inputs: dict
    submission: Any
    module: str
    extras: dict = field(default_factory=dict)

    @property
    def in_group(self) -> bool:
        return self.group_rank is not None

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the exercise's function `name` with these arguments."""
        return self.submission.call(self.module, name, *args, **kwargs)

    def call_in(self, module: str, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.submission.call(module, name, *args, **kwargs)

    def tensor(self, key: str) -> Any:
        """An input tensor, on this rank's device."""
        return self.inputs[key].to(self.device)


def pack(value: Any, depth: int = 0) -> Any:
    """Reduce a result to what the parent's weights_only loader accepts: plain CPU tensors and builtins."""
    import torch

    if isinstance(value, torch.Tensor):
        t = value.detach()
        if type(t) is not torch.Tensor:
            t = t.as_subclass(torch.Tensor)
        return t.cpu().contiguous().clone()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if depth < 4 and isinstance(value, (list, tuple)):
        return [pack(v, depth + 1) for v in value]
    if depth < 4 and isinstance(value, dict):
        return {str(k): pack(v, depth + 1) for k, v in value.items()}
    return {"__not_a_tensor__": type(value).__name__, "repr": repr(value)[:200]}


_store: Any = None  # the pool's rendezvous store: rank 0 serves it, the others connect on their first job
STORE_HOST = "127.0.0.1"


def _serve_store(rank: int) -> int | None:
    """Rank 0 starts the pool's store server (in a thread of its own); returns its port."""
    global _store
    if rank != 0:
        return None
    import torch.distributed as dist

    with _no_stderr():
        _store = dist.TCPStore(STORE_HOST, 0, is_master=True, wait_for_workers=False)
    return _store.port


@contextlib.contextmanager
def _no_stderr() -> Iterator[None]:
    """c10d warns on every store connection that it cannot name the peer: the name lookup needs a DNS the
    sandbox does not let a rank reach. Nothing a student should read in their case's output."""
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _case_store(job: dict) -> Any:
    import torch.distributed as dist

    global _store
    timeout = datetime.timedelta(seconds=job["pg_timeout"])
    if _store is None:
        with _no_stderr():
            _store = dist.TCPStore(STORE_HOST, job["store_port"], is_master=False, timeout=timeout)
    _store.set_timeout(timeout)
    return dist.PrefixStore(f"{job['nonce']}/", _store)


def _run_job(job: dict, rank: int, sync: Any, trace: Any) -> dict:
    import torch
    import torch.distributed as dist

    from grader import instrument, tasks
    from grader.adapter import StudentError, Submission

    _leave_group()
    world = job["world_size"]
    backend = job["backend"]
    device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=job["pg_timeout"])
    dist.init_process_group(backend, store=_case_store(job), rank=rank, world_size=world, timeout=timeout)
    submission = Submission(job["submission"], job["modules"])
    instrument.start(trace)
    try:
        group, group_rank, group_size = None, rank, world
        if job["group"]:
            group = dist.new_group(list(job["group"]))
            group_rank = job["group"].index(rank) if rank in job["group"] else None
            group_size = len(job["group"])
        # popped: the student's code, which can walk up to this frame, finds no other rank's inputs
        inputs = torch.load(io.BytesIO(job.pop("inputs")), weights_only=True)
        task = tasks.get(job["exercise"], job["check"])
        ctx = RankContext(rank=rank, world_size=world, group=group, group_rank=group_rank,
                          group_size=group_size, device=device, spec=tasks.Spec(**job["spec"]), inputs=inputs,
                          submission=submission, module=job["module"])
        # Reproducible, and telling nothing of the case. Not torch.manual_seed: it also queues a lazy seed
        # per accelerator type, each with a stack trace, 0.9 of a rank's 7.4 ms of Python in a trivial case.
        torch.default_generator.manual_seed(rank)
        if device.type == "cuda":
            torch.cuda.manual_seed(rank)
        _torn_down()  # the last case's group is gone: its sockets closing in the window would skew the counts
        # The evidence window opens before the student's module runs at all: what its import does counts.
        sync(b"S", b"G")
        try:
            submission.module(job["module"])
        except StudentError as e:
            if e.kind != "missing":
                return {"status": "error", "kind": e.kind, "message": e.message, "function": e.function,
                        "where": e.where, "traceback": e.tb}
        try:
            payload = task(ctx) if ctx.in_group else {}
        except StudentError as e:
            return {"status": "error", "kind": e.kind, "message": e.message, "function": e.function,
                    "where": e.where, "traceback": e.tb}
        sync(b"E", b"F")  # the window closes before the answer is packed
        if not dist.is_initialized():
            return {"status": "error", "kind": "exception", "function": "",
                    "message": "the process group was destroyed during the call", "where": "", "traceback": ""}
        return {"status": "ok", "payload": pack(payload)}
    finally:
        instrument.stop()
        submission.close()


#: The grader's word that every rank of the case has answered: leave its group now.
LEAVE = "leave"


def _leave_group() -> None:
    """Leave the previous case's process group.

    A rank keeps its group until every rank has answered (the grader then
    sends LEAVE) or the next job arrives, not just until it has answered
    itself: a rank that returned early (correctly or not) must not tear its
    connections down under ranks that still wait on it, or their honest hang
    would surface as a misleading "connection closed by peer".

    The groups' C++ teardown (gloo joins its threads and closes a pair per
    peer: 20-40 ms a rank, nearly all of it waiting) runs in a thread of its
    own, beside the grader's judging and the next group's rendezvous;
    `_torn_down` waits for it before the next case's window opens, so its
    CPU never counts in a case.
    """
    global _teardown
    import torch.distributed as dist
    from torch.distributed.distributed_c10d import _world

    if not dist.is_initialized():
        return
    _torn_down()
    groups = list(_world.pg_names)  # the last references once torch forgets them: the thread drops them
    dist.destroy_process_group()
    _teardown = threading.Thread(target=groups.clear, name="cplab-teardown", daemon=True)
    del groups
    _teardown.start()


_teardown: threading.Thread | None = None
TEARDOWN_WAIT = 30.0  # seconds, a guard: 41 ms at most measured, also with a stray send, recv or all_reduce pending


def _torn_down() -> None:
    """Wait for the last group's teardown (see _leave_group)."""
    global _teardown
    if _teardown is not None:
        _teardown.join(TEARDOWN_WAIT)
        _teardown = None


def _steady_memory() -> None:
    """Make the kernel's peak resident memory of a call follow the tensors the call held.

    glibc raises its mmap threshold after the first large free, after which
    freed tensors stay resident in the heap; a fixed threshold returns every
    large tensor to the kernel when it is freed. The first ops a process runs
    also allocate for good (kernels' workspaces, the autograd engine): paid here,
    before any case, they do not count in the first case's peak.
    """
    import ctypes

    import torch

    m_mmap_threshold, m_arena_max = -3, -8
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(m_mmap_threshold, 1 << 16)
        libc.mallopt(m_arena_max, 1)  # gloo's threads, started in a first case, get no arena of their own
    except (OSError, AttributeError):
        pass
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        q = torch.randn(1, 2, 16, 8, dtype=dtype, requires_grad=True)
        scores = (q @ q.transpose(-1, -2)).masked_fill(torch.ones(16, 16, dtype=torch.bool).triu(1), float("-inf"))
        out = torch.softmax(scores, -1) @ q
        (out.sum() + torch.logsumexp(scores, -1).sum() + torch.cat([q, q], 2).exp().sum()).backward()


def serve(conn: Any, rank: int, settings: dict) -> None:
    """A forked rank's life: confine itself, say it is ready, serve jobs until the grader sends None."""
    import torch

    from grader import adapter, instrument, sandbox

    sandbox.confine(settings["sandbox"], rank)
    instrument.install()
    adapter.isolate(KIT_ROOT)
    torch.set_num_threads(1)
    _steady_memory()
    hello = {"rank": rank, "pid": os.getpid(), "exposed": sandbox.audit(settings["sandbox"]),
             "store_port": _serve_store(rank)}
    conn.send_bytes(b"R" + json.dumps(hello).encode())
    files = socket.socket(fileno=os.dup(conn.fileno()))  # the same pipe, read for the descriptors it carries
    folder = None
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            _leave_group()
            _torn_down()
            return
        if job == LEAVE:
            _leave_group()
            continue
        _, (stdout, stderr, trace), _, _ = socket.recv_fds(files, 1, 3)
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
        folder = job["workdir"]
        os.makedirs(folder, mode=0o700, exist_ok=True)
        os.chdir(folder)
        # a student's torch.compile caches here, and the case's folder goes with the case
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(folder, "torch-cache")
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, target in ((stdout, 1), (stderr, 2)):
            os.dup2(fd, target)
            os.close(fd)
        try:
            nonce = job["nonce"].encode()

            def sync(say: bytes, wait_for: bytes) -> None:
                """Tell the grader where this rank is, and wait until it has read the kernel's counts."""
                conn.send_bytes(say + nonce)
                if conn.recv_bytes(64) != wait_for + nonce:
                    raise RuntimeError(f"the grader's reply to {say!r} was not {wait_for!r}")

            with open(trace, "w", buffering=1) as trace_file:
                result = _run_job(job, rank, sync, trace_file)
        except BaseException:
            result = {"status": "grader_error", "message": traceback.format_exc()[-2000:]}
        sys.stdout.flush()
        sys.stderr.flush()
        buf = io.BytesIO()
        torch.save(result, buf)
        conn.send_bytes(b"A" + job["nonce"].encode() + buf.getvalue())
