"""Shared fixtures of the kit's own tests: the manifest, temp submissions, and the process table."""

from __future__ import annotations

import os
import shutil
import textwrap
import time
from pathlib import Path

import pytest

from grader import manifest as manifest_mod

KIT = Path(__file__).resolve().parent.parent
EX1_SOLUTION = (KIT / "solutions" / "ex1_sequence_shard.py").read_text()


def ex1_manifest(cases: str, *, timeout: int = 30, extra: str = "") -> str:
    """A manifest of exercise 1 alone: `cases` are its case lines (YAML flow mappings, `- {...}` at column
    0, continuations indented), `extra` more keys of the exercise (indented four spaces)."""
    return ("version: 1\n"
            f"defaults: {{timeout: {timeout}, points: 1}}\n"
            "exercises:\n"
            "  - id: ex1\n"
            "    title: Sequence sharding\n"
            "    file: ex1_sequence_shard.py\n"
            "    functions: [shard_positions, sequence_shard, sequence_unshard, gather_sequence]\n"
            f"{extra}"
            "    cases:\n" + textwrap.indent(textwrap.dedent(cases), " " * 6))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked long go first: under `-n 2 --dist worksteal` the other worker takes the rest."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture(scope="session")
def lab():
    return manifest_mod.load()


def make_submission(tmp: Path, replace: dict[str, str] | None = None) -> Path:
    """A copy of solutions/ with some files replaced by the given source texts."""
    sub = tmp / "submission"
    shutil.copytree(KIT / "solutions", sub, ignore=shutil.ignore_patterns("__pycache__"))
    for name, text in (replace or {}).items():
        (sub / name).write_text(text)
    return sub


def descendants(pid: int | None = None) -> list[int]:
    """Every live process below `pid` (default: this one), read from /proc.

    The shared zygote itself is left out: it is started once per grading
    process, runs no student code and ends with its parent. The pools it
    forks are still counted, so a rank left alive shows up here.
    """
    from grader import zygote

    pid = pid or os.getpid()
    server = zygote.shared().pid
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and not _is_resource_tracker(int(entry)):
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child != server:
                found.append(child)
            todo.append(child)
    return found


def _is_resource_tracker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"multiprocessing.resource_tracker" in f.read()
    except OSError:
        return False


def planted(function: str, code: str, solution: str = "ex1_sequence_shard.py") -> str:
    """A solution file (ex1's unless named) with `code` run first in `function`'s body: a fault planted in
    a known-good file."""
    source = (KIT / "solutions" / solution).read_text()
    start = source.index(f"def {function}(")
    marker = source.index("### BEGIN SOLUTION\n", start) + len("### BEGIN SOLUTION\n")
    lines = "".join(f"    {line}\n" for line in code.strip().splitlines())
    return source[:marker] + lines + source[marker:]


def marked(mark: str) -> list[int]:
    """Live processes whose environment carries CPLAB_TEST_MARK=mark: a test's whole tree, orphans included."""
    needle = f"CPLAB_TEST_MARK={mark}".encode()
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            pass
    return found


def still_marked(mark: str, seconds: float = 30.0) -> list[int]:
    """The marked processes still alive after a grace for orphans to die."""
    deadline = time.monotonic() + seconds
    while (alive := marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive
