"""Triton kernels for CUDA tensors: the transform and the fused distinct-row loss.

A D-point transform of a (ROWS, D) register tile is two ``tl.dot`` with small
Hadamard tiles generated in registers (``H_D = H_A kron H_B``, A, B >= 16 for
D >= 256; one ``H_D`` tile for D <= 128), in fp32 with ``input_precision="ieee"``
so +-1 products are not rounded to TF32. The loss kernels give each program
ROWS tokens and stream over the R vocabulary blocks: forward keeps an online
max / sum-exp per token, backward recomputes each block, accumulates
``E'^T (w p)`` in registers and adds ``sum_t w p`` to the bias gradient with
atomics. Tiles are kept to ~4K fp32 elements per live tensor (one 8K row for
the largest transform) so the kernels fit a real GPU's registers; larger
orders and blocks fall back to the torch path (cuBLAS GEMMs).

Tests run these kernels on CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmfix.ops.hadamard_loss import HeadInputs
from lmfix.ops.transform import factors

# Elements of one (ROWS, D) tile; the loss keeps about five of them live.
_TILE_ELEMENTS = 4096
# tl.dot needs every dimension >= 16; a single H_D tile is used up to 128.
_MIN_ORDER, _SINGLE_TILE_MAX = 16, 128
_FWHT_MAX_ORDER = 8192
_LOSS_MAX_BLOCK = 4096
# 8 warps keep ~5 live 4K-element fp32 tiles at ~100 registers per thread.
_NUM_WARPS = 8


def _tile_shape(n: int) -> tuple[int, int, int]:
    """(ROWS, A, B) for an n-point tile transform with every tl.dot dimension >= 16."""
    a, b = (1, n) if n <= _SINGLE_TILE_MAX else factors(n)
    rows = max(_TILE_ELEMENTS // n, 1 if a > 1 else _MIN_ORDER)
    return rows, a, b


def supports_fwht(n: int) -> bool:
    return _MIN_ORDER <= n <= _FWHT_MAX_ORDER


def supports_loss(block: int) -> bool:
    return _MIN_ORDER <= block <= _LOSS_MAX_BLOCK


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


@triton.jit
def _block_scores(x, high, block, ROWS: tl.constexpr, A: tl.constexpr, B: tl.constexpr):
    """Unscaled scores of vocabulary block ``block`` and the block's column signs."""
    signs = (1 - 2 * _parity(high & block)).to(tl.float32)
    return _wht_tile(x * signs[None, :], ROWS, A, B), signs


@triton.jit
def _loss_fwd_kernel(
    x_ptr, high_ptr, bias_ptr, lse_ptr, scale, n_tokens, n_blocks,
    ROWS: tl.constexpr, A: tl.constexpr, B: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, A * B)
    row_ok = rows < n_tokens
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * (A * B) + cols[None, :], mask=row_ok[:, None], other=0.0)
    high = tl.load(high_ptr + cols)
    peak = tl.full((ROWS,), -float("inf"), tl.float32)
    total = tl.zeros((ROWS,), tl.float32)
    for block in range(0, n_blocks):
        scores, _ = _block_scores(x, high, block, ROWS, A, B)
        logits = scores * scale + tl.load(bias_ptr + block * (A * B) + cols)[None, :]
        new_peak = tl.maximum(peak, tl.max(logits, 1))
        total = total * tl.exp(peak - new_peak) + tl.sum(tl.exp(logits - new_peak[:, None]), 1)
        peak = new_peak
    tl.store(lse_ptr + rows, peak + tl.log(total), mask=row_ok)


@triton.jit
def _loss_bwd_kernel(
    x_ptr, high_ptr, bias_ptr, lse_ptr, weight_ptr, folded_ptr, bias_grad_ptr, scale, n_tokens, n_blocks,
    ROWS: tl.constexpr, A: tl.constexpr, B: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, A * B)
    row_ok = rows < n_tokens
    offsets = rows.to(tl.int64)[:, None] * (A * B) + cols[None, :]
    x = tl.load(x_ptr + offsets, mask=row_ok[:, None], other=0.0)
    high = tl.load(high_ptr + cols)
    # Padding tokens get lse = +inf and weight 0, so their probabilities are exactly 0.
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=float("inf"))
    weight = tl.load(weight_ptr + rows, mask=row_ok, other=0.0)
    folded = tl.zeros((ROWS, A * B), tl.float32)
    for block in range(0, n_blocks):
        scores, signs = _block_scores(x, high, block, ROWS, A, B)
        words = block * (A * B) + cols
        logits = scores * scale + tl.load(bias_ptr + words)[None, :]
        probs = tl.exp(logits - lse[:, None]) * weight[:, None]
        tl.atomic_add(bias_grad_ptr + words, tl.sum(probs, 0))
        folded += _wht_tile(probs, ROWS, A, B) * signs[None, :]
    tl.store(folded_ptr + offsets, folded, mask=row_ok[:, None])


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Transform of contiguous (M, n) ``x`` (fp32 inside); the caller checks ``supports_fwht``."""
    rows, n = x.shape
    tile_rows, a, b = _tile_shape(n)
    x32 = x.float().contiguous()
    out = torch.empty_like(x32)
    _fwht_kernel[(triton.cdiv(rows, tile_rows),)](x32, out, rows, ROWS=tile_rows, A=a, B=b, num_warps=_NUM_WARPS)
    return out.to(x.dtype)


class TritonBlocks:
    """Backend of ``_BlockCrossEntropy`` running the loss kernels (fp32 inside).

    The kernels stream over the vocabulary, so ``chunk_size`` is not needed.
    """

    def __init__(self, inputs: HeadInputs, chunk_size: int | None = None) -> None:
        layout = inputs.layout
        self.dtype = inputs.x.dtype
        self.x = inputs.x.float().contiguous()
        self.bias = inputs.bias.float().contiguous()
        self.high = torch.zeros(layout.block, dtype=torch.int32, device=self.x.device)
        self.high[: layout.dim] = layout.high_bits(self.x.device).to(torch.int32)
        self.scale = inputs.scale
        self.n_blocks = layout.num_blocks
        self.rows, self.a, self.b = _tile_shape(layout.block)
        self.grid = (triton.cdiv(self.x.shape[0], self.rows),)

    def logsumexp(self) -> torch.Tensor:
        lse = torch.empty(self.x.shape[0], dtype=torch.float32, device=self.x.device)
        _loss_fwd_kernel[self.grid](
            self.x, self.high, self.bias, lse, self.scale, self.x.shape[0], self.n_blocks,
            ROWS=self.rows, A=self.a, B=self.b, num_warps=_NUM_WARPS,
        )  # fmt: skip
        return lse.to(self.dtype)

    def softmax_terms(self, lse: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        folded = torch.empty_like(self.x)
        bias_grad = torch.zeros_like(self.bias)
        _loss_bwd_kernel[self.grid](
            self.x, self.high, self.bias, lse.float().contiguous(), weight.float().contiguous(), folded, bias_grad,
            self.scale, self.x.shape[0], self.n_blocks,
            ROWS=self.rows, A=self.a, B=self.b, num_warps=_NUM_WARPS,
        )  # fmt: skip
        return folded.to(self.dtype), bias_grad.to(self.dtype)

    def lse_and_terms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Both passes for unit weights (the kernels recompute the blocks anyway)."""
        lse = self.logsumexp()
        return lse, *self.softmax_terms(lse, torch.ones_like(lse))
