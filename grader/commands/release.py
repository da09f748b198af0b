"""`python -m grader release OUT_DIR`: the student bundle, without solutions/ or hidden cases."""

from __future__ import annotations

import argparse
import sys

from grader import manifest, release, stubs
from grader.cli import MANIFEST_HELP


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", metavar="OUT_DIR", help="where to write the bundle (must not exist, or be empty)")
    p.add_argument("--manifest", default=None, help=MANIFEST_HELP)


def run(args: argparse.Namespace) -> int:
    try:
        m = manifest.load(args.manifest)
        out = release.build(args.out_dir, m)
    except (manifest.ManifestError, release.ReleaseError, stubs.MarkerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    public = m.select(hidden=False)
    print(f"wrote {out}: {len(m.exercises)} exercise stub(s), {len(public)} public case(s) "
          f"({len(m.cases) - len(public)} hidden case(s) left out); audit found nothing to hide")
    return 0
