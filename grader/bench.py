"""The bench: what each distributed attention of a submission costs, measured in its ranks, beside the closed form.

[What is measured]
For all-gather KV (ex3), Ulysses (ex4) and ring attention (ex5), every scheme
and every P asked for, the student's function runs in the kit's sandboxed
rank pools (grader.runner), as in grading, through the rank task
grader/tasks/bench.py. Per rank:
  - bytes sent and received, forward and backward, read from the
    communication record (grader.instrument) by the rules of TRAFFIC below;
  - peak live tensor bytes of one forward (grader.probes; inputs not counted);
  - attention FLOPs of one forward (torch.utils.flop_counter: matmuls);
  - wall time of the forward and, where the output requires grad, of the
    backward (the median of `reps` runs, each started after a barrier).
The parent also judges each rank's output against the float64 single-device
attention (every query row, or a spread sample of rows per rank where the
scores would not fit), so a figure from a wrong implementation says so.

[The closed forms] (FORMULAS; n = S/P tokens per rank, M = B·H·n·D·bytes,
one K shard; F = 4·B·H·n²·D, the FLOPs of one n x n block, q·kᵀ then p·v)
  all-gather KV  sent = received = 2(P-1)·M, both ways again in the backward
                 (a reduce-scatter); FLOPs P·F on every rank (n queries x S
                 keys, masked, not skipped); holds the whole K/V: 2P·M.
  Ulysses        sent = received = 4·(P-1)/P·M (q, k, v in, the output back);
                 the backward the same; FLOPs P·F (S x S for H/P heads);
                 holds q, k, v, out for H/P heads and all S tokens: 4M.
  ring           sent = received = 2(P-1)·M; the backward adds the dK/dV
                 accumulators' P hops, 2P·M (in the compute dtype); holds two
                 K/V buffers, 4M, whatever P. FLOPs, computing only the
                 visible rectangle of each block: contiguous (r+1)·F on rank r,
                 zigzag (P+1)/2·F on every rank, striped
                 ((r+1)·n² + (P-1-r)·(n-1)²)/n²·F.
Memory adds the score matrices, which the closed form counts as held in the
compute dtype: n x S per head for all-gather and Ulysses (S x S for H/P heads
is the same size), n x n for the ring.

By default P grows with the sequence (weak scaling, `tokens_per_rank` fixed):
the regime context parallelism is for, where the ring's memory stays flat and
all-gather's grows. A fixed `seq_len` gives the strong-scaling view instead.
"""

from __future__ import annotations

import csv
import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from grader import grading, manifest as manifest_mod, reference
from grader.compare import tolerance
from grader.runner import RankOutcome, Runner, RunOutcome
from grader.tasks import DTYPES, Spec
from grader.verdict import Kind

STRATEGIES = {"ex3": ("all-gather KV", "all_gather_kv_attention"),
              "ex4": ("Ulysses", "ulysses_attention"),
              "ex5": ("ring", "ring_attention")}
WORLD_SIZES = (1, 2, 4, 8)
BUDGET = 60.0  # CPU seconds a rank may spend on one configuration's phases (the runner's budget)

FORMULAS = {
    "ex3": {"bytes": "2(P-1)·M", "backward bytes": "2(P-1)·M", "flops": "P·F",
            "memory": "2P·M (K, V) + B·H·n·S·c (scores)"},
    "ex4": {"bytes": "4(P-1)/P·M", "backward bytes": "4(P-1)/P·M", "flops": "P·F",
            "memory": "4M (q, k, v, out by heads) + B·H·n·S·c (scores)"},
    "ex5": {"bytes": "2(P-1)·M", "backward bytes": "2(P-1)·M + 2P·M_c", "flops": {
        "contiguous": "(r+1)·F", "zigzag": "(P+1)/2·F", "striped": "((r+1)n² + (P-1-r)(n-1)²)/n²·F"},
            "memory": "4M (two K/V buffers) + B·H·n·n·c (one block's scores)"},
}
LEGEND = ("n = S/P tokens per rank; M = B·H·n·D·(bytes per element), one K shard; M_c the same in the compute "
          "dtype (c bytes: float64 for float64, else float32); F = 4·B·H·n²·D, the FLOPs of one n x n block")

