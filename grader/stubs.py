"""Student stubs from the solutions: every `### BEGIN SOLUTION` ... `### END SOLUTION` block is cleared.

solutions/ is the single source of the exercise code. A cleared block becomes
`# YOUR CODE HERE` and `raise NotImplementedError()` at the block's
indentation: the same rule nbgrader's ClearSolutions applies to notebooks, so
exercises/, the notebooks and solutions/ cannot drift apart
(tests/test_stubs.py fails when they do; `python -m grader stubs` rewrites).
"""

from __future__ import annotations

import re
from pathlib import Path

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
_MARK = re.compile(r"^(\s*)(### (BEGIN|END) SOLUTION)\s*$")


class MarkerError(ValueError):
    pass


def clear_solutions(source: str, name: str = "<source>") -> str:
    """The stub of one solution file's text."""
    out, inside, indent = [], False, ""
    for lineno, line in enumerate(source.splitlines(keepends=True), start=1):
        m = _MARK.match(line.rstrip("\n"))
        if m and m.group(3) == "BEGIN":
            if inside:
                raise MarkerError(f"{name}:{lineno}: BEGIN SOLUTION inside another solution block")
            if not m.group(1):
                raise MarkerError(f"{name}:{lineno}: solution blocks belong inside function bodies")
            inside, indent = True, m.group(1)
            out.extend(f"{indent}{code}\n" for code in CODE_STUB)
        elif m:
            if not inside:
                raise MarkerError(f"{name}:{lineno}: END SOLUTION without BEGIN")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise MarkerError(f"{name}: BEGIN SOLUTION is never closed")
    return "".join(out)


def stub_files(solutions: Path) -> dict[str, str]:
    """File name -> stub text, for every exercise file in `solutions`."""
    return {p.name: clear_solutions(p.read_text(), p.name) for p in sorted(solutions.glob("ex*.py"))}


def write(solutions: Path, exercises: Path) -> list[str]:
    """Rewrite the stubs in `exercises`; the names of the files that changed."""
    changed = []
    for name, text in stub_files(solutions).items():
        target = exercises / name
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
            changed.append(name)
    return changed
