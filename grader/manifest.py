"""The lab manifest: exercises and their cases, loaded from lab_manifest.yaml and validated.

Every front (pytest, check, grade, nbgrader) reads its cases from here, so a
case is defined once. Validation happens on load and names the file, the
exercise, the case and the key: "lab_manifest.yaml: ex1 case 'gather': unknown
key 'wold_size' (known: ...)".

A case the kit cannot run correctly is refused here rather than graded: a
mistake in the manifest must never read as the student's failure (a zero
deadline as "computes or loops", a length the scheme cannot split as a failed
case the kit's own solution fails too) or break the results (`points: .inf`
is not JSON). So numbers are real numbers (a YAML `true` is not 1), deadlines
and points are positive and finite, and a case's shapes must split the way its
check splits them at the case's P.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# libyaml's safe loader where PyYAML has it: the same documents; lab_manifest.yaml in 0.02 s, not 0.26 s
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

KIT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MANIFEST = KIT_ROOT / "lab_manifest.yaml"

SCHEMES = ("contiguous", "zigzag", "striped")
DTYPES = ("float64", "float32", "bfloat16", "float16")
VISIBILITIES = ("public", "hidden")

# Every rank of a case is a process on the one grading machine: with gloo each imports torch
# (1.5-2 s of CPU and a few hundred MB apiece) and the pool must start within the runner's
# STARTUP_TIMEOUT on a 2-core machine; with NCCL each needs a GPU of its own, and 8 GPUs is the
# largest common single node. 16 leaves room above the manifest's largest case today (P = 8)
# while refusing sizes one machine cannot run: such a case would only ever time out or be skipped.
MAX_WORLD_SIZE = 16
# Seconds one case may take: a case's deadline is charged to the student ("computes or loops")
# and batch gives a submission twice the sum of its cases, so one case must not eat a whole budget.
MAX_TIMEOUT = 600
# Checks seed torch.Generator with seed * 7919 + salt, which must stay a 64-bit integer.
MAX_SEED = 2**32 - 1

# How the checks of grader/checks/ split a case's shape (read-only knowledge of them, kept here so that
# the manifest is refused at load instead of failing while a student is graded):
# - the token axis, shape S, is sharded over the case's P ranks by its scheme in every check that reads S;
# - ex4's Ulysses checks give each rank H / P whole heads (H % P == 0), except heads_error, which
#   checks the ValueError for H % P != 0 and so needs heads that do not divide;
# - ex7 with params.attention 'ulysses' splits the model's n_head heads the same way.
HEAD_SPLIT_CHECKS = {"ex4": ("seq_to_head", "forward", "backward", "comm", "causality")}
HEAD_ERROR_CHECKS = {"ex4": ("heads_error",)}


class ManifestError(ValueError):
    """A manifest that cannot be used, with where the problem is."""


@dataclass(frozen=True)
class Case:
    """One graded run: a check of one exercise at one world size, with seeded inputs."""

    exercise: str
    name: str
    check: str
    world_size: int
    points: float = 1.0
    visibility: str = "public"
    scheme: str = "contiguous"
    dtype: str = "float64"
    shape: dict = field(default_factory=dict)
    seed: int = 0
    timeout: float = 30.0
    group: tuple[int, ...] | None = None
    bonus: bool = False
    params: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        """pytest's id: `ex1-shard_zigzag-P4`."""
        return f"{self.exercise}-{self.name}-P{self.world_size}"

    @property
    def title(self) -> str:
        """The name in reports and results.json: `ex1 - shard_zigzag P=4`."""
        return f"{self.exercise} - {self.name} P={self.world_size}"

    @property
    def members(self) -> tuple[int, ...]:
        """The global ranks of the group the student's code is handed, in group-rank order."""
        return self.group or tuple(range(self.world_size))

    @property
    def group_size(self) -> int:
        """P as the student's code sees it: the size of the group it is handed."""
        return len(self.group) if self.group else self.world_size

    @property
    def hidden(self) -> bool:
        return self.visibility == "hidden"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Case":
        d = dict(d)
        if d.get("group") is not None:
            d["group"] = tuple(d["group"])
        return cls(**d)