# How a record's call turns into bytes that leave this rank for others and arrive from them. A collective
# lists its output(s) and input(s): the all-gather family P+1 equal parts (P out, 1 in), reduce-scatter
# 1 out and P in, all-to-all as much out as in. Anything else (the small flags a solution may all-reduce)
# counts its tensors' bytes both ways.
GATHER = {"all_gather", "all_gather_into_tensor", "all_gather_single", "_all_gather_base"}
REDUCE_SCATTER = {"reduce_scatter", "reduce_scatter_tensor", "reduce_scatter_single", "_reduce_scatter_base"}
ALL_TO_ALL = {"all_to_all", "all_to_all_single"}
SEND, RECV = {"send", "isend"}, {"recv", "irecv"}
SILENT = {"barrier", "monitored_barrier"}


def traffic(call: dict, world_size: int) -> tuple[int, int]:
    """(bytes sent, bytes received) by this rank in one recorded call."""
    op, p = call.get("op", ""), len(call.get("group") or []) or world_size
    total = sum(t["bytes"] for t in call.get("tensors") or [])
    if op in SEND:
        return total, 0
    if op in RECV:
        return 0, total
    if op in GATHER or op in REDUCE_SCATTER:
        part = total // (p + 1)  # one rank's slice
        return (p - 1) * part, (p - 1) * part
    if op in ALL_TO_ALL:
        moved = total // 2 * (p - 1) // p  # all but the chunk a rank keeps for itself
        return moved, moved
    if op in SILENT:
        return 0, 0
    return total, total


@dataclass(frozen=True)
class Sizes:
    """The attention shapes of the sweep; the defaults run the whole bench in under a minute on 2 cores."""

    batch: int = 1
    heads: int = 8             # Ulysses needs P | H: 8 allows every default P
    head_dim: int = 16
    tokens_per_rank: int = 64  # weak scaling: S = P·n (even, for zigzag's 2P chunks)
    seq_len: int | None = None  # strong scaling instead: the same S for every P
    dtype: str = "float32"

    def seq(self, world_size: int) -> int:
        return self.seq_len or world_size * self.tokens_per_rank

    def problem(self, world_size: int) -> str:
        """Why this P cannot run at these sizes, or ''."""
        s = self.seq(world_size)
        if s % (2 * world_size):
            return f"S = {s} is not divisible by 2P = {2 * world_size} (zigzag's chunks)"
        return ""


@dataclass
class Row:
    """One rank's figures for one (exercise, scheme, P), each beside its prediction."""

    exercise: str
    strategy: str
    scheme: str
    world_size: int
    seq_len: int
    rank: int
    sent: int
    received: int
    bytes_formula: int
    backward_sent: int | None
    backward_received: int | None
    backward_bytes_formula: int
    peak_bytes: int
    memory_formula: int
    flops: int
    flops_formula: int
    forward_s: float
    backward_s: float | None
    correct: bool
    max_error: float


@dataclass
class Bench:
    """A bench run: per-rank rows, exercises left out (and why), configurations that failed."""

    sizes: Sizes
    rows: list[Row] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def element_bytes(dtype: str) -> tuple[int, int]:
    """(bytes of the dtype, bytes of the compute dtype the solutions accumulate in)."""
    e = DTYPES[dtype].itemsize
    return e, 8 if dtype == "float64" else 4


def predict(exercise: str, scheme: str, sizes: Sizes, p: int, rank: int) -> dict[str, int]:
    """The closed forms of the module docstring, for one rank."""
    b, h, d = sizes.batch, sizes.heads, sizes.head_dim
    s = sizes.seq(p)
    n = s // p
    e, c = element_bytes(sizes.dtype)
    m, m_c = b * h * n * d * e, b * h * n * d * c
    block = 4 * b * h * n * n * d
    if exercise == "ex3":
        return {"bytes": 2 * (p - 1) * m, "backward": 2 * (p - 1) * m, "flops": p * block,
                "memory": 2 * p * m + b * h * n * s * c}
    if exercise == "ex4":
        return {"bytes": 4 * (p - 1) * m // p, "backward": 4 * (p - 1) * m // p, "flops": p * block,
                "memory": 4 * m + b * h * n * s * c}
    if scheme == "contiguous":
        flops = (rank + 1) * block
    elif scheme == "zigzag":
        flops = block + (p - 1) * block // 2
    else:
        flops = 4 * b * h * d * ((rank + 1) * n * n + (p - 1 - rank) * (n - 1) ** 2)
    return {"bytes": 2 * (p - 1) * m, "backward": 2 * (p - 1) * m + (2 * p * m_c if p > 1 else 0),
            "flops": flops, "memory": 4 * m + b * h * n * n * c}


