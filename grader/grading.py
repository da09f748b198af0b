"""Grading a submission: every case through inputs -> rank processes -> judgement -> CaseResult.

This is the pipeline every front shares (pytest, check, grade, nbgrader,
batch): they differ only in which cases they select and how they report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from grader import checks
from grader.manifest import Case, Exercise, Manifest
from grader.runner import RankOutcome, Runner, RunOutcome
from grader.sandbox import Limits
from grader.tasks import Spec
from grader.verdict import Kind, Verdict, fail

BACKENDS = ("auto", "gloo", "nccl")
limits = Limits()


@dataclass
class CaseResult:
    case: Case
    verdict: Verdict
    seconds: float = 0.0
    output: str = ""          # captured stdout/stderr of the ranks, capped
    trace: list = field(default_factory=list)
    # per rank, what the kernel counted in the call: bytes received per peer, peak memory, CPU seconds
    evidence: list = field(default_factory=list)
    label: str = ""           # Manifest.label: the name students may read; the Grader sets it

    @property
    def name(self) -> str:
        """The name to show students: never a hidden case's title, even where no Grader set the label."""
        return self.label or (f"{self.case.exercise} - hidden case" if self.case.hidden else self.case.title)

    @property
    def score(self) -> float:
        return self.case.points if self.verdict.passed else 0.0

    @property
    def bonus_not_attempted(self) -> bool:
        return self.case.bonus and self.verdict.kind is Kind.NOT_IMPLEMENTED

    @property
    def ok(self) -> bool:
        """Nothing to fix: passed, skipped, or a bonus left alone."""
        return self.verdict.passed or self.verdict.skipped or self.bonus_not_attempted

    @property
    def max_score(self) -> float:
        """Bonus cases add to the score but not to the maximum; skipped cases count for nothing."""
        return 0.0 if self.case.bonus or self.verdict.skipped else self.case.points


#: Faults that cost a case its whole deadline (a hang, an endless loop) or its rank processes (a crash):
#: after STRIKES of one kind among an exercise's cases, its other cases are not run, because one fault
#: usually stops every case that calls the function, and each would spend its deadline again.
#: Bonus cases count apart: a hanging bonus backward says nothing of the forward the regular cases test.
REPEATED_FAULTS = (Kind.TIMEOUT, Kind.CRASHED)
STRIKES = 2
#: Runs a verdict that rests on CPU time needs before it stands (Verdict.timed): under 5 other grades a
#: correct ring's skip failed 1 of 12 single runs (rank 0's CPU 73 ms against rank 3's 98, 28 vs 85
#: idle), while a ring that skips nothing fails every run.
MEASURES = 3


class SubmissionError(ValueError):
    """A submission path the grader cannot use at all (missing, or no exercise files)."""


def locate(submission: str | Path, manifest: Manifest) -> Path:
    """The directory holding the exercise files: SUBMISSION, SUBMISSION/exercises, or either of those one
    folder down (a zipped release folder, `cplab-release/exercises/`); the one with the most of them."""
    root = Path(submission)
    if not root.exists():
        raise SubmissionError(f"{root}: no such file or directory")
    if not root.is_dir():
        raise SubmissionError(f"{root}: not a directory (give the folder holding the exercise files)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    candidates = [root, root / "exercises"] + [d for f in folders if f.name != "exercises"
                                               for d in (f, f / "exercises")]
    best = max(candidates, key=lambda d: len(found(d, manifest)))  # the first of the most, in that order
    if found(best, manifest):
        return best.resolve()
    names = [ex.file for ex in manifest.exercises]
    seen = sorted(p.relative_to(root).as_posix() for d in candidates if d.is_dir() for p in d.iterdir()
                  if p.is_file())[:10]
    raise SubmissionError(f"{root}: no exercise files here, under exercises/ or one folder down (expected "
                          f"any of {', '.join(names)}; found " + (", ".join(seen) or "no files") + ")")


def found(directory: Path, manifest: Manifest) -> list[str]:
    """The manifest's exercise files that are in `directory`."""
    return [ex.file for ex in manifest.exercises if (directory / ex.file).is_file()]


