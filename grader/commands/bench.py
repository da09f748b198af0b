"""`python -m grader bench [SUBMISSION]`: what each distributed attention costs, measured, beside its closed form."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grader import bench, grading, manifest, reference
from grader.cli import MANIFEST_HELP, add_common
from grader.commands.check import default_submission

WIDTH = 140  # the table's width when stdout is not a terminal
OUT_HELP = "folder for bench.csv and the PNGs (default: ./bench)"


def configure(p: argparse.ArgumentParser, *, world_sizes: bool = True) -> None:
    """The bench's options; under torchrun (world_sizes=False) P is the number of processes."""
    p.add_argument("submission", nargs="?", default=None, metavar="SUBMISSION",
                   help="folder with the exercise files (default: ./exercises, else the kit's exercises/; "
                        "`solutions` for the instructor's view)")
    p.add_argument("--exercises", nargs="+", default=list(bench.STRATEGIES), choices=list(bench.STRATEGIES),
                   metavar="EXERCISE", help="strategies to measure: ex3 all-gather KV, ex4 Ulysses, ex5 ring "
                                            "(default: all three)")
    p.add_argument("--schemes", nargs="+", default=list(reference.SCHEMES), choices=list(reference.SCHEMES),
                   metavar="SCHEME", help="sharding schemes (default: all three)")
    if world_sizes:
        p.add_argument("--world-sizes", nargs="+", type=int, default=list(bench.WORLD_SIZES), metavar="P",
                       help="numbers of ranks (default: 1 2 4 8)")
    d = bench.Sizes()
    p.add_argument("--batch", type=int, default=d.batch, help=f"B (default: {d.batch})")
    p.add_argument("--heads", type=int, default=d.heads, help=f"H; Ulysses needs P | H (default: {d.heads})")
    p.add_argument("--head-dim", type=int, default=d.head_dim, help=f"D (default: {d.head_dim})")
    p.add_argument("--tokens-per-rank", type=int, default=d.tokens_per_rank,
                   help=f"n = S/P, with S growing with P (weak scaling; default: {d.tokens_per_rank})")
    p.add_argument("--seq-len", type=int, default=None,
                   help="a fixed S for every P instead (strong scaling)")
    p.add_argument("--dtype", choices=("float32", "float64", "bfloat16", "float16"), default=d.dtype,
                   help=f"dtype of q, k, v (default: {d.dtype})")
    p.add_argument("--reps", type=int, default=2, help="timed runs per figure; the median is shown (default: 2)")
    p.add_argument("--out", default="bench", help=OUT_HELP)
    if world_sizes:
        add_common(p)
    else:
        p.add_argument("--manifest", default=None, help=MANIFEST_HELP)


def sizes_of(args: argparse.Namespace) -> bench.Sizes:
    return bench.Sizes(batch=args.batch, heads=args.heads, head_dim=args.head_dim,
                       tokens_per_rank=args.tokens_per_rank, seq_len=args.seq_len, dtype=args.dtype)


def _kib(n: float | None) -> str:
    return "-" if n is None else f"{n / 1024:,.1f}"


def _against(rows: list[bench.Row], measured, formula) -> str:
    """The worst rank's figure, `=` when every rank's equals its closed form, else `≠` and the closed form."""
    got = [measured(r) for r in rows]
    if any(g is None for g in got):
        return "-"
    want = [formula(r) for r in rows]
    if got == want:
        return f"{_kib(max(got))} [green]=[/]"
    return f"{_kib(max(got))} [red]≠ {_kib(max(want))}[/]"


def _flops(rows: list[bench.Row]) -> str:
    lo, hi = min(r.flops for r in rows) / 1e6, max(r.flops for r in rows) / 1e6
    span = f"{lo:.2f}" if lo == hi else f"{lo:.2f}–{hi:.2f}"
    if all(r.flops == r.flops_formula for r in rows):
        return f"{span} [green]=[/]"
    return (f"{span} [red]≠ {min(r.flops_formula for r in rows) / 1e6:.2f}–"
            f"{max(r.flops_formula for r in rows) / 1e6:.2f}[/]")