def _window(outcome: RankOutcome, marks: dict, phase: str, world_size: int) -> tuple[int, int] | None:
    if phase not in marks:
        return None
    lo, hi = marks[phase]
    sent = received = 0
    for call in outcome.trace:
        if lo < call["call"] <= hi and call.get("done", True):
            s, r = traffic(call, world_size)
            sent, received = sent + s, received + r
    return sent, received


def inputs(sizes: Sizes, p: int, scheme: str, seed: int = 0) -> tuple[list[dict], dict]:
    """Per-rank shards of q, k, v and an upstream gradient; the full float64 tensors for the reference."""
    s = sizes.seq(p)
    gen = torch.Generator().manual_seed(seed)
    shape = (sizes.batch, sizes.heads, s, sizes.head_dim)
    full = {name: torch.randn(*shape, generator=gen, dtype=torch.float64) for name in ("q", "k", "v", "g")}
    dtype = DTYPES[sizes.dtype]
    ranks = [{name: reference.shard(t, r, p, 2, scheme).to(dtype) for name, t in full.items()} for r in range(p)]
    return ranks, full


@dataclass(frozen=True)
class _Config:
    """What grading.backend_for and grading.diagnose read of a case."""

    world_size: int
    timeout: float = BUDGET


LEFT_OUT = (Kind.NOT_IMPLEMENTED, Kind.MISSING, Kind.SYNTAX_ERROR)


def job_for(manifest: manifest_mod.Manifest, sizes: Sizes, exercise: str, scheme: str, p: int, reps: int) -> dict:
    """The rank job of one configuration, less where the submission is and the backend."""
    s = sizes.seq(p)
    spec = Spec(exercise=exercise, check="bench", world_size=p, scheme=scheme, dtype=sizes.dtype,
                shape={"B": sizes.batch, "H": sizes.heads, "S": s, "D": sizes.head_dim},
                params={"function": STRATEGIES[exercise][1], "reps": reps}, members=tuple(range(p)))
    return {"module": manifest.exercise(exercise).module, "exercise": "bench", "check": "attention",
            "spec": dataclasses.asdict(spec), "group": None}


# The float64 reference checks every query row while its scores fit in REFERENCE_ELEMENTS, else a spread
# sample of SAMPLE_ROWS rows per rank, in chunks: a GPU box's sizes never need the full S x S matrix.
REFERENCE_ELEMENTS = 1 << 24
SAMPLE_ROWS = 64
CHUNK_ELEMENTS = 1 << 23


