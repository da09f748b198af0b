"""The one seam between the grader and student code: load exercise files by path, call their functions.

Runs inside rank processes only; the grader's own process never imports a
submission. Exercise files import each other by plain module name
(`from ex1_sequence_shard import shard_positions`), so the submission
directory goes first on sys.path and every exercise module is imported afresh
for each case: a case never sees state a previous case left in a module.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import traceback
from pathlib import Path
from typing import Any, Callable


class StudentError(Exception):
    """Raised by the adapter with a verdict kind, for the worker to report."""

    def __init__(self, kind: str, message: str, *, function: str = "", where: str = "", tb: str = "",
                 exc_type: str = ""):
        super().__init__(message)
        self.kind, self.message, self.function, self.where, self.tb = kind, message, function, where, tb
        self.exc_type = exc_type


# The grader modules a rank runs; the rest (references, input generators, checks, judges) stay
# in the grader's process. A submission that leans on them fails in the self-check as on the grader.
RANK_MODULES = ("grader", "grader.worker", "grader.adapter", "grader.instrument", "grader.probes",
                "grader.model", "grader.tasks", "grader.sandbox", "grader.zygote", "grader.procfs")


class _HideKitSolutions(importlib.abc.MetaPathFinder):
    """From a rank, neither the kit's solutions/ nor the grader's parent-side modules are importable."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "solutions" or name.startswith("solutions."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        if name.startswith("grader.") and not any(name == m or name.startswith("grader.tasks.")
                                                  for m in RANK_MODULES):
            raise ModuleNotFoundError(f"No module named {name!r} (the grader's own modules stay outside "
                                      f"the ranks)", name=name)
        return None


def isolate(kit_root: Path) -> None:
    """Drop the kit's own folders from sys.path and refuse `import solutions`."""
    kit = {str(kit_root), str(kit_root / "solutions"), str(kit_root / "exercises"), "", "."}
    sys.path[:] = [p for p in sys.path if p not in kit and Path(p or ".").resolve() != kit_root]
    if not any(isinstance(f, _HideKitSolutions) for f in sys.meta_path):
        sys.meta_path.insert(0, _HideKitSolutions())


class Submission:
    """A student's exercise files, as importable modules (fresh per case)."""

    def __init__(self, directory: str, module_names: list[str]):
        self.directory = str(Path(directory).resolve())
        self.module_names = module_names
        for name in module_names:
            sys.modules.pop(name, None)
        if sys.path[:1] != [self.directory]:
            sys.path.insert(0, self.directory)
        importlib.invalidate_caches()

    def close(self) -> None:
        for name in self.module_names:
            sys.modules.pop(name, None)
        while self.directory in sys.path:
            sys.path.remove(self.directory)

    def module(self, name: str) -> Any:
        try:
            return importlib.import_module(name)
        except SyntaxError as e:
            raise StudentError("syntax_error", f"{Path(e.filename or name).name} line {e.lineno}: {e.msg}") from None
        except ModuleNotFoundError as e:
            missing = e.name or "?"
            if missing == name:
                raise StudentError("missing", f"{name}.py is not in the submission") from None
            raise self.wrap(e, f"importing {name}") from None
        except StudentError:
            raise
        except BaseException as e:
            raise self.wrap(e, f"importing {name}") from None

    def function(self, module: str, name: str) -> Callable:
        fn = getattr(self.module(module), name, None)
        if not callable(fn):
            raise StudentError("missing", f"{module}.py defines no function {name}", function=name)
        return fn

    def call(self, module: str, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call a student function; any exception becomes a StudentError that names the student's line."""
        return self.run(f"{module.split('_')[0]} {name}", self.function(module, name), *args, **kwargs)

    def run(self, label: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Run code that reaches into student code (a function, or autograd's backward through it).

        `label` is "exN function ...": the exercise id, then what the student's code is named by.
        """
        function = label.split(" ", 1)[-1]
        try:
            return fn(*args, **kwargs)
        except StudentError:
            raise
        except NotImplementedError as e:
            if self._raised_in_submission(e):
                raise StudentError("not_implemented", f"{label}: not implemented yet", function=function) from None
            raise self.wrap(e, function) from None
        except BaseException as e:
            raise self.wrap(e, function) from None

    def _student_frames(self, exc: BaseException) -> list[traceback.FrameSummary]:
        frames = traceback.extract_tb(exc.__traceback__)
        return [f for f in frames if f.filename.startswith(self.directory)]

    def _raised_in_submission(self, exc: BaseException) -> bool:
        frames = traceback.extract_tb(exc.__traceback__)
        return bool(frames) and frames[-1].filename.startswith(self.directory)

    def wrap(self, exc: BaseException, function: str) -> StudentError:
        kind = "early_exit" if isinstance(exc, SystemExit) else "exception"
        mine = self._student_frames(exc)
        where = ""
        if mine:
            f = mine[-1]
            where = f"{Path(f.filename).name}, line {f.lineno}, in {f.name}"
            if f.line:
                where += f": `{f.line.strip()}`"
        # The ranks import a staged copy: name files as the student knows them, the same on every run.
        tb = "".join(traceback.format_list([traceback.FrameSummary(Path(f.filename).name, f.lineno, f.name,
                                                                   line=f.line) for f in mine]))
        text = str(exc).strip().splitlines()
        first = text[0][:300] if text else ""
        message = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        return StudentError(kind, message, function=function, where=where, tb=tb, exc_type=type(exc).__name__)
