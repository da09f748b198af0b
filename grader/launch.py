"""`torchrun ... -m grader.launch {check,bench} SUBMISSION`: the kit's checks and bench in torchrun's processes.

    torchrun --nproc-per-node=4 -m grader.launch check solutions
    torchrun --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        -m grader.launch bench path/to/submission --tokens-per-rank 4096

[How a case runs here]
The same checks as `grade`, judged by the same code; only the processes
differ. torchrun starts the ranks and rendezvouses them (env://); each joins
one process group, NCCL when every rank has a GPU (rank on cuda:LOCAL_RANK),
gloo otherwise, plus a gloo group for the kit's own messages. For each case
rank 0 makes the inputs and the float64 reference (grader/checks), scatters
each rank its own inputs, every rank runs the case's task
(grader/tasks) on the student's functions with its communication recorded
(grader.instrument), and rank 0 gathers the results and judges them
(grader.grading.diagnose, then the check's judge). A case of P ranks runs on
ranks 0..P-1 (a subgroup when torchrun started more), one of more ranks than
torchrun started is skipped.

What the kit's pools add and this does not: no sandbox (a cluster job runs as
its user already), no per-case CPU budget (a hang ends at the process
group's timeout, --timeout), and no fresh ranks after a failed case.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from grader import instrument, manifest as manifest_mod, tasks
from grader.adapter import StudentError, Submission
from grader.runner import RankOutcome, RunOutcome
from grader.worker import RankContext, pack

TIMEOUT = 120.0  # seconds the process group waits in one collective before it fails


class World:
    """This torchrun process: its rank, its device, its groups."""

    def __init__(self, timeout: float):
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        self.backend = "nccl" if gpus >= local_size and dist.is_nccl_available() else "gloo"
        self.device = torch.device(f"cuda:{self.local_rank}") if self.backend == "nccl" else torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        dist.init_process_group(self.backend, timeout=datetime.timedelta(seconds=timeout))
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        # Objects travel on gloo: NCCL moves CUDA tensors only.
        self.control = dist.new_group(backend="gloo") if self.backend == "nccl" else None
        self.traces = tempfile.mkdtemp(prefix="cplab-launch-")
        self._groups: dict[tuple[int, ...], Any] = {}
        instrument.install()

    def group(self, members: tuple[int, ...]) -> Any:
        """The process group of these global ranks; None for all of them. Every rank must ask, in order."""
        if members == tuple(range(self.size)):
            return None
        if members not in self._groups:
            self._groups[members] = dist.new_group(list(members))
        return self._groups[members]

    def run(self, job: dict, inputs: list[dict] | None, members: tuple[int, ...], directory: Path,
            modules: list[str]) -> RunOutcome | None:
        """Run one job on `members`; rank 0 gets every rank's outcome, the others None.

        `inputs` (rank 0 only) holds one dict per global rank of the job's world.
        """
        world = job["world_size"]
        mine: list[Any] = [None]
        scattered = None
        if self.rank == 0:
            scattered = [inputs[r] if r < len(inputs) else {} for r in range(self.size)]
        dist.scatter_object_list(mine, scattered, src=0, group=self.control)
        group = self.group(members)
        start = time.monotonic()
        answer = self._task(job, mine[0], group, members, directory, modules) if self.rank in members else None
        trace = instrument.read(self._trace_path()) if self.rank in members else []
        gathered: list[Any] = [None] * self.size if self.rank == 0 else None
        dist.gather_object({"answer": answer, "trace": trace}, gathered, dst=0, group=self.control)
        if self.rank != 0:
            return None
        outcomes = []
        for r in range(world):
            got = gathered[r]
            answer = got["answer"] or {"status": "ok", "payload": {}}
            status = answer["status"]
            outcome = RankOutcome(r, status, payload=answer.get("payload"),
                                  error=answer if status != "ok" else {}, trace=got["trace"])
            outcomes.append(outcome)
        return RunOutcome(outcomes, time.monotonic() - start)

    def _trace_path(self) -> str:
        return os.path.join(self.traces, f"trace{self.rank}")

    def _task(self, job: dict, inputs: dict, group: Any, members: tuple[int, ...], directory: Path,
              modules: list[str]) -> dict:
        """The worker's part (grader.worker._run_job) without its process group and sandbox."""
        submission = Submission(str(directory), modules)
        instrument.start(self._trace_path())
        try:
            spec = tasks.Spec(**job["spec"])
            ctx = RankContext(rank=self.rank, world_size=job["world_size"], group=group,
                              group_rank=members.index(self.rank), group_size=len(members), device=self.device,
                              spec=spec, inputs=inputs, submission=submission, module=job["module"])
            torch.manual_seed(self.rank)
            try:
                submission.module(job["module"])
            except StudentError as e:
                if e.kind != "missing":  # a missing file fails at the task's first call, naming the function
                    raise
            return {"status": "ok", "payload": pack(tasks.get(job["exercise"], job["check"])(ctx))}
        except StudentError as e:
            return {"status": "error", "kind": e.kind, "message": e.message, "function": e.function,
                    "where": e.where, "traceback": e.tb}
        except Exception:
            return {"status": "grader_error", "message": traceback.format_exc()[-2000:]}
        finally:
            instrument.stop()
            submission.close()

    def close(self) -> None:
        dist.destroy_process_group()
        shutil.rmtree(self.traces, ignore_errors=True)


