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
    p.add_argument("--torch-index", default=gradescope.DEFAULT_TORCH_INDEX, metavar="URL",
                   help=gradescope.TORCH_INDEX_HELP)
    p.add_argument("--manifest", default=None, help=MANIFEST_HELP)


def run(args: argparse.Namespace) -> int:
    try:
        m = manifest.load(args.manifest)
        plan = gradescope.Plan.of(m, args.time_limit)
    except (manifest.ManifestError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = gradescope.build(args.out_zip, m, time_limit=args.time_limit, torch_index=args.torch_index)
    cases = m.cases
    print(f"wrote {out}: {len(cases)} case(s) ({sum(c.hidden for c in cases)} hidden), "
          f"{sum(c.points for c in cases if not c.bonus):g} points (+{sum(c.points for c in cases if c.bonus):g} "
          f"bonus), torch from {args.torch_index or 'PyPI'}")
    print(plan)
    return 0
