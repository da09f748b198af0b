"""`python -m grader gradescope OUT.zip`: the Gradescope autograder zip (setup.sh, run_autograder, the kit)."""

from __future__ import annotations

import argparse
import sys

from grader import gradescope, manifest
from grader.cli import MANIFEST_HELP


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_zip", metavar="OUT.zip", help="the autograder zip to write")
    p.add_argument("--time-limit", type=float, default=gradescope.DEFAULT_TIME_LIMIT, metavar="SECONDS",
                   help=gradescope.TIME_LIMIT_HELP)
    p.add_argument("--manifest", default=None, help=MANIFEST_HELP)


def run(args: argparse.Namespace) -> int:
    if args.time_limit <= 0:
        print(f"error: --time-limit must be positive, got {args.time_limit:g}", file=sys.stderr)
        return 2
    try:
        m = manifest.load(args.manifest)
    except manifest.ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = gradescope.build(args.out_zip, m, time_limit=args.time_limit)
    cases = m.cases
    print(f"wrote {out}: {len(cases)} case(s) ({sum(c.hidden for c in cases)} hidden), "
          f"{sum(c.points for c in cases):g} points, grading stopped after {args.time_limit:g} s")
    worst = sum(c.timeout for c in cases)
    if worst > args.time_limit:
        print(f"note: if every case ran to its deadline, grading would take {worst:g} s, more than "
              f"--time-limit; such a submission gets score 0 with the reason", file=sys.stderr)
    return 0