def check(world: World, args: argparse.Namespace) -> int:
    """The manifest's cases (public and hidden, as `grade`), judged on rank 0 by the kit's checks."""
    from grader import checks, grading, report
    from grader.verdict import Kind, fail

    m = manifest_mod.load(args.manifest)
    cases = m.select(args.exercises or None, hidden=not args.public_only)
    directory = grading.locate(args.submission, m)
    modules = [ex.module for ex in m.exercises]
    results = []
    for case in cases:
        exercise = m.exercise(case.exercise)
        check_ = checks.get(case.exercise, case.check)
        nranks = check_.ranks(case)
        if nranks > world.size:
            results.append(grading.CaseResult(case, fail(Kind.SKIPPED, f"needs {nranks} ranks, torchrun started "
                                                                       f"{world.size}")))
            continue
        members = tuple(case.group) if case.group and nranks > 1 else tuple(range(nranks))
        job = {"module": exercise.module, "exercise": case.exercise, "check": case.check,
               "spec": dataclasses.asdict(tasks.Spec.of(case)), "world_size": nranks}
        inputs = check_.inputs(case) if world.rank == 0 else None
        start = time.monotonic()
        run = world.run(job, check_.rank_inputs(inputs) if inputs else None, members, directory, modules)
        if world.rank != 0:
            continue
        verdict = grading.diagnose(case, run)
        if verdict is None:
            try:
                verdict = check_.judge(case, inputs, run.ranks)
            except Exception as e:
                verdict = fail(Kind.GRADER_ERROR, f"judging failed: {type(e).__name__}: {e}")
        if not verdict.passed and not verdict.hint:
            verdict.hint = exercise.hint(verdict.kind.name.lower())
        results.append(grading.CaseResult(case, verdict, seconds=time.monotonic() - start))
        print("." if verdict.passed else ("s" if verdict.skipped else "F"), end="", file=sys.stderr, flush=True)
    if world.rank != 0:
        return 0
    print(file=sys.stderr)
    for r in results:
        if not r.ok:
            print(report.failure(r, show_output=False))
    print(report.score_table(results, m))
    return 0 if all(r.ok for r in results) else 1


def bench(world: World, args: argparse.Namespace) -> int:
    """The bench at P = torchrun's world size; rank 0 prints the table and writes the CSV and PNGs."""
    from grader import bench as bench_mod, grading
    from grader.commands.bench import sizes_of, show

    m = manifest_mod.load(args.manifest)
    directory = grading.locate(args.submission, m)
    modules = [ex.module for ex in m.exercises]
    sizes = sizes_of(args)
    p = world.size
    result = bench_mod.Bench(sizes)
    if sizes.problem(p):
        result.notes.append(f"P={p} left out: {sizes.problem(p)}")
    members = tuple(range(p))
    for exercise, scheme, _ in bench_mod.plan(args.exercises, args.schemes, [] if sizes.problem(p) else [p]):
        if exercise in result.left_out:
            continue
        if exercise == "ex4" and sizes.heads % p:
            result.notes.append(f"ex4 (Ulysses) P={p} left out: needs P to divide H = {sizes.heads}")
            continue
        job = {**bench_mod.job_for(m, sizes, exercise, scheme, p, args.reps), "world_size": p}
        ranks, full = bench_mod.inputs(sizes, p, scheme) if world.rank == 0 else (None, None)
        run = world.run(job, ranks, members, directory, modules)
        if world.rank == 0:
            bench_mod.record(result, exercise, scheme, p, run, full)
        # every rank must skip what rank 0 skips: the outcome is rank 0's
        shared = [result.left_out]
        dist.broadcast_object_list(shared, src=0, group=world.control)
        result.left_out = shared[0]
    if world.rank != 0:
        return 0
    return show(result, Path(args.out))


def parser() -> argparse.ArgumentParser:
    from grader.commands import bench as bench_cmd

    p = argparse.ArgumentParser(prog="torchrun ... -m grader.launch", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    c = sub.add_parser("check", help="grade SUBMISSION on the manifest's cases in torchrun's processes")
    c.add_argument("submission", metavar="SUBMISSION", help="folder holding the exercise files, directly or under "
                                                           "exercises/")
    c.add_argument("exercises", nargs="*", metavar="EXERCISE", help="exercise ids, e.g. ex3 ex5 (default: all)")
    c.add_argument("--public-only", action="store_true", help="leave out the hidden cases")
    c.add_argument("--manifest", default=None, help="the lab manifest (default: the kit's lab_manifest.yaml)")
    b = sub.add_parser("bench", help="the bench at P = the number of torchrun processes")
    bench_cmd.configure(b, world_sizes=False)
    for sp in (c, b):
        sp.add_argument("--timeout", type=float, default=TIMEOUT,
                        help=f"seconds a collective may wait before the job fails (default: {TIMEOUT:g})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "bench" and args.submission is None:
        from grader.commands.check import default_submission

        args.submission = str(default_submission())
    world = World(args.timeout)
    try:
        return (check if args.command == "check" else bench)(world, args)
    finally:
        world.close()


if __name__ == "__main__":
    sys.exit(main())
