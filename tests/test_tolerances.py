"""The tolerances of grader/compare.py against a fresh measurement of standard implementations' error.

benchmarks/tolerances.py attends every float32 and bfloat16 attention case of the manifest with torch's
own kernel, the naive softmax, the exp(scores - lse) form and the kit's solution; this test reruns it.
"""

from __future__ import annotations

import importlib.util
import re

import pytest

from conftest import KIT
from grader import compare
from grader.manifest import load


@pytest.fixture(scope="module")
def measured():
    spec = importlib.util.spec_from_file_location("tolerances", KIT / "benchmarks" / "tolerances.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.measure()


def _world(exercise: str, name: str) -> int:
    return next(c.group_size for c in load().cases if c.exercise == exercise and c.name == name)


def test_every_standard_implementation_passes_every_case_with_the_margin(measured):
    assert {"sdpa", "naive", "lse", "kit"} <= set(next(iter(measured.values())))
    for (exercise, name, dtype), row in measured.items():
        tol = compare.tolerance(dtype, _world(exercise, name))
        assert tol.atol == tol.rtol
        for impl, t in row.items():
            assert compare.TOLERANCE_MARGIN * t <= tol.atol, (exercise, name, impl, t, str(tol))


def test_the_float32_tolerance_is_the_margin_times_the_worst_not_looser(measured):
    worst = max(max(row.values()) for (_, _, dtype), row in measured.items() if dtype == "float32")
    assert compare.TOLERANCES["float32"].atol <= 1.5 * compare.TOLERANCE_MARGIN * worst


def test_ex2_public_large_score_case_is_where_precision_loss_shows_first(measured):
    public = ("ex2", "attention_large_scores", "float32")
    case = next(c for c in load().cases if c.exercise == "ex2" and c.name == public[1])
    assert not case.hidden
    for key, row in measured.items():
        if key[2] == "float32":
            for impl, t in row.items():
                assert measured[public][impl] >= t, (key, impl, t, measured[public][impl])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_figures_next_to_the_tolerance_are_the_measured_ones(measured, dtype):
    comment = (KIT / "grader" / "compare.py").read_text()
    stated = float(re.search(rf"#\s+{dtype}: worst ([0-9.]+e[-+][0-9]+)", comment).group(1))
    worst = max(max(row.values()) for (_, _, d), row in measured.items() if d == dtype)
    assert f"{worst:.1e}" == f"{stated:.1e}", (dtype, worst, stated)