def backend_for(case: Case, requested: str) -> tuple[str, str]:
    """(backend, reason to skip or ''): NCCL needs one GPU per rank; auto uses it only when there are enough."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested == "gloo":
        return "gloo", ""
    if requested == "nccl":
        if gpus < case.world_size:
            return "nccl", (f"needs {case.world_size} GPUs for NCCL (one per rank; NCCL refuses two ranks "
                            f"on one GPU), this machine has {gpus}")
        return "nccl", ""
    return ("nccl" if gpus >= case.world_size and torch.distributed.is_nccl_available() else "gloo"), ""


def _precheck(case: Case, exercise: Exercise, directory: Path) -> Verdict | None:
    """Failures the grader can name without running student code: a missing file, a syntax error."""
    path = directory / exercise.file
    if not path.is_file():
        return fail(Kind.MISSING, f"{case.exercise}: {exercise.file} is not in the submission ({directory})")
    try:
        compile(path.read_bytes(), str(path), "exec")  # compiles only; nothing of the student's runs here
    except SyntaxError as e:
        return fail(Kind.SYNTAX_ERROR, f"{exercise.file} line {e.lineno}: {e.msg} — the file does not "
                                       f"compile, so every case of {case.exercise} fails; other exercises "
                                       f"are graded as usual")
    except ValueError as e:
        return fail(Kind.SYNTAX_ERROR, f"{exercise.file}: {e}")
    return None


class Grader:
    """One submission's grading session: its rank pools live as long as it does."""

    def __init__(self, submission: str | Path, manifest: Manifest, *, backend: str = "auto",
                 runner: Runner | None = None):
        self.directory = locate(submission, manifest)
        self.manifest = manifest
        self.backend = backend
        self.modules = [ex.module for ex in manifest.exercises]
        # A runner handed in is shared (the kit's own tests grade many trusted variants on one set
        # of pools); submissions graded for real get their own, so no state crosses students.
        self._owns_runner = runner is None
        self.runner = runner or Runner(hide=[self.directory])
        self.staged = self.runner.stage(self.directory, self.modules)
        # (exercise, bonus, kind) -> labels of the cases that stopped so, in the order they ran
        self._faults: dict[tuple[str, bool, Kind], list[str]] = {}
        self._prechecked: dict[str, Verdict | None] = {}

    def run(self, case: Case) -> CaseResult:
        start = time.monotonic()
        exercise = self.manifest.exercise(case.exercise)
        with machine_turn(alone=checks.get(case.exercise, case.check).alone):
            result = self._repeated(case) or self._run(case, exercise)
        result.seconds = time.monotonic() - start
        result.label = self.manifest.label(case)
        if not result.verdict.passed and not result.verdict.hint:
            result.verdict.hint = exercise.hint(result.verdict.kind.name.lower())
        return result

    def _repeated(self, case: Case) -> CaseResult | None:
        """A not-run result when STRIKES cases of the same exercise (and bonus flag) already stopped the same way."""
        for kind in REPEATED_FAULTS:
            struck = self._faults.get((case.exercise, case.bonus, kind), [])
            if len(struck) >= STRIKES:
                which = "bonus cases" if case.bonus else "cases"
                return CaseResult(case, fail(kind, f"not run: same {kind.value} as {struck[0]} (and "
                                                   f"{struck[1]}); the other {which} of {case.exercise} are "
                                                   f"not run, so that one fault costs only this exercise's "
                                                   f"points and time"))
        return None

    def _run(self, case: Case, exercise: Exercise) -> CaseResult:
        result = self._attempt(case, exercise)
        if result.verdict.kind in REPEATED_FAULTS:
            key = (case.exercise, case.bonus, result.verdict.kind)
            self._faults.setdefault(key, []).append(self.manifest.label(case))
        return result

    def _attempt(self, case: Case, exercise: Exercise) -> CaseResult:
        if exercise.id not in self._prechecked:  # once per exercise: the file cannot change while it is graded
            self._prechecked[exercise.id] = _precheck(case, exercise, self.directory)
        verdict = self._prechecked[exercise.id]
        if verdict:
            return CaseResult(case, dataclasses.replace(verdict))
        check = checks.get(case.exercise, case.check)
        backend, skip = backend_for(case, self.backend)
        if skip:
            return CaseResult(case, fail(Kind.SKIPPED, skip))
        try:
            inputs = check.inputs(case)
            nranks = check.ranks(case)
            # The ranks get a Spec (no seed, name or visibility) and only the inputs their task reads
            job = {"submission": str(self.staged), "modules": self.modules, "module": exercise.module,
                   "exercise": case.exercise, "check": case.check, "spec": dataclasses.asdict(Spec.of(case)),
                   "backend": backend, "group": list(case.group) if case.group and nranks > 1 else None}
            for _ in range(MEASURES):
                run = self.runner.pool(nranks).run(job, check.rank_inputs(inputs), case.timeout,
                                                   evidence=check.evidence)
                verdict = self._judge(case, check, inputs, run)
                if not verdict.timed:
                    break
            if verdict.timed:
                verdict.message += f" (in each of {MEASURES} runs)"
        except Exception as e:  # the kit's own failure: never charged to the student silently
            return CaseResult(case, fail(Kind.GRADER_ERROR, f"{type(e).__name__}: {e}"))
        untouched = verdict.kind is Kind.NOT_IMPLEMENTED and not any(o.trace for o in run.ranks)
        if not verdict.passed and not untouched:
            # Whatever a failed case left in its ranks (threads, an unwaited send, a half-finished
            # collective that could stall tearing the group down) must not reach the submission's next
            # case. A stub that raised NotImplementedError before any communication keeps its ranks:
            # that saves a pool start per case of an unattempted exercise.
            self.runner.pool(nranks).recycle()
        evidence = [{"received": o.received, "peak": o.peak, "charged": o.charged, "cpu": o.cpu, "late": o.late}
                    for o in run.ranks]
        return CaseResult(case, verdict, output=_output(run), trace=[o.trace for o in run.ranks], evidence=evidence)

    @staticmethod
    def _judge(case: Case, check: checks.Check, inputs: list[dict], run: RunOutcome) -> Verdict:
        verdict = diagnose(case, run)
        if verdict is None:
            try:
                verdict = check.judge(case, inputs, run.ranks)
            except Exception as e:
                verdict = fail(Kind.GRADER_ERROR, f"judging failed: {type(e).__name__}: {e}")
        return verdict

    def prepare(self, cases: list[Case]) -> None:
        """Fork the pools the selection needs now: they get ready while the first cases run."""
        self.runner.prestart([checks.get(c.exercise, c.check).ranks(c) for c in cases])

    def close(self) -> None:
        if self._owns_runner:
            self.runner.close()

    def __enter__(self) -> "Grader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Exercises graded at once, each lane with its own rank pools. A case mostly waits (the ranks' group
