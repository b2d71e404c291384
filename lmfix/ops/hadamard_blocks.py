"""The torch backend of the fused Hadamard loss: logits of a chunk of tokens, block by block.

``HeadInputs`` are the per-call constants every backend reads (the Triton one
is in ``triton_loss.py``); ``TorchBlocks`` computes log-sum-exp and the softmax
terms of the gradient chunk by chunk in two reused buffers (see
``hadamard_loss.py`` for the maths).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lmfix.ops.bits import factors
from lmfix.ops.hadamard import HadamardLayout
from lmfix.ops.transform import swapped_fwht_into

# Elements of one chunk of logits (2 MiB in float32): measured fastest on CPU
# among 2^17..2^22 at V=33278, d=512, and it keeps the two buffers small.
_CHUNK_ELEMENTS = 1 << 19
# On a GPU (this backend serves blocks the Triton loss cannot tile, and backend="torch") each chunk is a
# handful of launches, so chunks are larger: 256 MiB buffers. Not tuned on a GPU yet.
_CUDA_CHUNK_ELEMENTS = 1 << 26


@dataclass(frozen=True)
class HeadInputs:
    """Per-call constants shared by the backends of the fused loss."""

    layout: HadamardLayout
    scale: float | torch.Tensor  # alpha / sqrt(d); a 0-dim tensor on CUDA (reading it would sync)
    bias: torch.Tensor  # (R * D,) with -inf past V, zeros when the caller gave no bias
    x: torch.Tensor  # (N, D) compute dtype, zero-padded past d

    @property
    def chunk_default(self) -> int:
        """~_CHUNK_ELEMENTS logits, and at most d / 4 tokens so no chunk outgrows the V x d matrix."""
        elements = _CUDA_CHUNK_ELEMENTS if self.x.is_cuda else _CHUNK_ELEMENTS
        return max(1, min(elements // self.bias.numel(), self.layout.dim // 4))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half precisions accumulate softmax sums badly; work in float32 for them."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def pad_columns(x: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad the last dim of ``x`` to ``width`` (no copy when already that wide)."""
    return x if x.shape[-1] == width else torch.nn.functional.pad(x, (0, width - x.shape[-1]))


def padded_bias(layout: HadamardLayout, bias: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """(R * D,) bias with -inf on the padding words so they vanish from the softmax."""
    padded = torch.full((layout.num_blocks * layout.block,), -math.inf, dtype=like.dtype, device=like.device)
    padded[: layout.vocab_size] = 0.0 if bias is None else bias.detach().to(like.dtype)
    return padded


class TorchBlocks:
    """Chunked backend in plain torch ops (CPU, and CUDA when Triton cannot be used).

    Block transforms run with their two digits swapped (``swapped_fwht_into``),
    which saves a transpose per transform; the bias is permuted to match once
    per call and its gradient permuted back.
    """

    def __init__(self, inputs: HeadInputs, chunk_size: int | None) -> None:
        layout = inputs.layout
        self.digits = factors(layout.block)
        self.x = inputs.x * inputs.scale
        self.bias = self._swap(inputs.bias, self.digits)
        self.signs = layout.block_signs(inputs.x.dtype, inputs.x.device)
        self.chunk = chunk_size or inputs.chunk_default
        rows = min(self.chunk, inputs.x.shape[0])
        self.spread = inputs.x.new_empty(rows, *self.signs.shape)
        self.logits = inputs.x.new_empty(rows, inputs.bias.numel())

    @staticmethod
    def _swap(values: torch.Tensor, digits: tuple[int, int]) -> torch.Tensor:
        """Permute per-word values of each block from (first, second) to (second, first) digit order."""
        return values.view(-1, *digits).mT.reshape(-1)

    def _chunks(self):
        total = self.x.shape[0]
        for start in range(0, total, self.chunk):
            yield start, min(total, start + self.chunk)

    def _logits(self, start: int, stop: int) -> torch.Tensor:
        """(C, R * D) logits of tokens [start, stop), digit-swapped, in the reused buffer."""
        count = stop - start
        width = self.signs.shape[1]
        spread = torch.mul(self.x[start:stop, None, :], self.signs, out=self.spread[:count])
        logits = self.logits[:count]
        swapped_fwht_into(spread.view(-1, width), logits.view(-1, width), self.digits[0])
        return logits.add_(self.bias)

    def _fold(self, probs: torch.Tensor, start: int, folded: torch.Tensor, bias_grad: torch.Tensor) -> None:
        """Add ``sum_t probs_t`` to ``bias_grad`` and write ``E'^T probs_t`` into ``folded``."""
        width = self.signs.shape[1]
        bias_grad += probs.sum(0)
        back = self.spread[: probs.shape[0]]
        swapped_fwht_into(probs.view(-1, width), back.view(-1, width), self.digits[1])
        torch.sum(back.mul_(self.signs), 1, out=folded[start : start + probs.shape[0]])

    def logsumexp(self) -> torch.Tensor:
        lse = self.x.new_empty(self.x.shape[0])
        for start, stop in self._chunks():
            logits = self._logits(start, stop)
            peak = logits.amax(1)
            lse[start:stop] = logits.sub_(peak[:, None]).exp_().sum(1).log_().add_(peak)
        return lse

    def softmax_terms(self, lse: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``E'^T (w p)`` per token (N, D) and ``sum_t w_t p_t`` (R * D,) for softmax p."""
        folded = torch.empty_like(self.x)
        bias_grad = torch.zeros_like(self.bias)
        for start, stop in self._chunks():
            probs = self._logits(start, stop).sub_(lse[start:stop, None]).exp_().mul_(weight[start:stop, None])
            self._fold(probs, start, folded, bias_grad)
        return folded, self._swap(bias_grad, self.digits[::-1])

    def lse_and_terms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``logsumexp()`` and ``softmax_terms(lse, 1)`` from one transform and one exp per logit."""
        lse = self.x.new_empty(self.x.shape[0])
        folded = torch.empty_like(self.x)
        bias_grad = torch.zeros_like(self.bias)
        for start, stop in self._chunks():
            logits = self._logits(start, stop)
            peak = logits.amax(1)
            exps = logits.sub_(peak[:, None]).exp_()
            total = exps.sum(1)
            lse[start:stop] = total.log().add_(peak)
            self._fold(exps.mul_(total.reciprocal_()[:, None]), start, folded, bias_grad)
        return lse, folded, self._swap(bias_grad, self.digits[::-1])
