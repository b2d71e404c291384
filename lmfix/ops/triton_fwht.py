"""Triton kernel of the Walsh-Hadamard transform for CUDA tensors, and the register tiles it is built from.

A D-point transform of a (ROWS, D) register tile is two ``tl.dot`` with small
Hadamard tiles generated in registers (``H_D = H_A kron H_B``, A, B >= 16 for
D >= 256; one ``H_D`` tile for D <= 128), in fp32 with ``input_precision="ieee"``
so +-1 products are not rounded to TF32. Tiles are kept to ~4K fp32 elements
per live tensor (one 8K row for the largest transform) so the kernels fit a real
GPU's registers; larger orders fall back to the torch path. The fused loss
(``triton_loss.py``) reuses these tiles.

What a GPU needs and the interpreter does not check is explicit here: every
block size is a power of two >= 16 and a ``tl.constexpr`` (``_tile_shape``);
element offsets are int64 (``_row_offsets``: row * D passes 2^31 at 2^19
tokens x 4096); row indices stay int32, so the row count is bounded
(``check_rows``); tensors are float32 and contiguous before a launch, which
runs on the tensor's own GPU (``on_device``). Tests run these kernels on CPU
tensors under ``TRITON_INTERPRET=1``; without it, CPU tensors are refused.
"""


from __future__ import annotations

import contextlib

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
# Row indices are int32 inside the kernels (program_id * ROWS + ROWS must not wrap; ROWS <= 256).
MAX_ROWS = 2**31 - _TILE_ELEMENTS


def _tile_shape(n: int) -> tuple[int, int, int]:
    """(ROWS, A, B) for an n-point tile transform: powers of two, every tl.dot dimension >= 16."""
    if not supports_fwht(n) or n & (n - 1):
        raise ValueError(f"Triton Hadamard tiles need a power of two in [{_MIN_ORDER}, {_FWHT_MAX_ORDER}], got {n}")
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
def _row_offsets(first, ROWS: tl.constexpr, WIDTH: tl.constexpr):
    """Rows ``first .. first + ROWS - 1`` (int32) and the int64 offsets of their WIDTH elements."""
    rows = first + tl.arange(0, ROWS)
    return rows, rows.to(tl.int64)[:, None] * WIDTH + tl.arange(0, WIDTH)[None, :]


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
    rows, offsets = _row_offsets(tl.program_id(0) * ROWS, ROWS, A * B)
    mask = (rows < n_rows)[:, None]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    tl.store(out_ptr + offsets, _wht_tile(x, ROWS, A, B), mask=mask)


# Compiled kernels are JITFunctions; under TRITON_INTERPRET=1 triton.jit returns an interpreted one instead.
INTERPRETED = not isinstance(_fwht_kernel, triton.runtime.JITFunction)


def runs_on(x: torch.Tensor) -> bool:
    """Compiled kernels take CUDA tensors only; the interpreter runs them on CPU tensors too."""
    return x.is_cuda or INTERPRETED


def check_rows(x: torch.Tensor, what: str) -> None:
    """One-line errors for what a launch would otherwise turn into a crash or silently wrong rows."""
    if not runs_on(x):
        raise ValueError(f"{what}: the Triton kernels run on CUDA tensors (CPU tensors only under "
                         f"TRITON_INTERPRET=1), got a tensor on {x.device}")
    if x.shape[0] > MAX_ROWS:
        raise ValueError(f"{what}: {x.shape[0]:,} rows exceed the kernels' int32 row index ({MAX_ROWS:,}); "
                         "split the call")
    assert x.dtype == torch.float32 and x.is_contiguous(), "kernels read contiguous float32 rows"


def on_device(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: make it ``x``'s (a tensor on cuda:1 otherwise faults)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Transform of contiguous (M, n) ``x`` (fp32 inside, any float dtype in and out); n a power of two."""
    rows, n = x.shape
    tile_rows, a, b = _tile_shape(n)
    x32 = x.float().contiguous()
    check_rows(x32, "fwht")
    out = torch.empty_like(x32)
    with on_device(x32):
        _fwht_kernel[(triton.cdiv(rows, tile_rows),)](x32, out, rows, ROWS=tile_rows, A=a, B=b, num_warps=_NUM_WARPS)
    return out.to(x.dtype)