#: join, gloo's sockets, the answers), so one lane kept 2 cores half busy: `grade solutions` spent 10.7
#: CPU-s in 10.6 s of wall time. Each exercise stays whole in one lane, in order, so the strikes and
#: the time budget see its cases exactly as they would one lane alone.
LANES = 2


def grade(submission: str | Path, manifest: Manifest, cases: Iterable[Case], *, backend: str = "auto",
          on_result: Callable[[CaseResult], None] | None = None, budget: float | None = None,
          lanes: int = LANES) -> list[CaseResult]:
    """Grade `cases` against the exercise files in `submission`, with fresh rank processes.

    Up to `lanes` exercises run at once; whichever lane is free takes the next exercise in order, and
    `on_result` sees the results in the order of `cases`. With a `budget` (seconds), a case starts only
    before its exercise's deadline (`deadlines`); a case that would start later is not run, so a slow
    exercise costs its own points, never the whole run.
    """
    cases = list(cases)
    until = deadlines(cases, budget) if budget else {}
    exercises: dict[str, list[int]] = {}
    for i, case in enumerate(cases):
        exercises.setdefault(case.exercise, []).append(i)
    todo = list(exercises)
    results: list[CaseResult | None] = [None] * len(cases)
    failed: list[BaseException] = []
    done = threading.Condition()
    stop = threading.Event()
    start = time.monotonic()

    def lane(grader: Grader) -> None:
        try:
            while not stop.is_set():
                with done:
                    if not todo:
                        return
                    exercise = todo.pop(0)
                for i in exercises[exercise]:
                    case = cases[i]
                    if stop.is_set():
                        return
                    if exercise in until and time.monotonic() - start > until[exercise]:
                        result = _late(case, manifest, until[exercise], budget)
                    else:
                        result = grader.run(case)
                    with done:
                        results[i] = result
                        done.notify_all()
        except BaseException as e:  # the kit's own failure: the main thread raises it
            with done:
                failed.append(e)
                done.notify_all()

    graders: list[Grader] = []
    threads: list[threading.Thread] = []
    try:
        for _ in range(max(1, min(lanes, len(exercises)))):
            graders.append(Grader(submission, manifest, backend=backend))
            graders[-1].prepare(cases)
        threads = [threading.Thread(target=lane, args=(g,), name=f"cplab-lane-{n}", daemon=True)
                   for n, g in enumerate(graders)]
        for t in threads:
            t.start()
        for i in range(len(cases)):
            with done:
                while results[i] is None and not failed:
                    done.wait()
                if failed:
                    raise failed[0]
            if on_result:
                on_result(results[i])
    finally:
        # On an interrupt (SIGTERM's SystemExit, Ctrl-C) the lanes stop between cases; killing the ranks
        # ends the case in flight at once.
        stop.set()
        if any(t.is_alive() for t in threads):
            for g in graders:
                g.runner.abort()
        for t in threads:
            t.join()
        for g in graders:
            g.close()
    return results


