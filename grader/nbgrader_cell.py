"""What an nbgrader test cell calls: grade named manifest cases on the modules next to the notebook.

[How student code reaches the ranks]
A notebook's answer cell starts with `%%writefile exN_name.py`: running it
writes the module next to the notebook, in the kernel's working directory.
Ranks are spawned processes, which cannot unpickle functions defined in a
notebook ("Can't get attribute ... on <module '__main__'>"), but they import a
file like any other front does. So a test cell grades the directory it runs
in with grading.Grader, exactly as `python -m grader grade` grades a folder,
and the code graded is the code last run, never the notebook's saved text.

[Sibling modules]
Exercises import each other by module name (ex7 imports ex1 ... ex6). All
exercises are notebooks of one assignment in one folder, and nbgrader
autograde runs them in sorted order, so an earlier notebook has written its
module before a later one is tested. Where a module that the tested one
imports, directly or not, is still missing (a student who has not run ex1's
answer cell, or `autograde --notebook ex7`), the cell writes it from the
answer cell of its notebook in the same folder. An existing module file is
never overwritten: it is what its answer cell last wrote, possibly newer
than the notebook on disk. The tested exercise's own module is never written
here: if its answer cell has not run, the cell says so.

[Score and streams]
nbgrader scores a test cell from its outputs (nbgrader/utils.py,
determine_grade): any error or stderr output gives 0; otherwise the first
execute_result is the score when it parses as a float between 0 and the
cell's points; no execute_result gives full points. So `run_cases` prints
every verdict to stdout and returns None when every case passed (full
points, whatever the cell's hidden cases add up to) and the points of the
passed cases otherwise (partial credit). While the cell runs, fd 2 and
sys.stderr point at stdout: a warning or a rank's startup message must not
zero the cell. One exception: under `nbgrader validate` (the Validate
button), which shows stderr but not stdout of a failing cell, the failure
reports go to stderr, so the student sees what failed.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from grader.manifest import Exercise, Manifest

WRITEFILE = "%%writefile"


def answer_id(exercise: str) -> str:
    """The nbgrader grade_id of an exercise's answer cell."""
    return f"{exercise}_answer"


def answer_source(module_file: str, code: str) -> str:
    """An answer cell: the magic line that writes the module, then the module's code."""
    return f"{WRITEFILE} {module_file}\n{code}"


def module_code(cell_source: str) -> str:
    """The module an answer cell writes: its source without the `%%writefile` line."""
    first, _, rest = cell_source.partition("\n")
    return rest if first.startswith(WRITEFILE) else cell_source


def exercise_imports(code: str, lab: Manifest) -> list[Exercise]:
    """The exercises whose modules `code` imports by name; none when it does not parse."""
    by_module = {ex.module: ex for ex in lab.exercises}
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return []  # the grader reports the syntax error itself
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return [by_module[n] for n in sorted(names) if n in by_module]


def _answer_code(notebook: Path, exercise: str) -> str | None:
    """The module that the exercise's answer cell in `notebook` writes; None if there is none to read."""
    try:
        cells = json.loads(notebook.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return None
    for cell in cells:
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") == answer_id(exercise):
            source = cell["source"]
            return module_code("".join(source) if isinstance(source, list) else source)
    return None


def write_missing_modules(directory: Path, lab: Manifest, tested: str) -> list[str]:
    """Write each module that `tested` imports, directly or not, and `directory` lacks, from its notebook there.

    Returns the file names written. The tested exercise's own module is never written.
    """
    own = directory / lab.exercise(tested).file
    if not own.is_file():
        return []
    seen, todo, written = {tested}, exercise_imports(own.read_text(), lab), []
    while todo:
        ex = todo.pop()
        if ex.id in seen:
            continue
        seen.add(ex.id)
        target = directory / ex.file
        if target.is_file():
            code = target.read_text()
        else:
            code = _answer_code(directory / f"{ex.module}.ipynb", ex.id)
            if code is None:
                continue  # no notebook to take it from: the import fails, and the verdict says so
            target.write_text(code)
            written.append(ex.file)
        todo += exercise_imports(code, lab)
    return sorted(written)


@contextlib.contextmanager
def stderr_to_stdout() -> Iterator[None]:
    """Send fd 2 and sys.stderr to stdout, for this process and the ranks it spawns meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(1, 2)
    try:
        with contextlib.redirect_stderr(sys.stdout):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 2)
        os.close(saved)


def run_cases(exercise: str, names: list[str], *, manifest: str | None = None,
              backend: str = "auto") -> float | None:
    """Grade the named cases of `exercise` on the modules in the working directory and print every verdict.

    Returns None when every case passed (nbgrader: full points), else the points of the passed cases.
    """
    with stderr_to_stdout():
        score, failures = _grade(exercise, names, manifest, backend)
    if failures and os.environ.get("NBGRADER_VALIDATING"):
        print("\n\n".join(failures), file=sys.stderr)
    return score


def _grade(exercise: str, names: list[str], manifest_path: str | None,
           backend: str) -> tuple[float | None, list[str]]:
    """(score as run_cases returns it, the failure reports); prints as it goes."""
    from grader import zygote

    # A kernel cannot fork the rank server (it runs threads): the server is a new interpreter that imports
    # torch, started now, while this one imports torch too, not after.
    zygote.shared().start()
    # Imported here, inside the redirect: importing torch may warn, and a warning on stderr scores 0.
    from grader import grading, manifest, report

    lab = manifest.load(manifest_path)
    by_name = {c.name: c for c in lab.select([exercise])}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise manifest.ManifestError(f"{exercise}: no case named {', '.join(unknown)} in {lab.path} "
                                     f"(rebuild the course with `python -m grader nbgrader`)")
    if not names:
        print(f"{exercise}: this cell's cases are all hidden; they run when your notebook is graded.")
        return None, []
    here = Path.cwd()
    module = lab.exercise(exercise).file
    if not (here / module).is_file():
        failure = (f"{module} is not next to this notebook: run the answer cell above (it starts with "
                   f"`{WRITEFILE} {module}`), then this cell.")
        print(failure)
        return 0.0, [failure]
    for name in write_missing_modules(here, lab, exercise):
        print(f"(wrote {name} from its notebook's answer cell, which had not been run in this folder)")
    results, failures = [], []
    with grading.Grader(here, lab, backend=backend) as grader:
        for case in (by_name[n] for n in names):
            result = grader.run(case)
            results.append(result)
            if case.hidden:
                # Its number and kind only, as on Gradescope: its name and message would give its inputs away.
                line = f"{result.name}: " + ("ok" if result.verdict.passed else f"FAIL [{result.verdict.kind.value}]")
                if not result.verdict.passed:
                    failures.append(line)
            elif result.verdict.passed:
                line = f"ok   {case.title}  ({result.seconds:.1f} s)"
            else:
                line = report.failure(result)
                failures.append(line)
            print(line)
    score = sum(r.score for r in results)
    passed = sum(r.verdict.passed for r in results)
    print(f"{exercise}: {passed}/{len(results)} cases passed, {score:g}/{sum(r.case.points for r in results):g} "
          f"points")
    return (None if passed == len(results) else float(score)), failures