COLUMNS = ("strategy", "scheme", "P", "S", "sent=recv KiB", "bwd KiB", "peak KiB (bound)", "MFLOPs/rank",
           "fwd ms", "bwd ms", "output")


def table(result: bench.Bench):
    """One line per configuration: the worst rank's figure, and whether every rank's meets its closed form."""
    from rich import box
    from rich.table import Table

    t = Table(title="cplab bench, per rank: measured  = closed form (or ≠ closed form)", title_justify="left",
              box=box.SIMPLE_HEAD)
    for name in COLUMNS:
        t.add_column(name, justify="left" if name in ("strategy", "scheme", "output") else "right", no_wrap=True)
    configs: dict[tuple, list[bench.Row]] = {}
    for r in result.rows:
        configs.setdefault((r.exercise, r.world_size, r.scheme), []).append(r)
    for (_, p, scheme), rows in configs.items():
        peak, bound = max(r.peak_bytes for r in rows), max(r.memory_formula for r in rows)
        moved = _against(rows, lambda r: r.sent, lambda r: r.bytes_formula)
        if any(r.received != r.bytes_formula for r in rows):
            moved += " " + _against(rows, lambda r: r.received, lambda r: r.bytes_formula) + " recv"
        back = rows[0].backward_s
        t.add_row(rows[0].strategy, scheme, str(p), str(rows[0].seq_len), moved,
                  _against(rows, lambda r: r.backward_sent, lambda r: r.backward_bytes_formula),
                  f"{_kib(peak)} ({_kib(bound)}) ×{peak / bound:.1f}", _flops(rows),
                  f"{rows[0].forward_s * 1e3:.1f}", "-" if back is None else f"{back * 1e3:.1f}",
                  "ok" if all(r.correct for r in rows) else
                  f"[red]WRONG[/] ({max(r.max_error for r in rows):.0e})")
    return t


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    try:
        m = manifest.load(args.manifest)
    except manifest.ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    submission = Path(args.submission) if args.submission else default_submission()
    err = Console(stderr=True)
    steps = bench.plan(args.exercises, args.schemes, args.world_sizes)
    err.print(f"Benchmarking {submission}: {len(steps)} configuration(s)")
    try:
        with Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, transient=True) as progress:
            bar = progress.add_task("starting", total=len(steps))

            def step(label: str) -> None:
                progress.update(bar, description=label, advance=1)

            result = bench.run(submission, m, sizes_of(args), exercises=args.exercises, schemes=args.schemes,
                               world_sizes=args.world_sizes, reps=args.reps, backend=args.backend, on_step=step)
    except grading.SubmissionError as e:
        err.print(f"error: {e}")
        return 2
    return show(result, Path(args.out))


def show(result: bench.Bench, out: Path) -> int:
    """Print what was left out, what failed, the table and the formulas; write the CSV and the PNGs."""
    from rich.console import Console

    from grader import bench_plots

    # Piped or redirected, rich would wrap the table at 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=WIDTH)
    for line in list(result.left_out.values()) + result.notes:
        console.print(line, markup=False)
    for line in result.failures:
        console.print(f"[red]failed[/] {line}", highlight=False)
    if not result.rows:
        console.print("nothing measured: no strategy is implemented yet")
        return 1
    console.print(table(result))
    console.print("closed forms: " + bench.LEGEND, markup=False)
    for exercise in sorted({r.exercise for r in result.rows}):
        formulas = bench.FORMULAS[exercise]
        flops = formulas["flops"] if isinstance(formulas["flops"], str) else ", ".join(
            f"{k} {v}" for k, v in formulas["flops"].items())
        console.print(f"  {bench.STRATEGIES[exercise][0]}: bytes {formulas['bytes']}, backward "
                      f"{formulas['backward bytes']}; FLOPs {flops}; memory bound {formulas['memory']}",
                      markup=False)
    bench.write_csv(result, out / "bench.csv")
    written = bench_plots.write(result, out)
    console.print(f"wrote {out / 'bench.csv'}, " + ", ".join(str(p) for p in written), markup=False)
    return 1 if result.failures else 0
