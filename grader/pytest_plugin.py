"""The pytest front: `pytest exercises/` runs one test per public case of the manifest.

exercises/conftest.py imports these hooks. An exercise file is collected as
a file of cases (the student's module itself is never imported here; it runs
only in rank processes). A failing case reports its verdict, not a
traceback; the session ends with the per-exercise score table.

Hooks are in lifecycle order: configure, header, collect, run, report.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from grader import zygote

# The rank server is a new interpreter that imports torch (a process pytest runs in may hold threads, so
# it does not fork one): started before this process imports torch below, the two imports overlap.
zygote.shared().start()

from grader import manifest as manifest_mod  # noqa: E402
from grader import report  # noqa: E402
from grader.grading import CaseResult, Grader  # noqa: E402
from grader.verdict import Kind  # noqa: E402

_STATE = pytest.StashKey[dict]()


def pytest_addoption(parser: pytest.Parser) -> None:
    from grader.cli import BACKEND_HELP, MANIFEST_HELP

    group = parser.getgroup("cplab")
    group.addoption("--backend", choices=("auto", "gloo", "nccl"), default="auto", help=BACKEND_HELP)
    group.addoption("--manifest", default=None, help=MANIFEST_HELP)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cplab_case(case_id): a graded case of the lab manifest")
    config.stash[_STATE] = {"manifest": manifest_mod.load(config.getoption("--manifest")),
                            "graders": {}, "results": []}


def pytest_report_header(config: pytest.Config) -> list[str]:
    m = config.stash[_STATE]["manifest"]
    public = [c for c in m.cases if not c.hidden]
    sizes = sorted({c.world_size for c in public})
    timeouts = sorted({c.timeout for c in public})
    return [f"cplab: backend {config.getoption('--backend')}, world sizes {sizes}, "
            f"case timeouts {'/'.join(f'{t:g}' for t in timeouts)} s, manifest {m.path}"]


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    m = parent.config.stash[_STATE]["manifest"]
    for ex in m.exercises:
        if file_path.name == ex.file:
            return ExerciseFile.from_parent(parent, path=file_path, exercise_id=ex.id)
    return None


class ExerciseFile(pytest.File):
    def __init__(self, *, exercise_id: str, **kwargs: object):
        super().__init__(**kwargs)
        self.exercise_id = exercise_id

    def collect(self):
        m = self.config.stash[_STATE]["manifest"]
        for case in m.select([self.exercise_id], hidden=False):
            item = CaseItem.from_parent(self, name=case.id, case=case)
            item.add_marker(pytest.mark.cplab_case(case.id))
            yield item


class CaseNote(UserWarning):
    """A passed case's note (recommended, not graded), shown in pytest's warnings summary."""


class CaseFailed(Exception):
    def __init__(self, result: CaseResult):
        super().__init__(result.verdict.message)
        self.result = result


class CaseItem(pytest.Item):
    def __init__(self, *, case: manifest_mod.Case, **kwargs: object):
        super().__init__(**kwargs)
        self.case = case

    def _grader(self) -> Grader:
        state = self.config.stash[_STATE]
        directory = self.path.parent
        if directory not in state["graders"]:
            state["graders"][directory] = Grader(directory, state["manifest"],
                                                 backend=self.config.getoption("--backend"))
        return state["graders"][directory]

    def runtest(self) -> None:
        result = self._grader().run(self.case)
        self.config.stash[_STATE]["results"].append(result)
        if result.verdict.skipped:
            pytest.skip(result.verdict.message)
        if result.bonus_not_attempted:
            pytest.skip(f"bonus, not attempted: {result.verdict.message}")
        if not result.verdict.passed:
            raise CaseFailed(result)
        if result.verdict.message:  # passed, with a note on what is recommended but not graded
            warnings.warn_explicit(CaseNote(report.note(result)), CaseNote, str(self.path), 0)

    def repr_failure(self, excinfo: pytest.ExceptionInfo, style: object = None) -> str:
        if isinstance(excinfo.value, CaseFailed):
            result = excinfo.value.result
            if result.verdict.kind is Kind.NOT_IMPLEMENTED:
                return result.verdict.message
            return report.failure(result)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, self.case.title


def pytest_sessionfinish(session: pytest.Session) -> None:
    for grader in session.config.stash[_STATE]["graders"].values():
        grader.close()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash[_STATE]
    if state["results"]:
        terminalreporter.section("cplab score")
        terminalreporter.write_line(report.score_table(state["results"], state["manifest"]))
