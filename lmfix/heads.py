"""The V x d matrix E, used twice: input embedding (rows ``E[ids]``) and output classifier.

One head per variant, all with the same three methods: ``embed(ids)``,
``loss(x, target)`` and ``logits(x)``:

* ``LearnedHead``: E is a parameter; tied (one matrix) or untied (a second
  output matrix). ``logits = E x + b``, the standard baseline.
* ``DenseFixedHead``: E is a frozen *buffer* (no gradient, no optimizer state,
  not in the state dict); ``logits = alpha * E x_hat + b`` with ``x_hat = x/||x||``.
  Its loss is fused: the gradient for x is computed in the forward pass, chunk by
  chunk, so neither N x V logits nor a gradient for E ever exist.
* ``HadamardHead``: the same logits, with E generated from a ``HadamardLayout``
  (popcount rows for the input, the fast transform for the output): no V x d
  tensor at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmfix.ops import HadamardLayout, hadamard_cross_entropy, hadamard_logits

# Logits of one chunk in the fused dense loss (32 MiB in float32): ~250 rows for
# WikiText-2, enough for efficient GEMMs while the chunk stays near the cache.
_CHUNK_ELEMENTS = 1 << 23


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

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        # Tied: a sparse gradient for the looked-up rows is added into the classifier's dense
        # gradient of E, instead of materialising (and adding) a second V x d gradient.
        return F.embedding(ids, self.weight, sparse=self.tied)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight if self.out_weight is None else self.out_weight, self.bias)


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

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)  # a buffer: autograd never reaches E

    def loss(self, x: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if reduction == "none":
            return super().loss(x, target, reduction)
        grads = torch.is_grad_enabled()  # False under no_grad (evaluation): then only the loss is computed
        total = _FixedCrossEntropy.apply(self.unit(x), self.alpha, self.bias, target, self.weight, grads)
        return total / target.numel() if reduction == "mean" else total

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * F.linear(self.unit(x), self.weight) + self.bias


class _FixedCrossEntropy(torch.autograd.Function):
    """Summed cross entropy of ``alpha * xh E^T + b``, gradients computed in the forward pass.

    Per chunk of rows, in one reused buffer: logits, then in place (one exp pass)
    ``G = softmax - onehot``, then ``G E``. Two GEMMs per step instead of the three
    a learned E needs, and no N x V tensor. ``grad_alpha = sum(G E * xh)``.
    """

    @staticmethod
    def forward(ctx, xh, alpha, bias, target, weight, grads):
        n, vocab = xh.shape[0], weight.shape[0]
        chunk = max(1, min(n, _CHUNK_ELEMENTS // vocab))
        need_grad = grads and any(ctx.needs_input_grad[:3])
        a = float(alpha)
        buf = xh.new_empty(chunk, vocab)
        total = xh.new_zeros(())
        grad_x = torch.empty_like(xh) if need_grad else None
        grad_alpha = xh.new_zeros(())
        grad_bias = torch.zeros_like(bias) if need_grad else None
        for start in range(0, n, chunk):
            xc, yc = xh[start : start + chunk], target[start : start + chunk]
            rows = torch.arange(yc.numel(), device=yc.device)
            logits = torch.addmm(bias, xc, weight.t(), alpha=a, out=buf[: xc.shape[0]])
            picked = logits[rows, yc]
            top = logits.amax(1, keepdim=True)
            probs = logits.sub_(top).exp_()
            sums = probs.sum(1, keepdim=True)
            total += (top.squeeze(1) + sums.squeeze(1).log() - picked).sum()
            if need_grad:
                probs.div_(sums)
                probs[rows, yc] -= 1
                grad_bias += probs.sum(0)
                g_e = probs @ weight
                grad_alpha += (g_e * xc).sum()
                torch.mul(g_e, a, out=grad_x[start : start + chunk])
        ctx.save_for_backward(grad_x, grad_alpha, grad_bias)
        return total

    @staticmethod
    def backward(ctx, grad):
        grad_x, grad_alpha, grad_bias = ctx.saved_tensors
        return grad_x * grad, grad_alpha * grad, grad_bias * grad, None, None, None


class HadamardHead(ScaledHead):
    """E generated from a Hadamard layout: rows by popcount parity, logits by the fast transform."""

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
