"""Measurements a rank takes around a student's call: attention FLOPs and peak live tensor memory.

Both run inside rank processes and report plain numbers; the grader judges them.
FLOPs are counted with torch.utils.flop_counter's formulas (matmuls, einsums,
SDPA: an op without a formula is decomposed until its parts have one). Its
FlopCounterMode counts 0 for SDPA on the CPU, whose fused kernel neither has a
formula there nor decomposes: here it gets the formula of the other SDPA kernels.
Memory on the CPU is counted by a TorchDispatchMode that tracks every storage
an op creates until its last tensor dies; on CUDA, by max_memory_allocated.

Both modes keep torch._dynamo out: a dispatch mode's first op otherwise
imports it (with sympy: 2 s per rank), only to guard against torch.compile
inside __torch_dispatch__, which these modes never call.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count


class _Probe(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False


_aten = torch.ops.aten
# the ops FlopCounterMode passes through uncounted: queries of metadata, which some tensors dispatch
_METADATA = {getattr(_aten, n).default for n in (
    "is_contiguous", "is_strides_like_format", "is_non_overlapping_and_dense", "size", "sym_size", "stride",
    "sym_stride", "storage_offset", "sym_storage_offset", "numel", "sym_numel", "dim")} | {
    _aten.is_contiguous.memory_format, torch.ops.prim.layout.default, torch.ops.prim.device.default}
FORMULAS = {
    **flop_registry,
    _aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *_, **__: sdpa_flop_count(q.shape, k.shape, v.shape),
    _aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda g, q, k, v, *_, **__: sdpa_backward_flop_count(g.shape, q.shape, k.shape, v.shape),
}


class Flops(_Probe):
    """Total FLOPs of the ops run while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        packet = func._overloadpacket
        if func not in _METADATA and packet not in FORMULAS:
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if packet in FORMULAS and _computed(args, kwargs):
            self.total += int(FORMULAS[packet](*args, **kwargs, out_val=out))
        return out


def _computed(args: tuple, kwargs: dict) -> bool:
    """Whether the op really computed: every tensor a plain one with its data on a device. A formula reads
    only shapes, so a matmul of meta tensors (no data) or of a subclass that claims a shape it does not
    hold would otherwise add FLOPs that cost nothing."""
    tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
    return all(type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type != "meta" for t in tensors)


class LiveBytes(_Probe):
    """Peak bytes of storages created while the mode is active and still referenced."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: dict[int, list[int]] = {}  # data_ptr -> [nbytes, live tensors on it]

    def _release(self, key: int) -> None:
        entry = self._storages.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self._storages[key]

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0:
                continue
            if key not in self._storages:
                self._storages[key] = [storage.nbytes(), 0]
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            self._storages[key][1] += 1
            weakref.finalize(t, self._release, key)
        return out


def measure(fn: Callable[[], Any], *, flops: bool = False, memory: bool = False, device: Any = None) -> tuple[Any, dict]:
    """Run fn() under the requested probes; returns (fn's result, {"flops": n, "peak_bytes": n})."""
    found: dict = {}
    on_cuda = device is not None and torch.device(device).type == "cuda"
    counter = Flops() if flops else None
    live = LiveBytes() if memory and not on_cuda else None
    if memory and on_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    if counter is not None:
        counter.__enter__()
    if live is not None:
        live.__enter__()
    try:
        result = fn()
    finally:
        if live is not None:
            live.__exit__(None, None, None)
        if counter is not None:
            counter.__exit__(None, None, None)
    if counter is not None:
        found["flops"] = counter.total
    if live is not None:
        found["peak_bytes"] = int(live.peak)
    elif memory:
        torch.cuda.synchronize(device)
        found["peak_bytes"] = int(torch.cuda.max_memory_allocated(device) - base)
    return result, found
