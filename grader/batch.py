"""Batch grading of a class: one isolated process per submission, resumable, into a CSV, a summary and a plot.

[How a batch runs]
SUBMISSIONS_DIR holds one folder per student. Each student's results go to
results/<student>.json beside the CSV, in Gradescope's format, with an
`extra_data.cplab` record: a fingerprint of what was graded (the exercise
files, the manifest file's bytes, the selected cases, the backend, and the
kit: the bytes of every .py and .yaml file of the grader package and torch's
version), the points per exercise, the failure kinds and, when grading
failed, why.
  1. A student whose results file carries the current fingerprint is done
     and is not graded again; a changed submission, manifest or grader is.
     The grader's files are hashed once per run, when it plans, and again
     when its grading is over: if they changed in between (a submission that
     rewrites the grader on disk, say), every result of the run is void and
     reads so, and the next run grades those students again.
  2. Every other submission is graded by `grading.grade` in its own
     process with its own TMPDIR, so its rank pools, files and modules never
     meet another submission's. Up to `jobs` run at once.
  3. A worker writes its results file atomically when grading finished (or
     raised: then score 0 and the reason). When it died or ran past its
     limit, the batch writes that file instead: score 0, one "autograder
     failed" test, the reason. Every student gets a row.
  4. The CSV, summary and plot are rebuilt from the results files once every
     student is done, so they never mix a half-finished run into a full one.
A killed batch leaves only whole results files behind (each written to a
temp file, then renamed); rerunning it grades what is missing.

[How a worker starts]
The batch has one server (grader.zygote), a fork of `python -m grader batch`
made as it starts. Every worker is a fork of that server, and the worker's
rank server a fork of the worker, made before the worker imports anything of
the grader's own. So a submission pays no torch import at all: 4 copies of solutions/ with --jobs 2 went from
15.1 to 10.1 CPU-s per submission, 6.3 to 9.0 a minute
(python benchmarks/batch_throughput.py --submissions 4 --jobs 2).

Each level dies with its parent (PR_SET_PDEATHSIG): the server with the batch,
a worker with the server's leader that waits for it (SIGTERM: it closes its
rank pools on the way out), and its ranks with it.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Callable

import grader
from grader import grading, report, results_json, zygote
from grader.manifest import Case, Manifest
from grader.manifest import load as load_manifest
from grader.runner import STARTUP_TIMEOUT

STOP_GRACE = 10.0  # seconds a stopped worker gets to close its rank pools before SIGKILL
FAILED_TEST = "autograder failed"
GRADER_ROOT = Path(grader.__file__).resolve().parent  # the installed grader package, as this process imports it
VOID = "void"  # the fingerprint of a result graded while the grader's files changed: it never matches


class BatchError(ValueError):
    """A batch that cannot start (no submission folders, an unusable out path)."""


@dataclass(frozen=True)
class Settings:
    """What every submission of one batch is graded with."""

    manifest: Path
    exercises: tuple[str, ...] | None = None
    backend: str = "auto"
    #: seconds one submission may take in all; None: `default_limit` of the selected cases
    submission_timeout: float | None = None


@dataclass
class Row:
    """One student's line of the CSV."""

    student: str
    score: float
    max_score: float
    exercises: dict[str, float]
    failures: list[str] = field(default_factory=list)  # the verdict kind of every failed case
    error: str = ""                                      # why grading failed; "" when it finished

    @classmethod
    def from_results(cls, student: str, data: dict) -> "Row":
        meta = data["extra_data"]["cplab"]
        return cls(student, float(data["score"]), sum(m for _, m in meta["exercises"].values()),
                   {ex: s for ex, (s, _) in meta["exercises"].items()}, list(meta["failures"]), meta["error"])


@dataclass
class Outcome:
    """A finished batch: every student's row, and how many were graded in this run."""

    rows: list[Row]
    graded: int
    skipped: int
    maxima: dict[str, float]  # points per exercise, in manifest order
    titles: dict[str, str]

    @property
    def exercises(self) -> list[str]:
        return list(self.maxima)


