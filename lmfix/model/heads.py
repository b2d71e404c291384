"""The V x d matrix E, used twice: input embedding (rows ``E[ids]``) and output classifier.

One head per variant, all with the same three methods: ``embed(ids)``,
``loss(x, target)`` and ``logits(x)``:

* ``LearnedHead``: E is a parameter; tied (one matrix) or untied (a second
  output matrix). ``logits = E x + b``, the standard baseline.
* ``DenseFixedHead``: E is a frozen *buffer* (no gradient, no optimizer state,
  not in the state dict); ``logits = alpha * E x_hat + b`` with ``x_hat = x/||x||``.
  Both dense heads share one fused loss (``lmfix.ops.dense_loss``): gradients
  are computed chunk by chunk in the forward pass, so no N x V logits exist,
  and a frozen E costs two GEMMs per step where a learned one costs three.
* ``HadamardHead``: the same logits, with E generated from a ``HadamardLayout``
  (popcount rows for the input, the fast transform for the output): no V x d
  tensor at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmfix.ops import HadamardLayout, dense_cross_entropy, gemm, hadamard_cross_entropy, hadamard_logits
from lmfix.ops.dense_loss import TiedGradient, chunk_rows, tied_embedding
from lmfix.ops.gemm import linear


@dataclass(frozen=True)
class ParamCounts:
    """Parameter accounting: what is learned, what is stored, what is generated."""

    trainable: int  # updated by the optimizer
    fixed: int  # stored but never updated (a frozen E, a fixed alpha)
    generated: int  # used but recomputed on the fly (Hadamard E): never stored

    @property
    def stored(self) -> int:
        return self.trainable + self.fixed

    @property
    def total(self) -> int:
        return self.stored + self.generated

    def __add__(self, other: ParamCounts) -> ParamCounts:
        return ParamCounts(self.trainable + other.trainable, self.fixed + other.fixed, self.generated + other.generated)

    def to_dict(self) -> dict:
        return {"trainable": self.trainable, "fixed": self.fixed, "generated": self.generated,
                "stored": self.stored, "total": self.total}


def count_module(module: nn.Module) -> ParamCounts:
    """Trainable parameters vs frozen parameters and buffers of ``module`` (recursively)."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    frozen += sum(b.numel() for b in module.buffers())
    return ParamCounts(trainable, frozen, 0)


