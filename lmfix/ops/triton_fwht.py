"""Triton kernel of the Walsh-Hadamard transform for CUDA tensors, and the register tiles it is built from.

A D-point transform of a (ROWS, D) register tile is two ``tl.dot`` with small
Hadamard tiles generated in registers (``H_D = H_A kron H_B``, A, B >= 16 for
D >= 256; one ``H_D`` tile for D <= 128), in fp32 with ``input_precision="ieee"``
so +-1 products are not rounded to TF32. Tiles are kept to ~4K fp32 elements
per live tensor (one 8K row for the largest transform) so the kernels fit a real
GPU's registers; larger orders fall back to the torch path. The fused loss
(``triton_loss.py``) reuses these tiles.

Tests run these kernels on CPU tensors under ``TRITON_INTERPRET=1``.
"""


from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmfix.ops.bits import factors

# Elements of one (ROWS, D) tile; the loss keeps about five of them live.
_TILE_ELEMENTS = 4096
# tl.dot needs every dimension >= 16; a single H_D tile is used up to 128.
_MIN_ORDER, _SINGLE_TILE_MAX = 16, 128
_FWHT_MAX_ORDER = 8192
# 8 warps keep ~5 live 4K-element fp32 tiles at ~100 registers per thread.
_NUM_WARPS = 8


def _tile_shape(n: int) -> tuple[int, int, int]:
    """(ROWS, A, B) for an n-point tile transform with every tl.dot dimension >= 16."""
    a, b = (1, n) if n <= _SINGLE_TILE_MAX else factors(n)
    rows = max(_TILE_ELEMENTS // n, 1 if a > 1 else _MIN_ORDER)
    return rows, a, b


def supports_fwht(n: int) -> bool:
    return _MIN_ORDER <= n <= _FWHT_MAX_ORDER


@triton.jit
def _parity(v):
    v = v ^ (v >> 16)
    v = v ^ (v >> 8)
    v = v ^ (v >> 4)
    v = v ^ (v >> 2)
    v = v ^ (v >> 1)
    return v & 1


@triton.jit
def _hadamard_tile(SIZE: tl.constexpr):
    index = tl.arange(0, SIZE)
    return (1 - 2 * _parity(index[:, None] & index[None, :])).to(tl.float32)


@triton.jit
def _wht_tile(x, ROWS: tl.constexpr, A: tl.constexpr, B: tl.constexpr):
    """Row-wise transform of a (ROWS, A * B) fp32 tile: X H_B, then H_A on the other digit."""
    if A == 1:
        y = tl.dot(x, _hadamard_tile(B), input_precision="ieee")
    else:
        y = tl.dot(tl.reshape(x, (ROWS * A, B)), _hadamard_tile(B), input_precision="ieee")
        y = tl.reshape(tl.permute(tl.reshape(y, (ROWS, A, B)), (0, 2, 1)), (ROWS * B, A))
        y = tl.dot(y, _hadamard_tile(A), input_precision="ieee")
        y = tl.reshape(tl.permute(tl.reshape(y, (ROWS, B, A)), (0, 2, 1)), (ROWS, A * B))
    return y


@triton.jit
def _fwht_kernel(x_ptr, out_ptr, n_rows, ROWS: tl.constexpr, A: tl.constexpr, B: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    offsets = rows.to(tl.int64)[:, None] * (A * B) + tl.arange(0, A * B)[None, :]
    mask = (rows < n_rows)[:, None]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    tl.store(out_ptr + offsets, _wht_tile(x, ROWS, A, B), mask=mask)


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Transform of contiguous (M, n) ``x`` (fp32 inside); the caller checks ``supports_fwht``."""
    rows, n = x.shape
    tile_rows, a, b = _tile_shape(n)
    x32 = x.float().contiguous()
    out = torch.empty_like(x32)
    _fwht_kernel[(triton.cdiv(rows, tile_rows),)](x32, out, rows, ROWS=tile_rows, A=a, B=b, num_warps=_NUM_WARPS)
    return out.to(x.dtype)
