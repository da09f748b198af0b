"""The bench (`python -m grader bench`): measured figures against their closed forms, on small sizes.

The solutions must meet every byte and FLOP formula exactly, with the ring's
memory flat in P and all-gather's growing; a ring that keeps every block must
show in the memory figures; an unimplemented exercise is left out with a line.
"""

from __future__ import annotations

import pytest

from conftest import KIT, make_submission
from grader import bench, cli
from variants import VARIANTS, apply

SIZES = bench.Sizes(heads=8, head_dim=8, tokens_per_rank=16)
SMALL_P, LARGE_P = 2, 8


@pytest.fixture(scope="module")
def solutions(lab):
    return bench.run(KIT / "solutions", lab, SIZES, schemes=["contiguous", "zigzag"], world_sizes=[SMALL_P, LARGE_P],
                     reps=1)


def _rows(result, exercise, scheme, p):
    return sorted((r for r in result.rows if (r.exercise, r.scheme, r.world_size) == (exercise, scheme, p)),
                  key=lambda r: r.rank)


def test_solutions_meet_every_byte_and_flop_formula_exactly(solutions):
    assert not solutions.failures and not solutions.left_out
    assert {(r.exercise, r.world_size) for r in solutions.rows} == {
        (ex, p) for ex in bench.STRATEGIES for p in (SMALL_P, LARGE_P)}
    for r in solutions.rows:
        where = f"{r.exercise} {r.scheme} P={r.world_size} rank {r.rank}"
        assert r.correct, f"{where}: output off by {r.max_error}"
        assert r.sent == r.received == r.bytes_formula, where
        assert r.backward_sent == r.backward_received == r.backward_bytes_formula, where
        assert r.flops == r.flops_formula, where
        assert r.peak_bytes >= r.memory_formula, f"{where}: below the closed form's lower bound"


def test_ring_memory_is_flat_in_p_while_all_gather_grows(solutions):
    def peak(exercise, p):
        return max(r.peak_bytes for r in _rows(solutions, exercise, "contiguous", p))

    assert peak("ex5", LARGE_P) <= 1.1 * peak("ex5", SMALL_P)
    assert peak("ex3", LARGE_P) >= 2.5 * peak("ex3", SMALL_P)


def test_contiguous_work_rises_with_the_rank_and_zigzag_balances_it(solutions):
    contiguous = [r.flops for r in _rows(solutions, "ex5", "contiguous", LARGE_P)]
    zigzag = [r.flops for r in _rows(solutions, "ex5", "zigzag", LARGE_P)]
    assert contiguous == sorted(contiguous) and contiguous[-1] == LARGE_P * contiguous[0]
    assert max(zigzag) <= 1.05 * min(zigzag)


def test_a_ring_that_keeps_every_block_shows_in_its_memory(tmp_path, lab):
    variant = next(v for v in VARIANTS if v.name == "ex5_bug_keeps_all_blocks")
    sub = make_submission(tmp_path, {variant.solution: apply(variant)})
    result = bench.run(sub, lab, SIZES, exercises=["ex5"], schemes=["contiguous"],
                       world_sizes=[SMALL_P, LARGE_P], reps=1)
    peaks = {p: max(r.peak_bytes for r in _rows(result, "ex5", "contiguous", p)) for p in (SMALL_P, LARGE_P)}
    assert all(r.correct for r in result.rows)
    assert peaks[LARGE_P] >= 1.5 * peaks[SMALL_P], peaks  # the solution's: within 10%


def test_the_command_leaves_an_unimplemented_exercise_out_with_a_line(tmp_path, capsys):
    stub = (KIT / "exercises" / "ex5_ring_attention.py").read_text()
    sub = make_submission(tmp_path, {"ex5_ring_attention.py": stub})
    out = tmp_path / "out"
    code = cli.main(["bench", str(sub), "--exercises", "ex4", "ex5", "--world-sizes", "2", "--schemes", "contiguous",
                     "--reps", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "ex5 (ring) left out: ex5 ring_attention: not implemented yet" in printed
    assert "Ulysses" in printed and "ring  " not in printed
    assert (out / "bench.csv").read_text().count("\nex4,") == 2  # one line per rank
    for name in ("bytes.png", "memory.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "flops.png").exists()  # the ring's plot, and the ring was left out


def test_a_backward_that_raises_keeps_the_forward_figures_and_says_so(tmp_path, lab):
    solution = (KIT / "solutions" / "ex3_allgather_attention.py").read_text()
    broken = solution.replace("        world_size = dist.get_world_size(ctx.group)\n        batch, heads, seq_len",
                              "        raise RuntimeError('no backward here')\n        batch, heads, seq_len")
    assert broken != solution
    sub = make_submission(tmp_path, {"ex3_allgather_attention.py": broken})
    result = bench.run(sub, lab, SIZES, exercises=["ex3"], schemes=["contiguous"], world_sizes=[SMALL_P], reps=1)
    assert result.failures == ["ex3 contiguous P=2: backward raised RuntimeError: no backward here"]
    assert [(r.sent, r.backward_sent) for r in result.rows] == [(r.bytes_formula, None) for r in result.rows]


def test_past_the_reference_size_a_spread_sample_of_rows_is_checked(monkeypatch):
    import torch

    from grader import reference
    from grader.compare import tolerance

    monkeypatch.setattr(bench, "REFERENCE_ELEMENTS", 1000)
    sizes = bench.Sizes(heads=2, head_dim=4, tokens_per_rank=256, dtype="float64")
    _, full = bench.inputs(sizes, 2, "zigzag")
    pos = reference.positions(512, 1, 2, "zigzag")
    right = reference.shard(reference.causal_attention(full["q"], full["k"], full["v"])[0], 1, 2, 2, "zigzag")
    tol = tolerance("float64")
    error, within = bench.output_error(right, full, "float64", pos, tol)
    assert within and error < 1e-12
    sampled = torch.linspace(0, 255, bench.SAMPLE_ROWS).round().long()
    for row, caught in ((int(sampled[3]), False), (int(sampled[3]) + 1, True)):
        wrong = right.clone()
        wrong[:, :, row] += 1.0
        assert bench.output_error(wrong, full, "float64", pos, tol)[1] is caught


@pytest.mark.parametrize("scheme", ["contiguous", "zigzag", "striped"])
@pytest.mark.parametrize("p, n", [(2, 4), (3, 8), (4, 16), (8, 6)])
def test_the_compute_check_bounds_each_rank_by_the_benchs_formula(scheme, p, n):
    """The compute cases hold a rank's counted work to its rectangles of visible pairs (a bound under
    contiguous sharding, a note under zigzag and striped), derived from the positions; the bench's closed
    forms are written from the algebra. The two must agree."""
    from grader.checks.attention import rectangle_blocks
    from grader.manifest import Case

    sizes = bench.Sizes(batch=1, heads=1, head_dim=1, tokens_per_rank=n)
    case = Case("ex5", "compute", "compute", p, scheme=scheme, shape={"B": 1, "H": 1, "S": p * n, "D": 1})
    for rank in range(p):
        block = 4 * n * n
        assert rectangle_blocks(case, rank) == pytest.approx(bench.predict("ex5", scheme, sizes, p, rank)["flops"]
                                                             / block), (scheme, p, rank)