def output_error(got, full: dict, dtype: str, positions: torch.Tensor, tol) -> tuple[float, bool]:
    """(largest |got - reference|, whether every element is within tol) over one rank's checked query rows."""
    q, k, v = (full[n].to(DTYPES[dtype]).double() for n in ("q", "k", "v"))
    b, h, s, _ = q.shape
    n = len(positions)
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != (b, h, n, q.shape[3]):
        return float("inf"), False
    rows = torch.arange(n)
    if b * h * n * s > REFERENCE_ELEMENTS:
        rows = torch.linspace(0, n - 1, min(n, SAMPLE_ROWS)).round().long().unique()
    step = max(1, CHUNK_ELEMENTS // (b * h * s))
    worst, within = 0.0, True
    for chunk in rows.split(step):
        pos = positions[chunk]
        want, _ = reference.causal_attention(q[:, :, pos], k, v, q_pos=pos, k_pos=torch.arange(s))
        error = (got[:, :, chunk].double() - want).abs()
        worst = max(worst, float(error.max()))
        within = within and bool((error <= tol.allowed(want)).all())
    return worst, within


def record(bench: Bench, exercise: str, scheme: str, p: int, run: RunOutcome, full: dict) -> bool:
    """The rows of one configuration's run into `bench`; False, and why in `bench`, when it gave none."""
    sizes = bench.sizes
    strategy = STRATEGIES[exercise][0]
    verdict = grading.diagnose(_Config(p), run)
    if verdict is not None:
        if verdict.kind in LEFT_OUT:
            bench.left_out[exercise] = f"{exercise} ({strategy}) left out: {verdict.message}"
        else:
            bench.failures.append(f"{exercise} {scheme} P={p}: {verdict.kind.value}: {verdict.message}")
        return False
    tol = tolerance(sizes.dtype, p)
    for r, o in enumerate(run.ranks):
        got, marks = o.payload.get("out"), o.payload.get("marks", {})
        error, correct = output_error(got, full, sizes.dtype, reference.positions(sizes.seq(p), r, p, scheme), tol)
        fwd, bwd = _window(o, marks, "forward", p), _window(o, marks, "backward", p)
        formula = predict(exercise, scheme, sizes, p, r)
        bench.rows.append(Row(
            exercise=exercise, strategy=strategy, scheme=scheme, world_size=p, seq_len=sizes.seq(p), rank=r,
            sent=fwd[0], received=fwd[1], bytes_formula=formula["bytes"],
            backward_sent=bwd[0] if bwd else None, backward_received=bwd[1] if bwd else None,
            backward_bytes_formula=formula["backward"], peak_bytes=int(o.payload.get("peak_bytes", 0)),
            memory_formula=formula["memory"], flops=int(o.payload.get("flops", 0)),
            flops_formula=formula["flops"], forward_s=statistics.median(o.payload["forward_s"]),
            backward_s=statistics.median(o.payload["backward_s"]) if o.payload.get("backward") else None,
            correct=correct, max_error=error))
    errors = {o.payload["backward_error"] for o in run.ranks if o.payload.get("backward_error")}
    if errors:
        bench.failures.append(f"{exercise} {scheme} P={p}: backward raised {sorted(errors)[0]}")
    # Ranks wait for each other: a configuration takes as long as its slowest rank.
    for field_name in ("forward_s", "backward_s"):
        rows = bench.rows[-p:]
        values = [getattr(row, field_name) for row in rows]
        if None not in values:
            for row in rows:
                setattr(row, field_name, max(values))
    return True


class Session:
    """One submission's bench: its staged copy and rank pools live as long as the session."""

    def __init__(self, submission: str | Path, manifest: manifest_mod.Manifest, *, backend: str = "gloo"):
        self.manifest = manifest
        self.directory = grading.locate(submission, manifest)
        self.modules = [ex.module for ex in manifest.exercises]
        self.backend = backend
        self.runner = Runner(hide=[self.directory])
        self.staged = self.runner.stage(self.directory, self.modules)

    def measure(self, bench: Bench, exercise: str, scheme: str, p: int, reps: int) -> None:
        """One configuration's rows into `bench`, or why it gave none."""
        backend, skip = grading.backend_for(_Config(p), self.backend)
        if skip:
            bench.notes.append(f"{exercise} {scheme} P={p}: skipped, {skip}")
            return
        job = job_for(self.manifest, bench.sizes, exercise, scheme, p, reps)
        job.update(submission=str(self.staged), modules=self.modules, backend=backend)
        ranks, full = inputs(bench.sizes, p, scheme)
        run = self.runner.pool(p).run(job, ranks, BUDGET)
        if not record(bench, exercise, scheme, p, run, full):
            self.runner.pool(p).recycle()  # as in grading: nothing a failed run left reaches the next

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def plan(exercises: Sequence[str], schemes: Sequence[str], world_sizes: Sequence[int]) -> list[tuple[str, str, int]]:
    return [(ex, scheme, p) for ex in exercises for p in world_sizes for scheme in schemes]


def run(submission: str | Path, manifest: manifest_mod.Manifest, sizes: Sizes, *,
        exercises: Sequence[str] = tuple(STRATEGIES), schemes: Sequence[str] = reference.SCHEMES,
        world_sizes: Sequence[int] = WORLD_SIZES, reps: int = 2, backend: str = "gloo",
        on_step: Callable[[str], None] | None = None) -> Bench:
    """Measure every configuration of the sweep; `on_step` hears of each as it starts."""
    bench = Bench(sizes)
    for p in world_sizes:
        if sizes.problem(p):
            bench.notes.append(f"P={p} left out: {sizes.problem(p)}")
    usable = [p for p in world_sizes if not sizes.problem(p)]
    with Session(submission, manifest, backend=backend) as session:
        session.runner.prestart(usable)
        for exercise, scheme, p in plan(exercises, schemes, usable):
            if on_step:
                on_step(f"{exercise} {scheme} P={p}")
            if exercise in bench.left_out:
                continue
            if exercise == "ex4" and sizes.heads % p:
                note = f"ex4 (Ulysses) P={p} left out: needs P to divide H = {sizes.heads}"
                if note not in bench.notes:
                    bench.notes.append(note)
                continue
            session.measure(bench, exercise, scheme, p, reps)
    return bench


def write_csv(bench: Bench, path: Path) -> None:
    """One line per rank and configuration: every measured figure beside its closed form."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in dataclasses.fields(Row)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(names)
        for row in bench.rows:
            w.writerow(["" if v is None else v for v in (getattr(row, n) for n in names)])