#: Shared by every grader on the machine (batch's workers, two `grade`s, a `check`, the lanes of one grade):
#: a case whose judge reads CPU time holds TURN_LOCK alone, every other case shares it. Two full grades of
#: two lanes each, side by side, failed ex5 compute_contiguous in 2 of 6 grades without it (the solution's
#: rank 0 took as much CPU as rank 3); the kernel's CPU time of a call is only the work it did when no other
#: grader's ranks share the cores with it. TURN_GATE lets a case waiting to run alone go before the shared
#: turns asked after it, which would otherwise keep the lock shared for good. Outside the sandbox a student's
#: code could hold either: a turn waits TURN_WAIT at most.
TURN_LOCK = Path("/tmp/cplab-turns.lock")
TURN_GATE = Path("/tmp/cplab-turns-gate.lock")
TURN_WAIT = 60.0


@contextlib.contextmanager
def machine_turn(*, alone: bool) -> Iterator[None]:
    """A shared turn on the machine's cplab graders, or (alone) an exclusive one: see TURN_LOCK."""
    fds: list[int] = []
    try:
        try:
            for path in (TURN_GATE, TURN_LOCK):
                fds.append(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444))
        except OSError:  # no shared /tmp (or a foreign file in the way): no turns to take
            for fd in fds:
                os.close(fd)
            fds = []
        if fds:
            gate, lock = fds
            deadline = time.monotonic() + TURN_WAIT
            kind = fcntl.LOCK_EX if alone else fcntl.LOCK_SH
            _flock(gate, kind, deadline)
            _flock(lock, kind, deadline)
            if not alone:
                fcntl.flock(gate, fcntl.LOCK_UN)  # in: a case that must run alone may queue at the gate now
        yield
    finally:
        for fd in fds:
            os.close(fd)  # releases its lock


def _flock(fd: int, kind: int, deadline: float) -> None:
    """Take the lock, waiting until `deadline` at most (then go on without it)."""
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)


def deadlines(cases: list[Case], budget: float) -> dict[str, float]:
    """Seconds from the start of grading by which each exercise's cases must have started.

    `budget` is split between the exercises in proportion to the sum of their case deadlines, and the
    shares add up in the order the exercises run: time that one exercise leaves unused passes to the
    next, and one whose last case runs past its deadline takes that overrun from the next share only.
    """
    weight: dict[str, float] = {}
    for c in cases:
        weight[c.exercise] = weight.get(c.exercise, 0.0) + c.timeout
    total, elapsed, out = sum(weight.values()), 0.0, {}
    for ex, w in weight.items():
        elapsed += budget * w / total
        out[ex] = elapsed
    return out


def _late(case: Case, manifest: Manifest, until: float, budget: float) -> CaseResult:
    return CaseResult(case, fail(Kind.TIMEOUT, f"not run: {case.exercise} used up its share of the grading "
                                               f"time (its cases had to start within {until:.0f} s of the "
                                               f"{budget:g} s budget)"), label=manifest.label(case))


def _output(run: RunOutcome) -> str:
    parts = []
    for o in run.ranks:
        for name, text in (("stdout", o.stdout), ("stderr", o.stderr)):
            if text.strip():
                parts.append(f"--- rank {o.rank} {name} ---\n{text.rstrip()}")
    if run.notes:
        parts.append("--- grader ---\n" + "\n".join(run.notes))
    return "\n".join(parts)