@dataclass(frozen=True)
class Exercise:
    id: str
    title: str
    file: str
    functions: tuple[str, ...]
    summary: str = ""
    hints: dict = field(default_factory=dict)
    cases: tuple[Case, ...] = ()

    @property
    def module(self) -> str:
        return Path(self.file).stem

    def hint(self, kind: str) -> str:
        return self.hints.get(kind, "")


@dataclass(frozen=True)
class Manifest:
    path: Path
    exercises: tuple[Exercise, ...]

    @property
    def cases(self) -> list[Case]:
        return [c for ex in self.exercises for c in ex.cases]

    def exercise(self, ex_id: str) -> Exercise:
        for ex in self.exercises:
            if ex.id == ex_id:
                return ex
        raise KeyError(ex_id)

    def label(self, case: Case) -> str:
        """The case's name wherever a student may read it: its title, or `ex1 - hidden case 3` for the
        third hidden case of ex1 in manifest order (a hidden case's name and sizes give its inputs away)."""
        if not case.hidden:
            return case.title
        hidden = [c.id for c in self.exercise(case.exercise).cases if c.hidden]
        number = f" {hidden.index(case.id) + 1}" if case.id in hidden else ""  # a case made outside the manifest
        return f"{case.exercise} - hidden case{number}"

    def select(self, exercises: list[str] | None = None, *, hidden: bool = True) -> list[Case]:
        """Cases of the named exercises (all when None), public only unless hidden=True."""
        unknown = set(exercises or ()) - {ex.id for ex in self.exercises}
        if unknown:
            known = ", ".join(ex.id for ex in self.exercises)
            raise ManifestError(f"unknown exercise {', '.join(sorted(unknown))} (known: {known})")
        return [c for c in self.cases
                if (not exercises or c.exercise in exercises) and (hidden or not c.hidden)]


EXERCISE_KEYS = {"id", "title", "file", "functions", "summary", "hints", "cases"}
CASE_KEYS = {f.name for f in dataclasses.fields(Case)} - {"exercise"}
DEFAULT_KEYS = {"timeout", "dtype", "scheme", "points", "seed"}


