"""Triton kernels of the fused distinct-row Hadamard loss for CUDA tensors.

Each program takes ROWS tokens and streams over the R vocabulary blocks:
forward keeps an online max / sum-exp per token, backward recomputes each
block, accumulates ``E'^T (w p)`` in registers and adds ``sum_t w p`` to the
bias gradient with atomics. Blocks larger than ``_LOSS_MAX_BLOCK`` fall back to
the torch path (cuBLAS GEMMs). The transform tiles, the int64 offsets and the
launch checks come from ``triton_fwht.py``. The scale ``alpha / sqrt(d)`` is
read from device memory, so a learned alpha never waits for the GPU.

Tests run these kernels on CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmfix.ops.hadamard_blocks import HeadInputs
from lmfix.ops.triton_fwht import (
    _MIN_ORDER,
    _NUM_WARPS,
    _parity,
    _row_offsets,
    _tile_shape,
    _wht_tile,
    check_rows,
    on_device,
)

_LOSS_MAX_BLOCK = 4096


def supports_loss(block: int) -> bool:
    return _MIN_ORDER <= block <= _LOSS_MAX_BLOCK


@triton.jit
def _block_scores(x, high, block, ROWS: tl.constexpr, A: tl.constexpr, B: tl.constexpr):
    """Unscaled scores of vocabulary block ``block`` and the block's column signs."""
    signs = (1 - 2 * _parity(high & block)).to(tl.float32)
    return _wht_tile(x * signs[None, :], ROWS, A, B), signs


@triton.jit
def _loss_fwd_kernel(
    x_ptr, high_ptr, bias_ptr, lse_ptr, scale_ptr, n_tokens, n_blocks,
    ROWS: tl.constexpr, A: tl.constexpr, B: tl.constexpr,
):  # fmt: skip
    rows, offsets = _row_offsets(tl.program_id(0) * ROWS, ROWS, A * B)
    cols = tl.arange(0, A * B)
    row_ok = rows < n_tokens
    x = tl.load(x_ptr + offsets, mask=row_ok[:, None], other=0.0)
    high = tl.load(high_ptr + cols)
    scale = tl.load(scale_ptr)
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
    x_ptr, high_ptr, bias_ptr, lse_ptr, weight_ptr, folded_ptr, bias_grad_ptr, scale_ptr, n_tokens, n_blocks,
    ROWS: tl.constexpr, A: tl.constexpr, B: tl.constexpr,
):  # fmt: skip
    rows, offsets = _row_offsets(tl.program_id(0) * ROWS, ROWS, A * B)
    cols = tl.arange(0, A * B)
    row_ok = rows < n_tokens
    x = tl.load(x_ptr + offsets, mask=row_ok[:, None], other=0.0)
    high = tl.load(high_ptr + cols)
    scale = tl.load(scale_ptr)
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


class TritonBlocks:
    """Backend of ``_BlockCrossEntropy`` running the loss kernels (fp32 inside).

    The kernels stream over the vocabulary, so ``chunk_size`` is not needed.
    """

    def __init__(self, inputs: HeadInputs, chunk_size: int | None = None) -> None:
        layout = inputs.layout
        self.dtype = inputs.x.dtype
        self.x = inputs.x.float().contiguous()
        check_rows(self.x, "hadamard loss")
        self.bias = inputs.bias.float().contiguous()
        self.high = torch.zeros(layout.block, dtype=torch.int32, device=self.x.device)
        self.high[: layout.dim] = layout.high_bits(self.x.device).to(torch.int32)
        # On CUDA the scale arrives as a device tensor (see hadamard_loss._scale): no host sync.
        self.scale = torch.as_tensor(inputs.scale, dtype=torch.float32, device=self.x.device).reshape(1)
        self.n_blocks = layout.num_blocks
        self.rows, self.a, self.b = _tile_shape(layout.block)
        self.grid = (triton.cdiv(self.x.shape[0], self.rows),)

    def logsumexp(self) -> torch.Tensor:
        lse = torch.empty(self.x.shape[0], dtype=torch.float32, device=self.x.device)
        with on_device(self.x):
            _loss_fwd_kernel[self.grid](
                self.x, self.high, self.bias, lse, self.scale, self.x.shape[0], self.n_blocks,
                ROWS=self.rows, A=self.a, B=self.b, num_warps=_NUM_WARPS,
            )  # fmt: skip
        return lse.to(self.dtype)

    def softmax_terms(self, lse: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        folded = torch.empty_like(self.x)
        bias_grad = torch.zeros_like(self.bias)
        with on_device(self.x):
            _loss_bwd_kernel[self.grid](
                self.x, self.high, self.bias, lse.float().contiguous(), weight.float().contiguous(), folded,
                bias_grad, self.scale, self.x.shape[0], self.n_blocks,
                ROWS=self.rows, A=self.a, B=self.b, num_warps=_NUM_WARPS,
            )  # fmt: skip
        return folded.to(self.dtype), bias_grad.to(self.dtype)

    def lse_and_terms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Both passes for unit weights (the kernels recompute the blocks anyway)."""
        lse = self.logsumexp()
        return lse, *self.softmax_terms(lse, torch.ones_like(lse))
