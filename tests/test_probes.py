"""grader.probes counts what torch.utils.flop_counter counts, SDPA on the CPU too, without torch._dynamo.

A dispatch mode's first op imports torch._dynamo and sympy unless the mode
opts out (2 s in every rank that measures); the rank server does not preload
them, so a probe that pulled them in would put those seconds into a case.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from conftest import KIT
from grader import probes


def _explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bhqk,bhkd->bhqd", (q @ k.transpose(-1, -2)).softmax(-1), v)


def _fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def _flops(attention, backward: bool, count) -> int:
    q, k, v = (torch.randn(2, 3, 32, 8, requires_grad=True) for _ in range(3))
    return count(lambda: attention(q, k, v).sum().backward() if backward else attention(q, k, v))


def _torchs(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _ours(fn) -> int:
    return probes.measure(fn, flops=True)[1]["flops"]


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_flops_of_matmuls_and_einsums_match_torchs_counter(backward):
    assert _flops(_explicit, backward, _ours) == _flops(_explicit, backward, _torchs) > 0


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_fused_sdpa_on_the_cpu_counts_as_its_matmuls(backward):
    # torch's own counter sees 0 here: a student's SDPA would hide its work from the FLOP bound
    assert _flops(_fused, backward, _torchs) == 0
    recomputed = 2 * 2 * 3 * 32 * 32 * 8 if backward else 0  # a flash backward computes q @ k^T again
    assert _flops(_fused, backward, _ours) == _flops(_explicit, backward, _torchs) + recomputed


class _Claims(torch.Tensor):
    """A tensor that claims a shape it does not hold: its ops run on a 1x1 tensor inside."""

    @staticmethod
    def __new__(cls, shape):
        return torch.Tensor._make_wrapper_subclass(cls, shape, dtype=torch.float64)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return torch.zeros(1, 1, dtype=torch.float64)


def test_matmuls_that_compute_nothing_count_nothing():
    """FLOPs are a formula of shapes: a matmul of meta tensors, or of a tensor that only claims its shape,
    would add them for free. Only a matmul of plain tensors with data counts."""
    def receipts():
        torch.empty(512, 64, device="meta") @ torch.empty(64, 512, device="meta")
        _Claims((512, 64)) @ _Claims((64, 512))

    assert probes.measure(receipts, flops=True)[1]["flops"] == 0
    real = probes.measure(lambda: torch.randn(512, 64) @ torch.randn(64, 512), flops=True)[1]["flops"]
    assert real == 2 * 512 * 64 * 512


def test_probes_import_no_dynamo():
    code = ("import sys, torch; from grader import probes\n"
            "q = torch.randn(1, 2, 16, 8)\n"
            "_, found = probes.measure(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q), "
            "flops=True, memory=True)\n"
            "assert found['flops'] > 0 and found['peak_bytes'] > 0, found\n"
            "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=KIT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
