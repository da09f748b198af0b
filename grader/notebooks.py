"""An nbgrader course built from the manifest and solutions/: its config and one source notebook per exercise.

[A notebook] exN_name.ipynb, for every exercise the manifest lists:
  1. the lesson: the module docstring of solutions/<file> (the state, the
     axis, the trade-off) and, when the exercise's cases use several
     schemes, a table of which rank holds which token;
  2. how to work in it, and the answer cell: `%%writefile <file>` followed by
     solutions/<file> with its `### BEGIN SOLUTION` blocks, which nbgrader's
     ClearSolutions clears exactly as grader.stubs clears exercises/;
  3. one autograder test cell per check of the exercise: its public cases,
     then its hidden cases between `### BEGIN HIDDEN TESTS` markers, graded
     by grader.nbgrader_cell.run_cases; the cell's points are the manifest
     points of all its cases;
  4. "Say it out loud": a manually graded markdown answer.
The answer cell writes a file because ranks are spawned processes that
import modules; see grader.nbgrader_cell for that and for the score.

[The config] nbgrader_config.py gets one marked block, rewritten on every run
and nothing outside it touched: the per-cell execution timeout (from the
cases' own deadlines) and the wait for an interrupted cell, the exercise
modules kept out of release and autograde copies, hidden tests cleared from
feedback, and the code stub.

[Re-running] Notebooks are regenerated from solutions/ and the manifest and
written only when they change; an exercise added to the manifest gets its
notebook. Nothing is appended, so nothing is ever duplicated.
"""

from __future__ import annotations

import ast
import math
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from grader import reference, stubs
from grader.manifest import SCHEMES, Case, Exercise, Manifest
from grader.nbgrader_cell import answer_id, answer_source, exercise_imports

DEFAULT_ASSIGNMENT = "cplab"
SAY_IT_POINTS = 1.0
# Seconds allowed per case on top of its own deadline: importing the kit in the kernel and starting the
# case's rank processes (2-5 s measured on a loaded 2-core machine); a failed case kills its ranks, so
# every case may start them again.
CASE_START_ALLOWANCE = 30.0
# Seconds nbgrader waits for a cell it interrupted (past Execute.timeout) to end before it fails the whole
# submission (its iopub_timeout, default 4): the cell kills its ranks, and a loaded machine is slow at it.
INTERRUPT_GRACE = 20
DIAGRAM_SEQ_LEN, DIAGRAM_WORLD = 16, 4
CONFIG_BEGIN = "# >>> cplab: written by `python -m grader nbgrader`; this block is rewritten on every run >>>"
CONFIG_END = "# <<< cplab <<<"
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
SCHEMA_VERSION = 3  # nbgrader's cell metadata format


@dataclass(frozen=True)
class Written:
    """A file of the course, and whether this run changed it."""

    path: Path
    changed: bool


def case_groups(ex: Exercise) -> list[tuple[str, list[Case]]]:
    """The exercise's cases grouped by check, in manifest order: one test cell each."""
    groups: dict[str, list[Case]] = {}
    for case in ex.cases:
        groups.setdefault(case.check, []).append(case)
    return list(groups.items())


def cell_seconds(cases: list[Case]) -> float:
    """The longest a test cell of these cases can run: every case to its deadline, each starting its ranks."""
    return sum(c.timeout + CASE_START_ALLOWANCE for c in cases)


def execute_timeout(lab: Manifest) -> int:
    """nbgrader's per-cell timeout for this course: the slowest test cell, at least nbgrader's default 30 s."""
    slowest = max((cell_seconds(cases) for ex in lab.exercises for _, cases in case_groups(ex)), default=0.0)
    return max(30, math.ceil(slowest))


# --- lesson ------------------------------------------------------------------------------------------

_LIST_ITEM = re.compile(r"^\s*(?:[-*]|\d+\.)\s")


def docstring_markdown(doc: str) -> str:
    """A module docstring as markdown: prose stays prose, lines indented 4+ spaces become code blocks.

    Docstrings indent tables and diagrams, sometimes right under a line of prose, where markdown
    would fold them into the paragraph; list items keep their own hanging indent.
    """
    out: list[str] = []
    code: list[str] = []
    in_list = False

    def flush() -> None:
        while code and not code[-1].strip():
            code.pop()
        if code:
            out.extend(["", "```text", *textwrap.dedent("\n".join(code)).splitlines(), "```", ""])
            code.clear()

    for line in doc.splitlines():
        indented = bool(line.strip()) and len(line) - len(line.lstrip(" ")) >= 4
        if indented and not in_list or code and not line.strip():
            code.append(line)
            continue
        flush()
        if not line.strip():
            in_list = False
        elif _LIST_ITEM.match(line):
            in_list = True
        out.append(line)
    flush()
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def ownership_table(schemes: list[str], seq_len: int = DIAGRAM_SEQ_LEN, world_size: int = DIAGRAM_WORLD) -> str:
    """For each scheme, the rank that holds each token: the layout at a glance."""
    rows = [f"{'token':<12}" + "".join(f"{t:>3}" for t in range(seq_len))]
    for scheme in schemes:
        owner = [0] * seq_len
        for r in range(world_size):
            for t in reference.positions(seq_len, r, world_size, scheme).tolist():
                owner[t] = r
        rows.append(f"{scheme:<12}" + "".join(f"{o:>3}" for o in owner))
    return "\n".join(rows)