class Layout:
    """Where a batch writes, all beside the CSV: results/<student>.json, logs/<student>.log, summary, plot."""

    def __init__(self, out_csv: Path):
        self.csv = out_csv
        self.results = out_csv.parent / "results"
        self.logs = out_csv.parent / "logs"
        self.plot = out_csv.with_suffix(".png")
        self.summary = out_csv.with_name(out_csv.stem + "-summary.txt")

    def result(self, student: str) -> Path:
        return self.results / f"{student}.json"

    def log(self, student: str) -> Path:
        return self.logs / f"{student}.log"


def done(path: Path, fingerprint_: str) -> dict | None:
    """The results file's data when it holds a finished grading of this fingerprint, else None."""
    try:
        data = json.loads(path.read_text())
        return data if data["extra_data"]["cplab"]["fingerprint"] == fingerprint_ else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class Job:
    """One submission to grade, as its worker process receives it."""

    student: str
    submission: Path
    results: Path
    log: Path
    fingerprint: str
    settings: Settings

    def to_json(self) -> dict:
        s = self.settings
        return {"student": self.student, "submission": str(self.submission), "results": str(self.results),
                "log": str(self.log), "fingerprint": self.fingerprint,
                "settings": {"manifest": str(s.manifest), "exercises": list(s.exercises) if s.exercises else None,
                             "backend": s.backend, "submission_timeout": s.submission_timeout}}

    @classmethod
    def from_json(cls, data: dict) -> "Job":
        s = data["settings"]
        settings = Settings(Path(s["manifest"]), tuple(s["exercises"]) if s["exercises"] else None, s["backend"],
                            s["submission_timeout"])
        return cls(data["student"], Path(data["submission"]), Path(data["results"]), Path(data["log"]),
                   data["fingerprint"], settings)


def default_limit(cases: list[Case]) -> float:
    """Seconds one submission may take: every case to its deadline twice over, plus one rank start-up."""
    return 2 * sum(c.timeout for c in cases) + STARTUP_TIMEOUT


def students(submissions: Path) -> list[str]:
    """The student folders of SUBMISSIONS_DIR, sorted; dot-folders are left out."""
    if not submissions.is_dir():
        raise BatchError(f"{submissions}: not a folder of submissions")
    names = sorted(p.name for p in submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise BatchError(f"{submissions}: no submission folders in it (one folder per student)")
    return names


def grader_files(root: Path | None = None) -> list[Path]:
    """Every .py and .yaml file of the grader package, sorted by path relative to it; no __pycache__."""
    root = root or GRADER_ROOT
    found = [p for p in root.rglob("*") if p.suffix in (".py", ".yaml") and p.is_file()
             and "__pycache__" not in p.relative_to(root).parts]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def kit_digest(root: Path | None = None) -> str:
    """A hash of the code that grades: the grader package's files (names and bytes) and torch's version."""
    import torch

    root = root or GRADER_ROOT
    h = hashlib.sha256(f"torch {torch.__version__}\0".encode())
    for path in grader_files(root):
        data = path.read_bytes()
        h.update(f"{path.relative_to(root).as_posix()}\0{len(data)}\0".encode() + data)
    return h.hexdigest()


def fingerprint(submission: Path, manifest: Manifest, cases: list[Case], backend: str, kit: str) -> str:
    """What a result depends on; a result with another fingerprint is stale and is graded again.

    `kit` is `kit_digest()`, computed once per batch run by `plan`, not once per student.
    """
    h = hashlib.sha256()
    for part in (grader.__version__, kit, backend, " ".join(c.id for c in cases)):
        h.update(part.encode() + b"\0")
    h.update(manifest.path.read_bytes())
    try:
        directory = grading.locate(submission, manifest)
    except grading.SubmissionError:
        h.update(b"no exercise files")
    else:
        for ex in manifest.exercises:
            path = directory / ex.file
            h.update(ex.file.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"absent") + b"\0")
    return h.hexdigest()[:20]