class Head(nn.Module):
    """Interface: E as embedding (``embed``) and as classifier (``loss``, ``logits``)."""

    vocab_size: int
    dim: int
    # dtype of the head's GEMM operands (see ``lmfix.ops.precision``); losses and gradients stay float32
    operands: torch.dtype = torch.float32

    def use_operands(self, dtype: torch.dtype) -> None:
        self.operands = dtype

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """(...) ids -> (..., d) input vectors."""
        raise NotImplementedError

    def loss(self, x: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross entropy of the logits of x (N, d) against target (N,)."""
        return F.cross_entropy(self.logits(x), target, reduction=reduction)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (N, V). Materialises all logits: for generation and tests."""
        raise NotImplementedError

    def counts(self) -> ParamCounts:
        return count_module(self)


class LearnedHead(Head):
    """Learned E (uniform init as in pytorch/examples); ``tied=False`` adds a separate output matrix."""

    def __init__(self, vocab_size: int, dim: int, tied: bool = True, init_range: float = 0.1) -> None:
        super().__init__()
        self.vocab_size, self.dim, self.tied = vocab_size, dim, tied
        self.weight = nn.Parameter(torch.empty(vocab_size, dim).uniform_(-init_range, init_range))
        self.out_weight = None if tied else nn.Parameter(torch.empty(vocab_size, dim).uniform_(-init_range, init_range))
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self._rounded: tuple[tuple, torch.Tensor | None] = ((), None)
        self._link: TiedGradient | None = None  # from the last lookup, for the next loss

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        if not (self.tied and torch.is_grad_enabled() and self.weight.requires_grad):
            return F.embedding(ids, self.weight)
        # Tied: the looked-up rows' gradient is added in place into the loss's dense gradient of E
        # (see TiedGradient), instead of materialising (and adding) a second V x d gradient.
        rows, self._link = tied_embedding(ids, self.weight)
        return rows

    def classifier(self) -> torch.Tensor:
        return self.weight if self.out_weight is None else self.out_weight

    def operand_weight(self) -> torch.Tensor:
        """The classifier in the operand dtype: rounded once per change of the weights (once per training
        step, once for a whole evaluation), not once per call."""
        w = self.classifier()
        if self.operands == w.dtype:
            return w
        key = (w.data_ptr(), w._version, self.operands)
        if self._rounded[0] != key:
            self._rounded = key, w.detach().to(self.operands)
        return self._rounded[1]

    def loss(self, x: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if reduction == "none":
            return super().loss(x, target, reduction)
        low = self.operand_weight()
        packed = None if low is self.classifier() else (low, low.t())
        link, self._link = self._link, None
        return dense_cross_entropy(x, target, self.classifier(), self.bias, reduction=reduction, packed=packed,
                                   operands=self.operands, tied=link)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        w = self.operand_weight()
        if w is self.classifier():
            return linear(x, w, self.bias)
        return linear(x.to(self.operands), w).float() + self.bias


class ScaledHead(Head):
    """Shared part of the fixed heads: ``alpha * E x_hat + b`` with a learned scalar alpha and bias."""

    def __init__(self, vocab_size: int, dim: int, alpha: float, learn_alpha: bool, normalize: bool) -> None:
        super().__init__()
        self.vocab_size, self.dim, self.normalize = vocab_size, dim, normalize
        self.alpha = nn.Parameter(torch.tensor(float(alpha)), requires_grad=learn_alpha)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def unit(self, x: torch.Tensor) -> torch.Tensor:
        """x_hat = x / ||x|| (or x itself for the no-normalization ablation)."""
        return F.normalize(x, dim=-1) if self.normalize else x


class DenseFixedHead(ScaledHead):
    """A frozen V x d matrix (word2vec, PMI, orthogonal, ...) held as a non-persistent buffer."""

    def __init__(self, matrix: torch.Tensor, alpha: float = 1.0, learn_alpha: bool = True, normalize: bool = True):
        vocab_size, dim = matrix.shape
        super().__init__(vocab_size, dim, alpha, learn_alpha, normalize)
        self.register_buffer("weight", matrix.detach().float().contiguous(), persistent=False)
        self._packed: tuple[tuple, tuple[torch.Tensor, torch.Tensor] | None] = ((), None)

    def use_operands(self, dtype: torch.dtype) -> None:
        """E is never updated, so it is stored once in the operand dtype (bf16: half the memory)."""
        super().use_operands(dtype)
        self.weight = self.weight.to(dtype)

    def packed(self, tokens: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """E and E^T packed for the GEMM backend, once (E never changes); None where packing does not apply."""
        key = (self.weight.data_ptr(), self.weight.device, gemm.backend())
        if self._packed[0] != key:
            rows = chunk_rows(tokens, self.vocab_size, self.operands)
            pair = gemm.pack(self.weight, rows), gemm.pack(self.weight.t(), rows)
            self._packed = key, None if None in pair else pair
        return self._packed[1]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)  # a buffer: autograd never reaches E

    def loss(self, x: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if reduction == "none":
            return super().loss(x, target, reduction)
        packed = self.packed(target.numel())
        return dense_cross_entropy(self.unit(x), target, self.weight, self.bias, self.alpha, reduction, packed,
                                   self.operands)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * linear(self.unit(x).to(self.operands), self.weight).float() + self.bias


class HadamardHead(ScaledHead):
    """E generated from a Hadamard layout: rows by popcount parity, logits by the fast transform.

    The transform sums d terms per logit, so it runs in float32 in every precision (its
    entries are exact in any dtype; the rounding would be in the sums).
    """

    def __init__(self, layout: HadamardLayout, alpha: float = 1.0, learn_alpha: bool = True, normalize: bool = True):
        super().__init__(layout.vocab_size, layout.dim, alpha, learn_alpha, normalize)
        self.layout = layout

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.layout.rows(ids, dtype=self.bias.dtype)

    def loss(self, x: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return hadamard_cross_entropy(self.unit(x), target, self.layout, self.bias, self.alpha, reduction=reduction)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return hadamard_logits(self.unit(x), self.layout, self.alpha, self.bias)

    def counts(self) -> ParamCounts:
        return count_module(self) + ParamCounts(0, 0, self.vocab_size * self.dim)