def lesson(ex: Exercise, code: str) -> str:
    doc = ast.get_docstring(ast.parse(code)) or ex.summary
    head, _, body = doc.partition("\n")
    parts = [f"# {ex.id}: {ex.title}", f"*{head.strip()}*", docstring_markdown(body)]
    schemes = [s for s in SCHEMES if any(c.scheme == s for c in ex.cases)]
    if len(schemes) > 1:
        parts.append(f"**Which rank holds which token** in this exercise's schemes (S = {DIAGRAM_SEQ_LEN} "
                     f"tokens, P = {DIAGRAM_WORLD} ranks; each number is the rank that holds the token):\n\n"
                     f"```text\n{ownership_table(schemes)}\n```")
    return "\n\n".join(p.strip() for p in parts) + "\n"


def how_to(ex: Exercise, siblings: list[Exercise]) -> str:
    text = (f"## Your answer\n\nThe next cell is your answer. Its first line, `%%writefile {ex.file}`, writes "
            f"the module next to this notebook: keep it. The tests run your functions in separate processes, "
            f"one per rank, and those import `{ex.file}`; they cannot see functions defined in the notebook. "
            f"So: edit the cell, **run it**, then run the test cells. Each test cell prints one line per case "
            f"and, for a failing case, what happened and a hint. Hidden cases run when your notebook is graded.")
    if siblings:
        text += (f"\n\nThis module imports {', '.join(f'`{s.file}`' for s in siblings)}: the tests use the files "
                 f"their notebooks' answer cells wrote in this folder (a missing one is written from its "
                 f"notebook).")
    return text + "\n"


SAY_IT_PROMPT = ("## Say it out loud\n\nIn two or three sentences of your own, in the cell below: name the "
                 "**state** this exercise shards or moves (which tensor, which shape), the **axis** it cuts or "
                 "the shape it changes, and the **trade-off** it buys (memory, communication, compute, or a "
                 "limit on P). Graded by hand, {points:g} point(s).\n")
SAY_IT_GUIDE = ("**Grading guide** (students see \"YOUR ANSWER HERE\" instead): full marks when the answer "
                "names the state, the axis or shape change, and the trade-off, as the lesson at the top of "
                "this notebook does; half when one of the three is missing or wrong.\n")


# --- cells -------------------------------------------------------------------------------------------


def _nbgrader(grade_id: str, *, grade: bool, solution: bool, locked: bool, points: float | None = None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": SCHEMA_VERSION,
            "solution": solution, "task": False}
    if points is not None:
        meta["points"] = points
    return {"nbgrader": meta}


def tests_source(ex: Exercise, check: str, cases: list[Case], *, manifest: str | None, backend: str) -> str:
    public = [c.name for c in cases if not c.hidden]
    hidden = [c.name for c in cases if c.hidden]
    options = "".join(f", {k}={v!r}" for k, v in (("manifest", manifest), ("backend", backend))
                      if v and v != "auto")
    lines = [f"# {ex.id} tests: {check}. Fresh rank processes per cell; each case's verdict is printed below.",
             "from grader.nbgrader_cell import run_cases", "", f"cases = {public!r}"]
    if hidden:
        lines += ["### BEGIN HIDDEN TESTS", f"cases += {hidden!r}", "### END HIDDEN TESTS"]
    lines.append(f"run_cases({ex.id!r}, cases{options})")
    return "\n".join(lines)