ERROR_KINDS = {"not_implemented": Kind.NOT_IMPLEMENTED, "missing": Kind.MISSING,
               "syntax_error": Kind.SYNTAX_ERROR, "exception": Kind.EXCEPTION, "early_exit": Kind.EARLY_EXIT}


def diagnose(case: Case, run: RunOutcome) -> Verdict | None:
    """The verdict when ranks did not all return a result; None when they did."""
    ranks = run.ranks
    if all(o.status == "ok" for o in ranks):
        return None
    limited = [o for o in ranks if o.status == "limit"]
    if limited:
        return fail(Kind.LIMIT, limited[0].error.get("message", ""))
    grader_errors = [o for o in ranks if o.status == "grader_error"]
    if grader_errors:
        return fail(Kind.GRADER_ERROR, f"rank {grader_errors[0].rank}: {grader_errors[0].error.get('message', '')}")
    crashed = [o for o in ranks if o.status == "crashed"]
    if crashed and crashed[0].exitcode == -signal.SIGXFSZ:
        return fail(Kind.LIMIT, f"rank {crashed[0].rank} wrote a file past its "
                                f"{limits.file_size >> 20} MiB file-size limit (its stdout and stderr count)")
    if crashed:
        o = crashed[0]
        return fail(Kind.CRASHED, f"rank {o.rank} was killed by {_signal_name(o.exitcode)} before returning "
                                  f"its result" + _others(ranks, o))
    exited = [o for o in ranks if o.status == "early_exit"]
    if exited:
        o = exited[0]
        code = f"exit code {o.exitcode}" if o.exitcode is not None else "no exit code"
        return fail(Kind.EARLY_EXIT, f"rank {o.rank} ended ({code}) before returning its result: something "
                                     f"called sys.exit or os._exit, or the interpreter died" + _others(ranks, o))
    # A dead rank makes its peers' collectives fail ("connection closed by peer"): those errors are
    # consequences, so the dead rank is reported first, and student exceptions only after it.
    errors = [o for o in ranks if o.status == "error"]
    if errors:
        return _student_error(errors)
    if run.stopped == "setup":  # twice, the second time on fresh ranks (RankPool.run): no student code ran
        return fail(Kind.GRADER_ERROR, _stopped(case, run) + " Fresh ranks stalled as well, before any of "
                                       "the case's code ran: the machine or the grader, not the submission.")
    if run.timed_out:
        return fail(Kind.TIMEOUT, _stopped(case, run) + "\n" + waits(ranks), hint=_deadlock_hint(ranks))
    return fail(Kind.GRADER_ERROR, "ranks stopped without results: " +
                ", ".join(f"rank {o.rank}: {o.status}" for o in ranks))


def _stopped(case: Case, run: RunOutcome) -> str:
    """Why the runner stopped the case, from the kernel's evidence (CPU time, sleeping ranks, wall time)."""
    from grader import runner

    if run.stopped == "cpu":
        o = max(run.ranks, key=lambda o: max(o.cpu, o.busy))
        return (f"rank {o.rank} computed without a pause for {max(o.cpu, o.busy):.1f} s ({o.cpu:.1f} s of "
                f"CPU), more than the case's budget of {case.timeout:g} s, without returning: an endless "
                f"loop, or far more work than the exercise needs.")
    if run.stopped == "idle":
        return (f"every rank still running sat waiting, with no CPU progress, for {runner.IDLE_WINDOW:g} s: "
                f"nothing could ever finish (a deadlock, or a rank waiting for something that never comes).")
    if run.stopped == "setup":
        return f"the ranks did not start the student's call within {runner.SETUP_TIMEOUT:g} s of wall time."
    return (f"the case did not finish within its wall-clock guard of "
            f"{max(runner.WALL_MIN, runner.WALL_FACTOR * case.timeout):g} s.")


def _limit_hit(message: str) -> str:
    """The sandbox limit an exception's message says was reached, or ''."""
    if message.startswith("MemoryError") or "can't allocate memory" in message or "bad_alloc" in message:
        return f"{limits.memory >> 30} GiB memory limit"
    if "Too many open files" in message:
        return f"{limits.open_files} open-files limit"
    if "can't start new thread" in message or "Resource temporarily unavailable" in message:
        return f"{limits.processes} processes limit (processes and threads of all ranks together)"
    return ""