def load(path: str | Path | None = None, *, check_registry: bool = True) -> Manifest:
    """Read and validate a manifest; every problem raises ManifestError naming where it is."""
    path = Path(path) if path else DEFAULT_MANIFEST
    try:
        raw = yaml.load(path.read_text(), Loader=SAFE_LOADER)
    except OSError as e:
        raise ManifestError(f"{path}: cannot read the manifest ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ManifestError(f"{path}: not valid YAML: {e}") from None
    where = path.name
    if not isinstance(raw, dict) or not isinstance(raw.get("exercises"), list):
        raise ManifestError(f"{where}: expected a mapping with an 'exercises' list")
    _only(raw, {"version", "defaults", "exercises"}, where)
    defaults = raw.get("defaults") or {}
    _only(defaults, DEFAULT_KEYS, f"{where}: defaults")
    _scalars(defaults, f"{where}: defaults")
    exercises, seen = [], set()
    for i, ex_raw in enumerate(raw["exercises"]):
        ex = _exercise(ex_raw, defaults, f"{where}: exercise #{i + 1}")
        if ex.id in seen:
            raise ManifestError(f"{where}: exercise id {ex.id!r} appears twice")
        seen.add(ex.id)
        exercises.append(ex)
    manifest = Manifest(path=path, exercises=tuple(exercises))
    if check_registry:
        from grader import checks

        for case in manifest.cases:
            if not checks.exists(case.exercise, case.check):
                raise ManifestError(f"{where}: {case.exercise} case {case.name!r}: unknown check "
                                    f"{case.check!r} (known: {', '.join(checks.names(case.exercise))})")
            _reads(case, checks.get(case.exercise, case.check).reads, f"{where}: {case.exercise} case {case.name!r}")
            _heads(case, f"{where}: {case.exercise} case {case.name!r}")
    return manifest


def _reads(case: Case, reads: Any, where: str) -> None:
    """Only the shape keys and params the case's check reads (grader.checks.Reads): a typo must not be
    ignored (an `s` for `S` would run with a default, or fail while a student is graded)."""
    for key, allowed in (("shape", reads.shape), ("params", reads.params)):
        for name in getattr(case, key):
            if name not in allowed:
                known = ", ".join(allowed) or "none"
                raise ManifestError(f"{where}: unknown key '{key}.{name}': check {case.check!r} reads {key} "
                                    f"{known}")
    for name in reads.required:
        if name not in case.shape:
            raise ManifestError(f"{where}: 'shape' must give {name} (check {case.check!r} reads it)")


def _is_int(v: Any) -> bool:
    """An int, and not a bool (which is an int to Python: `world_size: true` would run as P=True)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite int or float, not a bool: YAML's .inf and .nan are floats."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _scalars(values: dict, where: str) -> None:
    """The keys a case shares with defaults: points, timeout, seed, scheme, dtype, visibility."""

    def expect(key: str, ok: bool, what: str) -> None:
        if key in values and not ok:
            raise ManifestError(f"{where}: {key!r} must be {what}, got {values[key]!r}")

    v = values.get
    for key, choices in (("scheme", SCHEMES), ("dtype", DTYPES), ("visibility", VISIBILITIES)):
        expect(key, v(key) in choices, f"one of {', '.join(choices)}")
    expect("points", _is_number(v("points")) and v("points") > 0, "a positive finite number")
    expect("timeout", _is_number(v("timeout")) and 0 < v("timeout") <= MAX_TIMEOUT,
           f"a positive finite number of seconds (at most {MAX_TIMEOUT})")
    expect("seed", _is_int(v("seed")) and 0 <= v("seed") <= MAX_SEED, f"an integer from 0 to {MAX_SEED}")


def _heads(case: Case, where: str) -> None:
    """Heads split over the ranks: H % P == 0 where a check splits them, != 0 where it tests the error."""
    p = case.group_size
    if case.check in HEAD_SPLIT_CHECKS.get(case.exercise, ()) + HEAD_ERROR_CHECKS.get(case.exercise, ()):
        from grader.checks.attention import sizes

        try:
            h = sizes(case)[1]  # the check's own reading of the shape, with its default H
        except KeyError as e:
            raise ManifestError(f"{where}: 'shape' must give {e.args[0]} (check {case.check!r} reads it)") from None
        if case.check in HEAD_ERROR_CHECKS.get(case.exercise, ()):
            if h % p == 0:
                raise ManifestError(f"{where}: 'shape.H' must not be divisible by P = {p}: check "
                                    f"{case.check!r} tests the ValueError for H % P != 0, got {h}")
        elif h % p:
            raise ManifestError(f"{where}: 'shape.H' must be divisible by P = {p}: check {case.check!r} "
                                f"gives every rank H / P whole heads, got {h}")
    if case.exercise == "ex7" and (case.params.get("model") is not None or case.params.get("attention") == "ulysses"):
        from grader.model import ModelConfig

        known = {f.name for f in dataclasses.fields(ModelConfig)}
        model = case.params.get("model") or {}
        _only(model, known, f"{where}: 'params.model'")
        cfg = ModelConfig(**model)
        for key in ("vocab_size", "n_layer", "n_head", "n_embd", "mlp_ratio"):
            if not (_is_int(getattr(cfg, key)) and getattr(cfg, key) > 0):
                raise ManifestError(f"{where}: 'params.model.{key}' must be a positive integer, "
                                    f"got {getattr(cfg, key)!r}")
        if cfg.n_embd % cfg.n_head or (cfg.n_embd // cfg.n_head) % 2:
            raise ManifestError(f"{where}: 'params.model.n_embd' must be n_head ({cfg.n_head}) times an even "
                                f"head size (the rotary embedding turns pairs), got {cfg.n_embd}")
        if case.params.get("attention") == "ulysses" and cfg.n_head % p:
            raise ManifestError(f"{where}: 'params.model.n_head' must be divisible by P = {p}: attention "
                                f"'ulysses' gives every rank n_head / P whole heads, got {cfg.n_head}")


def _only(d: Any, allowed: set, where: str) -> None:
    if not isinstance(d, dict):
        raise ManifestError(f"{where}: expected a mapping, got {type(d).__name__}")
    for key in d:
        if key not in allowed:
            raise ManifestError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(allowed))})")


def _exercise(raw: Any, defaults: dict, where: str) -> Exercise:
    _only(raw, EXERCISE_KEYS, where)
    for key in ("id", "title", "file", "functions"):
        if key not in raw:
            raise ManifestError(f"{where}: missing key {key!r}")
    ex_id = raw["id"]
    where = f"{where.split(':')[0]}: {ex_id}"
    if not isinstance(raw["functions"], list) or not all(isinstance(f, str) for f in raw["functions"]):
        raise ManifestError(f"{where}: 'functions' must be a list of names")
    hints = raw.get("hints") or {}
    from grader.verdict import Kind

    _only(hints, {k.name.lower() for k in Kind}, f"{where}: hints")
    cases, names = [], set()
    for case_raw in raw.get("cases") or []:
        case = _case(case_raw, ex_id, defaults, where)
        if case.id in names:
            raise ManifestError(f"{where} case {case.name!r}: the id {case.id} appears twice")
        names.add(case.id)
        cases.append(case)
    return Exercise(id=ex_id, title=raw["title"], file=raw["file"], functions=tuple(raw["functions"]),
                    summary=raw.get("summary", ""), hints=dict(hints), cases=tuple(cases))


def _case(raw: Any, ex_id: str, defaults: dict, where: str) -> Case:
    name = raw.get("name") if isinstance(raw, dict) else None
    where = f"{where} case {name!r}"
    _only(raw, CASE_KEYS, where)
    for key in ("name", "check", "world_size"):
        if key not in raw:
            raise ManifestError(f"{where}: missing key {key!r}")
    values = {**defaults, **raw}

    def expect(key: str, ok: bool, what: str) -> None:
        if not ok:
            raise ManifestError(f"{where}: {key!r} must be {what}, got {values[key]!r}")

    expect("name", isinstance(values["name"], str) and values["name"] != "", "a non-empty string")
    expect("check", isinstance(values["check"], str), "the name of a check")
    expect("world_size", _is_int(values["world_size"]) and 1 <= values["world_size"] <= MAX_WORLD_SIZE,
           f"an integer from 1 to {MAX_WORLD_SIZE}")
    _scalars(values, where)
    for key in ("shape", "params"):
        if key in values:
            expect(key, isinstance(values[key], dict), "a mapping")
    if "bonus" in values:
        expect("bonus", isinstance(values["bonus"], bool), "true or false")
    if values.get("group") is not None:
        g = values["group"]
        expect("group", isinstance(g, list) and g and all(_is_int(r) and 0 <= r < values["world_size"] for r in g)
               and len(set(g)) == len(g),
               f"a list of distinct ranks below world_size {values['world_size']}")
        values["group"] = tuple(sorted(g))
    for key, size in (values.get("shape") or {}).items():
        if not (_is_int(size) and size > 0):
            raise ManifestError(f"{where}: 'shape.{key}' must be a positive integer, got {size!r}")
    case = Case(exercise=ex_id, **values)
    s, p = case.shape.get("S"), case.group_size
    if s is not None:  # every check that reads S shards it over the case's P ranks by its scheme
        ranks = f"P = {p} ranks" + (" (the group's size)" if case.group else "")
        if case.scheme == "zigzag":
            chunks, rule = 2 * p, f"2P = {2 * p}: scheme 'zigzag' gives each of the {ranks} two equal chunks"
        else:
            chunks, rule = p, f"P = {p}: scheme {case.scheme!r} gives each of the {ranks} an equal share"
        if s % chunks:
            raise ManifestError(f"{where}: 'shape.S' must be divisible by {rule}, got {s}")
    return case