def notebook(ex: Exercise, code: str, lab: Manifest, *, say_it_points: float, manifest: str | None = None,
             backend: str = "auto") -> nbformat.NotebookNode:
    """The source notebook of one exercise; `code` is solutions/<file>, markers included."""
    # nbformat and nbgrader are imported where used: `python -m grader` loads every command's module,
    # and the Gradescope image, which runs only `grade`, has neither
    from nbformat import v4

    stubs.clear_solutions(code, ex.file)  # fail here, naming the file, on broken markers
    cells = [v4.new_markdown_cell(lesson(ex, code), id=f"{ex.id}_lesson"),
             v4.new_markdown_cell(how_to(ex, exercise_imports(code, lab)), id=f"{ex.id}_how_to"),
             v4.new_code_cell(answer_source(ex.file, code), id=answer_id(ex.id),
                              metadata=_nbgrader(answer_id(ex.id), grade=False, solution=True, locked=False))]
    for check, cases in case_groups(ex):
        grade_id = f"{ex.id}_test_{check}"
        cells.append(v4.new_code_cell(
            tests_source(ex, check, cases, manifest=manifest, backend=backend), id=grade_id,
            metadata=_nbgrader(grade_id, grade=True, solution=False, locked=True,
                               points=float(sum(c.points for c in cases)))))
    cells += [v4.new_markdown_cell(SAY_IT_PROMPT.format(points=say_it_points), id=f"{ex.id}_say_it_prompt"),
              v4.new_markdown_cell(SAY_IT_GUIDE, id=f"{ex.id}_say_it",
                                   metadata=_nbgrader(f"{ex.id}_say_it", grade=True, solution=True,
                                                      locked=False, points=float(say_it_points)))]
    return v4.new_notebook(cells=cells, metadata={"kernelspec": KERNELSPEC, "language_info": {"name": "python"}})


# --- files -------------------------------------------------------------------------------------------


def config_block(lab: Manifest) -> str:
    from nbgrader.coursedir import CourseDirectory

    ignore = list(CourseDirectory.class_traits()["ignore"].default()) + [ex.file for ex in lab.exercises]
    code_stub = {"python": "\n".join(stubs.CODE_STUB)}
    return "\n".join([
        CONFIG_BEGIN,
        "from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor",
        "from nbgrader.preprocessors import ClearHiddenTests, GetGrades",
        "",
        "c = get_config()  # noqa: F821 (defined by the config loader)",
        "# A test cell runs its cases one after another, each under its own deadline, and starts rank",
        "# processes again after a failed case: the slowest test cell of this course may need this long.",
        f"c.Execute.timeout = {execute_timeout(lab)}",
        "# A cell past that timeout is interrupted, kills its ranks and scores 0; nbgrader fails the whole",
        "# submission if the interrupted cell takes longer than this to end.",
        f"c.Execute.iopub_timeout = {INTERRUPT_GRACE}",
        "# The modules that answer cells write (%%writefile): running a source notebook writes the solutions",
        "# next to it, so they must never be released, nor copied over what a submission's cells write.",
        f"c.CourseDirectory.ignore = {ignore!r}",
        "# Feedback shows the autograded test cells: clear their hidden tests first.",
        "c.GenerateFeedback.preprocessors = [GetGrades, CSSHTMLHeaderPreprocessor, ClearHiddenTests]",
        "# The stub that grader.stubs writes into exercises/, so the two copies cannot drift.",
        f"c.ClearSolutions.code_stub = {code_stub!r}",
        CONFIG_END,
    ]) + "\n"


def merge_config(existing: str, block: str) -> str:
    """`existing` with its cplab block replaced by `block` (appended if it has none)."""
    begin, end = existing.find(CONFIG_BEGIN), existing.find(CONFIG_END)
    if begin >= 0 and end > begin:
        return existing[:begin] + block + existing[end + len(CONFIG_END):].lstrip("\n")
    if existing and not existing.endswith("\n"):
        existing += "\n"
    return existing + ("\n" if existing else "") + block


def _write(path: Path, text: str) -> Written:
    if path.exists() and path.read_text() == text:
        return Written(path, False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return Written(path, True)


class BuildError(ValueError):
    """An exercise the course cannot be built from, named."""


def build(course: Path, lab: Manifest, solutions: Path, *, assignment: str = DEFAULT_ASSIGNMENT,
          say_it_points: float = SAY_IT_POINTS, manifest: str | None = None,
          backend: str = "auto") -> list[Written]:
    """Create or update the course at `course`: nbgrader_config.py and source/<assignment>/<module>.ipynb."""
    import nbformat

    written = []
    config = course / "nbgrader_config.py"
    written.append(_write(config, merge_config(config.read_text() if config.exists() else "", config_block(lab))))
    for ex in lab.exercises:
        path = solutions / ex.file
        if not path.is_file():
            raise BuildError(f"{ex.id}: {path} does not exist (the manifest lists {ex.file})")
        try:
            nb = notebook(ex, path.read_text(), lab, say_it_points=say_it_points, manifest=manifest,
                          backend=backend)
        except stubs.MarkerError as e:
            raise BuildError(f"{ex.id}: {e}") from None
        written.append(_write(course / "source" / assignment / f"{ex.module}.ipynb", nbformat.writes(nb) + "\n"))
    return written
