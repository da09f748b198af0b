"""The lab manifest: exercises and their cases, loaded from lab_manifest.yaml and validated.

Every front (pytest, check, grade, nbgrader) reads its cases from here, so a
case is defined once. Validation happens on load and names the file, the
exercise, the case and the key: "lab_manifest.yaml: ex1 case 'gather': unknown
key 'wold_size' (known: ...)".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KIT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MANIFEST = KIT_ROOT / "lab_manifest.yaml"

SCHEMES = ("contiguous", "zigzag", "striped")
DTYPES = ("float64", "float32", "bfloat16", "float16")
VISIBILITIES = ("public", "hidden")


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
        raw = yaml.safe_load(path.read_text())
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
    return manifest


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

    expect("world_size", isinstance(values["world_size"], int) and 1 <= values["world_size"] <= 64,
           "an integer from 1 to 64")
    for key, choices in (("scheme", SCHEMES), ("dtype", DTYPES), ("visibility", VISIBILITIES)):
        if key in values:
            expect(key, values[key] in choices, f"one of {', '.join(choices)}")
    for key in ("points", "timeout"):
        if key in values:
            expect(key, isinstance(values[key], (int, float)) and values[key] >= 0, "a number >= 0")
    if "seed" in values:
        expect("seed", isinstance(values["seed"], int), "an integer")
    for key in ("shape", "params"):
        if key in values:
            expect(key, isinstance(values[key], dict), "a mapping")
    if values.get("group") is not None:
        g = values["group"]
        expect("group", isinstance(g, list) and g and len(set(g)) == len(g)
               and all(isinstance(r, int) and 0 <= r < values["world_size"] for r in g),
               f"a list of distinct ranks below world_size {values['world_size']}")
        values["group"] = tuple(sorted(g))
    return Case(exercise=ex_id, **values)
