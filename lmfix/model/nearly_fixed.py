"""Nearly-fixed heads: a stored frozen matrix E0 plus a small trained part, tied as the fixed head is.

Each answers "what does a frozen classifier lose, and what buys it back?" at a known price in
trained parameters (``counts``). At initialisation each gives exactly the loss of the fixed head
on the same E0 (its trained part starts as the identity or zero):

* ``context-scale``: ``alpha * exp(u . x / alpha0) * E0 x_hat + b``: a temperature per context (d parameters),
  where the fixed head gives every context the same one (alpha0: the initial alpha, a constant);
* ``scales``: ``E = diag(g) E0 diag(h)``: a learned scale per word and per dimension (V + d);
* ``top-k``: the K most frequent words' rows learned (``E0 + D``, D: K x d from zero), the rest frozen;
* ``low-rank``: ``E = E0 + A B^T`` (A: V x r, zero at the start; B: d x r), scored in product form
  ``alpha E0 x_hat + A (B^T x)``: the V x d sum is never formed;
* ``unfreeze``: the fixed head until a share of the budget is trained, then all of E learned (a reference
  that saves nothing: how much of the gap is the start?);
* ``frozen-input``: untied, input rows frozen to E0 and a learned output matrix (Welch et al. 2020's
  configuration, a reference: is the loss in the frozen input or the frozen output?).

The learned rows and corrections (top-k, unfreeze, low-rank) score the body's output x as a learned
head does, the frozen E0 as the fixed head does (``alpha x / ||x||``); see ``TopRowsHead`` for why.
All use the fused dense loss (``lmfix.ops.dense_loss``): no N x V float32 logits, bf16 operands with
float32 softmax; its ``row_scale`` and ``extra`` options give the per-word scales' and the learned
part's gradients without a full V x d product.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmfix.model.heads import DenseFixedHead, LearnedHead, ParamCounts
from lmfix.ops import dense_cross_entropy
from lmfix.ops.gemm import linear

# The per-context scale's exponent is kept in [-_MAX_LOG_SCALE, _MAX_LOG_SCALE]: a temperature of e^8 either way is
# far past any useful one, and an exp that overflows would end the run as a divergence.
_MAX_LOG_SCALE = 8.0


def _frobenius(t: torch.Tensor) -> float:
    return float(t.detach().float().norm())


class NearlyFixedHead(DenseFixedHead):
    """A frozen E0 (as ``DenseFixedHead``) with a trained part; ``counts`` charges all of E0 as fixed (it is stored
    whole, also where a learned part is added to it)."""

    def __init__(self, matrix: torch.Tensor, **scale) -> None:
        super().__init__(matrix, **scale)
        # A trained scale multiplies logits alpha times larger than a learned head's own inputs (alpha x_hat
        # against x), so SGD would move it alpha^2 times as far; over alpha0 (--alpha, a constant) its steps
        # are a learned head's again. Without it, per-word scales diverged at lr 30 in the tests.
        self.step = 1 / abs(scale.get("alpha", 1.0)) if scale.get("alpha") else 1.0

    def stats(self) -> dict[str, float]:
        """Scales and norms of the trained part, logged with the metrics (is it learning, and how far?)."""
        return {}

    def counts(self) -> ParamCounts:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        return ParamCounts(trainable, frozen + self.vocab_size * self.dim, 0)


class ContextScaleHead(NearlyFixedHead):
    """``alpha * exp(u . x / alpha0) * E0 x_hat + b``: the logits' scale depends on the context (u starts at 0).

    ``alpha0`` (the initial --alpha) keeps u's SGD steps at a learned head's size: the logits it scales are
    alpha0 times larger than a learned head's inputs (see ``NearlyFixedHead.step``).
    """

    def __init__(self, matrix: torch.Tensor, **scale) -> None:
        super().__init__(matrix, **scale)
        self.context = nn.Parameter(torch.zeros(self.dim))

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        log_scale = (x @ self.context * self.step).clamp(-_MAX_LOG_SCALE, _MAX_LOG_SCALE)
        return self.unit(x) * log_scale.exp().unsqueeze(-1)

    def loss(self, x: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if reduction == "none":
            return super().loss(x, target, reduction)
        return dense_cross_entropy(self.scaled(x), target, self.weight, self.bias, self.alpha, reduction,
                                   self.packed(target.numel()), self.operands)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * linear(self.scaled(x).to(self.operands), self.weight).float() + self.bias

    def stats(self) -> dict[str, float]:
        return {"context_norm": _frobenius(self.context) * self.step}


class ScalesHead(NearlyFixedHead):
    """``E = diag(g) E0 diag(h)``, tied: a learned scale per word (g, V) and per dimension (h, d), both from 1,
    as ``g = 1 + s / alpha0`` and ``h = 1 + t / alpha0`` (``NearlyFixedHead.step``)."""

    def __init__(self, matrix: torch.Tensor, **scale) -> None:
        super().__init__(matrix, **scale)
        self.word_scale = nn.Parameter(torch.zeros(self.vocab_size))  # s
        self.dim_scale = nn.Parameter(torch.zeros(self.dim))  # t

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(g, h)."""
        return 1 + self.word_scale * self.step, 1 + self.dim_scale * self.step

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        g, h = self.factors()
        return F.embedding(ids, self.weight) * g[ids].unsqueeze(-1) * h

    def loss(self, x: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if reduction == "none":
            return super().loss(x, target, reduction)
        g, h = self.factors()
        return dense_cross_entropy(self.unit(x) * h, target, self.weight, self.bias, self.alpha, reduction,
                                   self.packed(target.numel()), self.operands, row_scale=g)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        g, h = self.factors()
        return self.alpha * g * linear((self.unit(x) * h).to(self.operands), self.weight).float() + self.bias

    def stats(self) -> dict[str, float]:
        g, h = (f.detach() for f in self.factors())
        return {"word_scale_mean": float(g.mean()), "word_scale_std": float(g.std()),
                "dim_scale_mean": float(h.mean()), "dim_scale_std": float(h.std())}


class TopRowsHead(NearlyFixedHead):
    """The first K rows of E (the vocabulary is sorted by frequency: the K most frequent words) learned:
    ``E = E0 + D`` with D zero but in its first K rows, which start at zero.

    D scores the body's output x as a learned head's rows do (``D x``), beside the frozen part's
    ``alpha E0 x_hat``: under ``alpha / ||x||`` as well, an SGD step on D moved its logits alpha^2 (150-300)
    times as far as the same step on a learned head's row, and it trained worse than the frozen head.
    """

    def __init__(self, matrix: torch.Tensor, k: int, **scale) -> None:
        super().__init__(matrix, **scale)
        self.k = k
        self.top: nn.Parameter | None = nn.Parameter(torch.zeros(k, self.dim)) if k else None

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        rows = super().embed(ids)
        if self.top is None:
            return rows
        learned = F.embedding(ids.clamp(max=self.k - 1), self.top) * (ids < self.k).unsqueeze(-1)
        return rows.float() + learned

    def loss(self, x: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if self.top is None or reduction == "none":
            return super().loss(x, target, reduction)
        return dense_cross_entropy(self.unit(x), target, self.weight, self.bias, self.alpha, reduction,
                                   self.packed(target.numel()), self.operands, extra=(x, self.top))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().logits(x)
        if self.top is None:
            return logits
        return torch.cat([logits[..., : self.k] + x @ self.top.t(), logits[..., self.k :]], -1)

    def stats(self) -> dict[str, float]:
        if self.top is None:
            return {}
        return {"learned_row_norm": _frobenius(self.top) / math.sqrt(self.k)}


class UnfreezeHead(TopRowsHead):
    """The fixed head until ``unfreeze()`` (the trainer calls it once a share of the budget is trained),
    then every row learned: ``TopRowsHead`` with K = V from then on (all of E = E0 + D, D from zero)."""

    def __init__(self, matrix: torch.Tensor, **scale) -> None:
        super().__init__(matrix, 0, **scale)
        # a checkpoint written after the switch holds ``top``: loading it switches first
        self._register_load_state_dict_pre_hook(self._unfreeze_for)

    def _unfreeze_for(self, state_dict, prefix, *args) -> None:
        if prefix + "top" in state_dict and self.top is None:
            self.unfreeze()

    @property
    def unfrozen(self) -> bool:
        return self.top is not None

    def unfreeze(self) -> nn.Parameter:
        """Make all of E learned (D, V x d, from zero); returns the new parameter for the optimizer."""
        self.k = self.vocab_size
        self.top = nn.Parameter(self.bias.new_zeros(self.vocab_size, self.dim))
        return self.top


class LowRankHead(NearlyFixedHead):
    """``E = E0 + A B^T``, tied; A (V x r) starts at zero, B (d x r) random orthonormal, so step 0 is the fixed head.

    Scored in product form, ``alpha E0 x_hat + A (B^T x)``: the V x d sum is never formed, and the correction
    costs r/d of a dense product. Like ``TopRowsHead``'s rows it scores x as a learned head does (not
    ``alpha x_hat``: the steps on A were alpha^2 times too long there, and it trained far worse than the
    frozen head). With B's columns orthonormal A B^T moves as a learned E would, projected on B's span.
    """

    def __init__(self, matrix: torch.Tensor, rank: int, **scale) -> None:
        super().__init__(matrix, **scale)
        self.rank = rank
        self.low = nn.Parameter(torch.zeros(self.vocab_size, rank))  # A
        # Drawn from its own generator (seeded by the run's seed): the body is initialised as the fixed head's is.
        draw = torch.Generator().manual_seed(torch.initial_seed())
        self.mix = nn.Parameter(torch.linalg.qr(torch.randn(self.dim, rank, generator=draw))[0])  # B

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return super().embed(ids).float() + F.embedding(ids, self.low) @ self.mix.t()

    def loss(self, x: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if reduction == "none":
            return super().loss(x, target, reduction)
        return dense_cross_entropy(self.unit(x), target, self.weight, self.bias, self.alpha, reduction,
                                   self.packed(target.numel()), self.operands, extra=(x @ self.mix, self.low))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return super().logits(x) + (x @ self.mix) @ self.low.t()

    def correction(self) -> torch.Tensor:
        """A B^T (V x d): for tests and inspection, never in training."""
        return self.low.detach() @ self.mix.detach().t()

    def stats(self) -> dict[str, float]:
        a, b = self.low.detach().double(), self.mix.detach().double()
        correction = float(torch.trace((b.t() @ b) @ (a.t() @ a)).clamp_min(0).sqrt())  # ||A B^T||_F, r x r work
        return {"correction_norm": correction / math.sqrt(self.vocab_size), "mix_norm": _frobenius(self.mix)}


class FrozenInputHead(LearnedHead):
    """Untied: input rows frozen to E0 (a buffer), output matrix learned as in ``learned-untied``."""

    def __init__(self, matrix: torch.Tensor) -> None:
        vocab_size, dim = matrix.shape
        super().__init__(vocab_size, dim, tied=False)
        del self.weight
        self.register_buffer("weight", matrix.detach().float().contiguous(), persistent=False)

    def stats(self) -> dict[str, float]:
        return {"output_norm": _frobenius(self.out_weight)}
