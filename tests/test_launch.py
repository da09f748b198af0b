"""`torchrun --nproc-per-node=4 -m grader.launch {check,bench}` on gloo: the kit's verdicts in torchrun's processes.

Each test is one torchrun job in a subprocess with a deadline: a buggy ring
fails with the kit's own message, and the bench's figures meet their closed
forms at P = 4.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

from conftest import KIT, make_submission
from variants import VARIANTS, apply

TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
REMOTE_KEYS = "The error appears only at tokens that see keys held by other ranks"


def _torchrun(tmp_path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """One torchrun job; every rank's folder of traces goes with it (torchrun's own torchelastic_* stay)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(tmp)}  # gloo on the CPU, as in CI
    done = subprocess.run([TORCHRUN, "--standalone", "--nproc-per-node=4", "-m", "grader.launch", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=KIT, env=env)
    assert not list(tmp.glob("cplab-*")), sorted(p.name for p in tmp.iterdir())
    return done


def test_a_buggy_ring_fails_under_torchrun_with_the_kits_message(tmp_path):
    variant = next(v for v in VARIANTS if v.name == "ex5_bug_overwrite_no_merge")
    sub = make_submission(tmp_path, {variant.solution: apply(variant)})
    done = _torchrun(tmp_path, "check", str(sub), "ex5", "--public-only")
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert "FAIL ex5 - forward_contiguous" in done.stdout and REMOTE_KEYS in done.stdout
    assert "ring_attention output differs from the reference" in done.stdout


def test_the_bench_under_torchrun_meets_its_closed_forms(tmp_path):
    out = tmp_path / "out"
    done = _torchrun(tmp_path, "bench", "solutions", "--exercises", "ex5", "--schemes", "contiguous", "--tokens-per-rank",
                     "16", "--reps", "1", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "bench.csv")))
    assert [int(r["rank"]) for r in rows] == [0, 1, 2, 3]
    for r in rows:
        assert r["correct"] == "True" and r["world_size"] == "4"
        assert int(r["sent"]) == int(r["received"]) == int(r["bytes_formula"])
        assert int(r["flops"]) == int(r["flops_formula"])
