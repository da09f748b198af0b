"""exercises/ is generated from solutions/: no drift, no solution code, every function raises NotImplementedError."""

from __future__ import annotations

import ast

import pytest

from conftest import KIT
from grader import manifest, stubs


def test_exercises_match_solutions():
    generated = stubs.stub_files(KIT / "solutions")
    assert generated, "solutions/ holds the exercise files"
    for name, text in generated.items():
        assert (KIT / "exercises" / name).read_text() == text, (
            f"exercises/{name} drifted from solutions/{name}: run `python -m grader stubs`")


@pytest.mark.parametrize("exercise", [ex.file for ex in manifest.load().exercises])
def test_stub_functions_raise_and_keep_their_names(exercise):
    stub = (KIT / "exercises" / exercise).read_text()
    solution = (KIT / "solutions" / exercise).read_text()
    assert stubs.BEGIN not in stub and stubs.END not in stub
    lab = manifest.load()
    ex = next(e for e in lab.exercises if e.file == exercise)
    tree = ast.parse(stub)
    defs = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    sol_defs = {n.name: n for n in ast.walk(ast.parse(solution)) if isinstance(n, ast.FunctionDef)}
    for fn in ex.functions:
        assert fn in defs, f"{exercise} lost {fn}"
        assert ast.dump(defs[fn].args) == ast.dump(sol_defs[fn].args), f"{fn}'s signature drifted"
        raises = [n for n in ast.walk(defs[fn]) if isinstance(n, ast.Raise)]
        assert any("NotImplementedError" in ast.unparse(r) for r in raises)
    solution_lines = {line.strip() for block in _blocks(solution) for line in block if line.strip()}
    leaked = [line for line in stub.splitlines() if line.strip() in solution_lines and len(line.strip()) > 25]
    assert not leaked, f"solution code in the stub: {leaked[:3]}"


def _blocks(source: str) -> list[list[str]]:
    out, current = [], None
    for line in source.splitlines():
        if stubs.BEGIN in line:
            current = []
        elif stubs.END in line:
            out.append(current)
            current = None
        elif current is not None:
            current.append(line)
    return out


def test_clear_solutions_rules():
    src = "def f():\n    x = 1\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n"
    assert stubs.clear_solutions(src) == ("def f():\n    x = 1\n    # YOUR CODE HERE\n"
                                          "    raise NotImplementedError()\n")
    with pytest.raises(stubs.MarkerError, match="inside function bodies"):
        stubs.clear_solutions("### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n")
    with pytest.raises(stubs.MarkerError, match="never closed"):
        stubs.clear_solutions("def f():\n    ### BEGIN SOLUTION\n    pass\n")
