"""Count the memory that torch ops allocate, on any device, without a profiler.

A ``TorchDispatchMode`` sees every aten op; each output whose storage is new
(not a view of an input) is counted until its storage is freed, which a
``weakref.finalize`` on the storage reports. This gives the peak of bytes live
beyond what existed before, and the largest single allocation: both honest
for code that must never build a V x d matrix or the full logits.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class AllocationTracker(TorchDispatchMode):
    """Use as ``with AllocationTracker() as tracker: ...``; read ``peak_bytes``, ``largest_bytes``."""

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, int] = {}
        self.live_bytes = 0
        self.peak_bytes = 0
        self.largest_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._record(tensor.untyped_storage(), seen)
        return out

    def _record(self, storage: torch.UntypedStorage, seen: set[int]) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in seen or key in self._live:
            return
        self._live[key] = size
        self.live_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self.largest_bytes = max(self.largest_bytes, size)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live_bytes -= self._live.pop(key)