@dataclass
class Plan:
    """Who is in the batch, who still needs grading, and where everything goes."""

    layout: Layout
    students: list[str]
    todo: list[Job]
    maxima: dict[str, float]
    titles: dict[str, str]
    limit: float  # seconds one submission may take
    kit: str = ""  # kit_digest() when the batch planned: the grader that grades this run


def plan(submissions: str | Path, out_csv: str | Path, settings: Settings, *, regrade: bool = False) -> Plan:
    """Read the manifest and the submission folders; every student without a current result is to do."""
    submissions, out_csv = Path(submissions), Path(out_csv)
    if out_csv.suffix.lower() != ".csv":
        raise BatchError(f"{out_csv}: the grades file must end in .csv (the results go beside it)")
    m = load_manifest(settings.manifest)
    cases = m.select(list(settings.exercises) if settings.exercises else None)
    layout = Layout(out_csv)
    names = students(submissions)
    kit = kit_digest()
    todo = []
    for s in names:
        fp = fingerprint(submissions / s, m, cases, settings.backend, kit)
        if regrade or done(layout.result(s), fp) is None:
            todo.append(Job(s, (submissions / s).resolve(), layout.result(s), layout.log(s), fp, settings))
    return Plan(layout, names, todo, _maxima(cases), {ex.id: ex.title for ex in m.exercises},
                settings.submission_timeout or default_limit(cases), kit)


def execute(p: Plan, *, jobs: int = 1, on_result: Callable[[Row, int], None] | None = None) -> Outcome:
    """Grade what the plan has to do, `jobs` at a time; every student's row. `on_result(row, students done)`."""
    p.layout.results.mkdir(parents=True, exist_ok=True)
    p.layout.logs.mkdir(parents=True, exist_ok=True)
    count = len(p.students) - len(p.todo)

    def finished(job: Job) -> None:
        nonlocal count
        count += 1
        if on_result:
            on_result(Row.from_results(job.student, json.loads(job.results.read_text())), count)

    try:
        _schedule(p.todo, max(1, jobs), p.limit, p.maxima, finished)
    finally:  # an interrupted run too: what it graded is kept, so it must not be kept forged
        if p.todo and p.kit and kit_digest() != p.kit:
            _void(p.todo, p.maxima)
    rows = [Row.from_results(s, json.loads(p.layout.result(s).read_text())) for s in p.students]
    return Outcome(rows, graded=len(p.todo), skipped=len(p.students) - len(p.todo), maxima=p.maxima,
                   titles=p.titles)


# --- one submission, in its own process -------------------------------------------------------------


def graded_results(results: list[grading.CaseResult], exercises: list[str], seconds: float,
                   fingerprint_: str) -> dict:
    """results.json of a grading that finished, with the batch's record in extra_data."""
    data = results_json.build(results, seconds)
    per = grading.totals(results)
    data["extra_data"] = {"cplab": {
        "fingerprint": fingerprint_, "error": "",
        "exercises": {ex: [per[ex][0], per[ex][1]] if ex in per else [0.0, 0.0] for ex in exercises},
        "failures": [r.verdict.kind.value for r in results if not r.ok]}}
    return data


def failed_results(reason: str, maxima: dict[str, float], seconds: float, fingerprint_: str) -> dict:
    """results.json of a grading that did not finish: score 0 and one failed test that says why."""
    return {
        "score": 0.0,
        "execution_time": round(seconds, 2),
        "output": f"Grading failed: {reason}",
        "tests": [{"name": FAILED_TEST, "score": 0.0, "max_score": sum(maxima.values()), "status": "failed",
                   "output": reason, "visibility": "visible"}],
        "extra_data": {"cplab": {"fingerprint": fingerprint_, "error": reason,
                                 "exercises": {ex: [0.0, mx] for ex, mx in maxima.items()}, "failures": []}},
    }


