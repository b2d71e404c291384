"""Bit arithmetic of Sylvester Hadamard matrices: powers of two, popcount parity, two-factor splits.

Shared by the layout (``hadamard.py``), the transforms and the Triton kernels;
it imports nothing of lmfix, so none of them import each other to get it.
"""

from __future__ import annotations

import torch


def next_pow2(value: int) -> int:
    """Smallest power of two >= value (value >= 1)."""
    return 1 << (value - 1).bit_length()


def parity(values: torch.Tensor) -> torch.Tensor:
    """Popcount parity (0/1) of a non-negative integer tensor, by xor folding."""
    shift = torch.iinfo(values.dtype).bits // 2
    while shift:
        values = values ^ (values >> shift)
        shift //= 2
    return values & 1


def factors(n: int) -> tuple[int, int]:
    """Split n = a * b with b the larger power of two (a == 1 for n < 4)."""
    b = 1 << ((n.bit_length()) // 2)
    return n // b, b