def _student_error(errors: list[RankOutcome]) -> Verdict:
    first = errors[0]
    e = first.error
    kind = ERROR_KINDS.get(e.get("kind", ""), Kind.EXCEPTION)
    limit = _limit_hit(e.get("message", "")) if kind is Kind.EXCEPTION else ""
    if limit:
        return fail(Kind.LIMIT, f"rank {first.rank} reached its {limit} ({e.get('message', '')})"
                                + (f" at {e['where']}" if e.get("where") else ""))
    if kind is Kind.NOT_IMPLEMENTED or kind is Kind.MISSING or kind is Kind.SYNTAX_ERROR:
        return fail(kind, e.get("message", ""))
    ranks = [o.rank for o in errors]
    who = f"rank {first.rank}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))} (first: rank {first.rank})"
    where = f" at {e['where']}" if e.get("where") else ""
    func = f" in {e['function']}" if e.get("function") else ""
    if kind is Kind.EARLY_EXIT:
        return fail(kind, f"{who}{func} called sys.exit before returning its result{where}")
    return fail(kind, f"{who} raised {e.get('message', '')}{func}{where}", detail=e.get("traceback", ""))


def _others(ranks: list[RankOutcome], culprit: RankOutcome) -> str:
    waiting = [o for o in ranks if o is not culprit and o.status in ("timeout", "aborted")]
    if not waiting:
        return "."
    return "; the other ranks were then stopped.\n" + waits(waiting)


def _signal_name(code: int | None) -> str:
    if code is None or code >= 0:
        return f"exit code {code}"
    try:
        sig = signal.Signals(-code)
    except ValueError:
        return f"signal {-code}"
    meaning = {signal.SIGSEGV: "segmentation fault", signal.SIGKILL: "killed, often out of memory",
               signal.SIGABRT: "abort", signal.SIGBUS: "bus error", signal.SIGFPE: "arithmetic error"}
    return f"{sig.name} ({meaning[sig]})" if sig in meaning else sig.name


def _call_text(call: dict) -> str:
    op = call.get("op", "?")
    if "peer" in call:
        arg = "dst" if op in ("send", "isend") else "src"
        return f"{op}({arg}={call['peer']})"
    return f"{op}()"


def waits(ranks: list[RankOutcome]) -> str:
    """One line per rank: the torch.distributed call it is blocked in, from its live trace."""
    lines = []
    for o in ranks:
        pending = [c for c in o.trace if not c.get("done")]
        if pending:
            c = pending[-1]
            verb = "waits for" if c.get("waiting") else "waits in"
            lines.append(f"  rank {o.rank} {verb} {_call_text(c)}, call #{c['call']}")
        elif o.returned:
            lines.append(f"  rank {o.rank} had returned its result")
        elif o.trace:
            last = o.trace[-1]
            lines.append(f"  rank {o.rank} is not in a torch.distributed call (last: {_call_text(last)}, call "
                         f"#{last['call']}, finished): it computes or loops")
        else:
            lines.append(f"  rank {o.rank} made no torch.distributed call: it computes or loops")
    return "\n".join(lines)


def _deadlock_hint(ranks: list[RankOutcome]) -> str:
    pending = [[c for c in o.trace if not c.get("done")] for o in ranks]
    blocked = [p[-1] for p in pending if p]
    if blocked and all(c.get("op") in ("send", "recv") for c in blocked) and len(blocked) == len(ranks):
        return ("Every rank is blocked in a point-to-point call: blocking send/recv in the same order on "
                "every rank deadlocks a ring. Post both with isend/irecv or dist.batch_isend_irecv, then wait.")
    if blocked and len(blocked) < len(ranks):
        return ("Some ranks wait in a collective that the others never called: every rank of the group "
                "must make the same collective calls in the same order.")
    if not blocked:
        return "No rank waits on communication: look for a loop that never ends."
    return ""


def totals(results: list[CaseResult]) -> dict[str, tuple[float, float, int, int]]:
    """Per exercise: (score, max score, cases passed, cases run), skipped cases left out; bonus points
    count in the score only, so a full score plus bonus can exceed the maximum."""
    out: dict[str, tuple[float, float, int, int]] = {}
    for r in results:
        if r.verdict.skipped:
            continue
        s, m, p, n = out.get(r.case.exercise, (0.0, 0.0, 0, 0))
        out[r.case.exercise] = (s + r.score, m + r.max_score, p + r.verdict.passed, n + 1)
    return out

