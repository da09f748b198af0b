"""The bench's PNGs: bytes per rank vs P, peak memory vs P (per strategy), and FLOPs per rank by scheme.

Measured figures are markers, closed forms dashed lines in the same colour: a
student's figure off its line is the point of the plot.
"""

from __future__ import annotations

import io
from pathlib import Path

from grader.bench import Bench, Row

COLOURS = {"ex3": "tab:blue", "ex4": "tab:orange", "ex5": "tab:green"}
# all-gather and ring move the same bytes: a larger hollow marker keeps the one under the other visible
MARKERS = {"ex3": dict(marker="s", markersize=10, markerfacecolor="none"), "ex4": dict(marker="^"),
           "ex5": dict(marker="o")}
SCHEME_COLOURS = {"contiguous": "tab:red", "zigzag": "tab:purple", "striped": "tab:cyan"}


def _figure(width: float = 6.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    path.write_bytes(buf.getvalue())
    return path


def _per_p(rows: list[Row], exercise: str, value) -> tuple[list[int], list[float], list[float]]:
    """(P, measured, formula) for one strategy under contiguous sharding, the worst rank of each P."""
    picked = [r for r in rows if r.exercise == exercise and r.scheme == "contiguous"]
    ps = sorted({r.world_size for r in picked})
    measured = [max(value(r)[0] for r in picked if r.world_size == p) for p in ps]
    formula = [max(value(r)[1] for r in picked if r.world_size == p) for p in ps]
    return ps, measured, formula


def _versus_p(bench: Bench, path: Path, value, ylabel: str, title: str) -> Path:
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for exercise in sorted({r.exercise for r in bench.rows}):
        ps, measured, formula = _per_p(bench.rows, exercise, value)
        strategy = next(r.strategy for r in bench.rows if r.exercise == exercise)
        ax.plot(ps, [m / 1024 for m in measured], "-", color=COLOURS[exercise], label=f"{strategy} (measured)",
                **MARKERS[exercise])
        ax.plot(ps, [f / 1024 for f in formula], "--", color=COLOURS[exercise], alpha=0.6,
                label=f"{strategy} (closed form)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({r.world_size for r in bench.rows}))
    ax.get_xaxis().set_major_formatter("{x:.0f}")
    ax.set_xlabel("P (ranks)")
    ax.set_ylabel(ylabel)
    ax.set_title(title + f"\n{_sizes_line(bench)}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _sizes_line(bench: Bench) -> str:
    s = bench.sizes
    length = f"S = {s.seq_len}" if s.seq_len else f"S = P·{s.tokens_per_rank}"
    return f"B={s.batch} H={s.heads} D={s.head_dim} {length} {s.dtype}, contiguous"


def flops_by_scheme(bench: Bench, path: Path) -> Path | None:
    """Ring FLOPs per rank at the largest P, one bar group per rank, one bar per scheme."""
    ring = [r for r in bench.rows if r.exercise == "ex5"]
    if not ring:
        return None
    p = max(r.world_size for r in ring)
    fig = _figure(7.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    schemes = [s for s in SCHEME_COLOURS if any(r.scheme == s for r in ring)]
    width = 0.8 / len(schemes)
    for i, scheme in enumerate(schemes):
        rows = sorted((r for r in ring if r.world_size == p and r.scheme == scheme), key=lambda r: r.rank)
        xs = [r.rank + (i - (len(schemes) - 1) / 2) * width for r in rows]
        ax.bar(xs, [r.flops / 1e6 for r in rows], width, color=SCHEME_COLOURS[scheme], label=f"{scheme} (measured)")
        ax.plot(xs, [r.flops_formula / 1e6 for r in rows], "k_", markersize=10)
    others = [r for r in bench.rows if r.exercise in ("ex3", "ex4") and r.world_size == p]
    if others:
        ax.axhline(others[0].flops / 1e6, color="grey", linestyle=":", label="all-gather KV and Ulysses (no skipping)")
    ax.plot([], [], "k_", markersize=10, label="closed form")
    ax.set_xticks(range(p))
    ax.set_ylim(0, ax.get_ylim()[1] * 1.4)  # room for the legend above the bars
    ax.set_xlabel("rank")
    ax.set_ylabel("attention MFLOPs (forward)")
    s, seq = bench.sizes, next(r.seq_len for r in ring if r.world_size == p)
    ax.set_title(f"ring attention: causal work per rank by scheme, P = {p}\nB={s.batch} H={s.heads} "
                 f"D={s.head_dim} S={seq} {s.dtype}", fontsize=9)
    ax.legend(fontsize=7, ncols=2, loc="upper left")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def write(bench: Bench, folder: Path) -> list[Path]:
    """Every plot the rows allow, into `folder`; the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    if not bench.rows:
        return []
    written = [
        _versus_p(bench, folder / "bytes.png", lambda r: (r.sent, r.bytes_formula), "KiB sent per rank (forward)",
                  "bytes each rank sends in one forward"),
        _versus_p(bench, folder / "memory.png", lambda r: (r.peak_bytes, r.memory_formula),
                  "peak live KiB per rank (forward)", "peak memory of one forward (closed form: a lower bound)"),
    ]
    flops = flops_by_scheme(bench, folder / "flops.png")
    return written + ([flops] if flops else [])
