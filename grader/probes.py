"""Measurements a rank takes around a student's call: attention FLOPs and peak live tensor memory.

Both run inside rank processes and report plain numbers; the grader judges them.
FLOPs come from torch.utils.flop_counter (it sees matmuls, einsums and SDPA).
Memory on the CPU is counted by a TorchDispatchMode that tracks every storage
an op creates until its last tensor dies; on CUDA, by max_memory_allocated.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode


class LiveBytes(TorchDispatchMode):
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
    counter = FlopCounterMode(display=False) if flops else None
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
        found["flops"] = int(counter.get_total_flops())
    if live is not None:
        found["peak_bytes"] = int(live.peak)
    elif memory:
        torch.cuda.synchronize(device)
        found["peak_bytes"] = int(torch.cuda.max_memory_allocated(device) - base)
    return result, found
