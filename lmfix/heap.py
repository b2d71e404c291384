"""Keep freed memory in the process heap instead of handing it back to the OS (glibc).

Why: glibc serves every allocation over its mmap threshold (at most 32 MiB) with a
fresh ``mmap`` and unmaps it on ``free``. A training step allocates several such
tensors and frees them again (a learned E's bf16 copy and its V x d gradient, the
N x V softmax gradient in bf16), so every step faults all their pages in anew.
With the heap kept, the same memory is reused from step to step: measured here,
bf16 training steps at 512/512 ran 1.38x -> 1.70x (learned) and 1.46x -> 1.60x
(orthogonal) faster than float32 (``lmfix bench train``), and a learned bf16 step
took about 1,000 minor page faults instead of 40,000 (``/usr/bin/time``, 12 steps
against 4). Reuse is not guaranteed (glibc's memalign padding can keep a freed
block from fitting the next request); these numbers include that. The price is
that the process keeps its peak memory until it exits, as jemalloc or tcmalloc would.

The CLI calls ``retain_freed_memory`` once at start; ``LMFIX_MALLOC=system`` keeps
glibc's defaults. Elsewhere (musl, macOS, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import os

# mallopt parameters from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP = 2**31 - 1  # an int: the largest trim threshold mallopt takes


def retain_freed_memory() -> bool:
    """Serve large allocations from the heap and never trim it; False where that is not possible or opted out."""
    if os.environ.get("LMFIX_MALLOC", "") == "system":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _KEEP) == 1