def _leave(signum: int, frame: Any) -> None:
    # SystemExit unwinds through grading.grade, whose Grader closes the rank pools. The batch SIGKILLs a
    # worker STOP_GRACE after its SIGTERM; when the batch itself was killed nobody would, and a cleanup that
    # hangs would outlive it: the kernel's alarm (SIGALRM, whose default action ends the process) does it.
    signal.alarm(max(1, round(STOP_GRACE)))
    sys.exit(128 + signum)


def work(argument: dict) -> None:
    """A worker's whole life: grade one submission, with its own TMPDIR, and write its results file.

    It is forked from the batch's server (grader.zygote) with torch imported, and its own rank server
    is a fork of it made before it imported anything else of the grader: a worker imports nothing.
    """
    job, tmp = Job.from_json(argument["job"]), argument["tmp"]
    os.setsid()  # a terminal's Ctrl-C goes to the batch only, which stops its workers in order
    signal.signal(signal.SIGTERM, _leave)
    try:
        os.mkdir(tmp, 0o700)
        log = os.open(job.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        tempfile.tempdir = tmp
        import torch

        # `jobs` workers share the cores: torch's own threads would spin (OpenMP waits busily) for work
        # that is small (references, judges), 3% of a batch's CPU
        torch.set_num_threads(1)
        data = _grade(job)
        # a SIGTERM from here on would leave a temp file beside the results instead of the results. Ignored,
        # not blocked: pthread_sigmask blocks it for this thread only, and torch's threads would still take
        # it, after which _leave raises SystemExit in the middle of json.dump (a half-written temp file).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        results_json.write(job.results, data)
    finally:
        from grader import zygote

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        zygote.shared().close()
        # the batch removes it as well, but not when the batch itself was killed: then only this runs
        shutil.rmtree(tmp, ignore_errors=True)


def _grade(job: Job) -> dict:
    m = load_manifest(job.settings.manifest)
    cases = m.select(list(job.settings.exercises) if job.settings.exercises else None)
    maxima = _maxima(cases)
    start = time.monotonic()
    try:
        results = grading.grade(job.submission, m, cases, backend=job.settings.backend)
        # the log is the staff's: every failure in full, hidden cases included, which results.json never shows
        for r in results:
            if not r.ok:
                print(report.failure(r, show_output=False), flush=True)
    except grading.SubmissionError as e:
        return failed_results(str(e), maxima, time.monotonic() - start, job.fingerprint)
    except Exception as e:  # the kit's own failure: the student still gets a row, the log the traceback
        traceback.print_exc()
        return failed_results(f"the grader raised {type(e).__name__}: {e}", maxima, time.monotonic() - start,
                              job.fingerprint)
    return graded_results(results, list(maxima), time.monotonic() - start, job.fingerprint)


CHANGED = ("the grader's own files changed while this batch ran (a submission may write to them), so no "
           "grade of the run can be trusted: restore the kit (git checkout, pip install) and run the batch again")


def _void(jobs: list[Job], maxima: dict[str, float]) -> None:
    """Replace every result the run wrote by a failure that says why, with a fingerprint that never matches.

    Which submission changed the grader, and which gradings ran the changed code, cannot be told apart
    afterwards: every one of the run is graded again by the next run.
    """
    for job in jobs:
        if done(job.results, job.fingerprint) is not None:
            results_json.write(job.results, failed_results(CHANGED, maxima, 0.0, VOID))


def _maxima(cases: list[Case]) -> dict[str, float]:
    """Points per exercise of the selected cases, in manifest order; bonus cases add to no maximum."""
    out: dict[str, float] = {}
    for c in cases:
        out[c.exercise] = out.get(c.exercise, 0.0) + (0.0 if c.bonus else c.points)
    return out


# --- the scheduler ----------------------------------------------------------------------------------


class _Worker:
    """One submission's grading process, forked by the batch's server, as the scheduler sees it."""

    def __init__(self, server: zygote.Zygote, job: Job, tmp: str):
        self.job, self.tmp, self.started = job, tmp, time.monotonic()
        # TMPDIR before the worker forks its rank server: the ranks inherit it
        self.handle = server.fork_call("grader.batch:work", {"job": job.to_json(), "tmp": tmp},
                                       env={"TMPDIR": tmp}, own_server=True)
        self.pid = self.handle.init_pid(STARTUP_TIMEOUT)
        self.sentinel = self.handle.lifeline  # EOF once the worker is gone and its leader has said how

    def exitcode(self) -> int | None:
        ended = self.handle.reaped()
        return os.waitstatus_to_exitcode(ended[-1][1]) if ended else None

    def send(self, sig: int) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        """SIGTERM (the worker closes its rank pools), then SIGKILL after STOP_GRACE."""
        self.send(signal.SIGTERM)
        if not self.handle.wait_gone(STOP_GRACE):
            self.send(signal.SIGKILL)
            self.handle.wait_gone(STOP_GRACE)
        self.handle.close()


def _schedule(jobs: list[Job], width: int, limit: float, maxima: dict[str, float],
              finished: Callable[[Job], None]) -> None:
    """Run the jobs, `width` at a time; stop every worker on the way out.

    Workers are forks of one server that imported torch once for the whole batch (grader.zygote), so a
    worker and its rank server start in milliseconds; each still grades in a process of its own.
    """
    queue = collections.deque(jobs)
    running: dict[int, _Worker] = {}
    server = zygote.shared()  # under `python -m grader batch`, a fork of the batch made at its start
    try:
        while queue or running:
            while queue and len(running) < width:
                job = queue.popleft()
                tmp = os.path.join(tempfile.gettempdir(), f"cplab-batch-{job.student}-{uuid.uuid4().hex[:8]}")
                worker = _Worker(server, job, tmp)
                running[worker.sentinel] = worker
            ready = wait(list(running), timeout=1.0)
            for sentinel, worker in list(running.items()):
                job, seconds = worker.job, time.monotonic() - worker.started
                if sentinel in ready:
                    worker.handle.wait_gone(STOP_GRACE)
                    reason = _death(worker.exitcode(), job)
                    worker.handle.close()
                elif seconds > limit:
                    worker.stop()
                    reason = f"grading did not finish within {limit:g} s, so it was stopped"
                else:
                    continue
                del running[sentinel]
                shutil.rmtree(worker.tmp, ignore_errors=True)
                if done(job.results, job.fingerprint) is None:
                    results_json.write(job.results, failed_results(reason, maxima, seconds, job.fingerprint))
                if job.log.exists() and job.log.stat().st_size == 0:
                    job.log.unlink()
                finished(job)
    finally:
        for worker in running.values():
            worker.stop()
            shutil.rmtree(worker.tmp, ignore_errors=True)


def _death(code: int | None, job: Job) -> str:
    """Why a worker ended without writing results, from its exit code."""
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the grading process was killed by {name} (the submission may kill its parent process)"
    return f"the grading process ended with exit code {code} before writing results (see {job.log})"


# --- reports ----------------------------------------------------------------------------------------


def write_reports(outcome: Outcome, layout: Layout) -> str:
    """The CSV, the summary and the plot, each written whole or not at all; the summary's text."""
    write_csv(layout.csv, outcome.rows, outcome.exercises)
    text = summary(outcome)
    _replace(layout.summary, (text + "\n").encode())
    plot(outcome, layout.plot)
    return text


def write_csv(path: Path, rows: list[Row], exercises: list[str]) -> None:
    """student, score, max_score, one column per exercise, error: written whole or not at all."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["student", "score", "max_score", *exercises, "error"])
    for r in rows:
        points = (f"{r.exercises.get(ex, 0.0):g}" for ex in exercises)
        w.writerow([r.student, f"{r.score:g}", f"{r.max_score:g}", *points, r.error])
    _replace(path, buf.getvalue().encode())


def summary(outcome: Outcome) -> str:
    """Per-exercise means, the distribution of total scores, and the most common failure kinds."""
    rows, titles = outcome.rows, outcome.titles
    n = len(rows)
    best = sum(outcome.maxima.values())
    failed = [r for r in rows if r.error]
    lines = [f"{n} submission(s): {n - len(failed)} graded, {len(failed)} where grading failed "
             f"({outcome.graded} graded in this run, {outcome.skipped} already done)", "",
             "per exercise (mean over every submission):"]
    for ex in outcome.exercises:
        mx = outcome.maxima[ex]
        mean = sum(r.exercises.get(ex, 0.0) for r in rows) / n
        share = f"{mean / mx:4.0%}" if mx else "  - "
        lines.append(f"  {ex:<6} {titles.get(ex, ''):<32} {mean:6.2f} / {mx:g}  {share}")
    mean_total = sum(r.score for r in rows) / n
    lines += ["", f"total scores (max {best:g}, mean {mean_total:.2f}):"]
    bins = collections.Counter(_decile(r.score, best) for r in rows)
    width = max(bins.values())
    for b in range(11):
        label = "100%" if b == 10 else f"{10 * b:>2}-{10 * b + 9}%"
        bar = "#" * round(30 * bins[b] / width) if bins[b] else ""
        lines.append(f"  {label:>7}  {bins[b]:4d}  {bar}".rstrip())
    kinds = collections.Counter(k for r in rows for k in r.failures)
    lines += ["", "most common failures (failed cases, all submissions):"]
    lines += [f"  {count:5d}  {kind}" for kind, count in kinds.most_common(6)] or ["  none"]
    if failed:
        lines += ["", "grading failed:"]
        lines += [f"  {r.student}: {r.error}" for r in failed[:20]]
        if len(failed) > 20:
            lines.append(f"  ... and {len(failed) - 20} more (the error column of the CSV)")
    return "\n".join(lines)


def _decile(score: float, best: float) -> int:
    """0-9 for 0-9%, ..., 90-99%; 10 for full marks."""
    if best <= 0:
        return 0
    share = score / best
    return 10 if share >= 1 else min(9, int(share * 10))


def bin_edges(scores: list[float], mx: float) -> list[float]:
    """Histogram bins centred on 0, top/steps, ..., top, one bar per point up to 20 points. The top is the
    best score, not the maximum: bonus points take a full score past it, and it must not fall off."""
    top = max([mx, *scores]) or 1.0
    steps = max(1, min(20, round(top)))
    return [-top / steps / 2 + i * top / steps for i in range(steps + 2)]


def plot(outcome: Outcome, path: Path) -> None:
    """A PNG: one histogram of points per exercise, and one of the total."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = [(ex, outcome.titles.get(ex, ""), [r.exercises.get(ex, 0.0) for r in outcome.rows], outcome.maxima[ex])
              for ex in outcome.exercises]
    panels.append(("total", "", [r.score for r in outcome.rows], sum(outcome.maxima.values())))
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(3.6 * ncols, 2.8 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (name, title, scores, mx) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.hist(scores, bins=bin_edges(scores, mx), color="tab:red" if name == "total" else "tab:blue", rwidth=0.85)
        mean = sum(scores) / len(scores)
        ax.set_title(f"{name} {title}".strip() + f"\nmean {mean:.2f} / {mx:g}", fontsize=9)
        ax.set_xlabel("points", fontsize=8)
        ax.set_ylabel("submissions", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"cplab: score distribution over {len(outcome.rows)} submission(s)", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _replace(path, buf.getvalue())


def _replace(path: Path, data: bytes) -> None:
    """Write bytes so that a reader never sees half a file: temp file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fchmod(f.fileno(), results_json.file_mode())
        os.fsync(f.fileno())
    os.replace(tmp, path)
