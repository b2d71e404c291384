"""The registry: every ``--embed`` choice and the head it gives, every ``--model`` and its body.

A new kind of fixed matrix is an embedding method (``lmfix/embeddings/``) plus
its name in ``FIXED``; its artifact decides the head (dense rows or a
Hadamard layout). A new body is a module in ``lmfix/model/`` plus its name in
``BODIES`` and its class in ``make_body``. Heads and bodies import torch, so
only ``make_head`` and ``make_body`` load them.
"""

from __future__ import annotations

from lmfix.errors import LmfixError
from lmfix.model.config import ModelConfig

LEARNED = ("learned", "learned-untied")
FIXED = ("orthogonal", "word2vec", "pmi", "hadamard")
EMBEDS = LEARNED + FIXED
# Heads on a fixed matrix (``--head``): the frozen one, and the nearly-fixed ones of ``nearly_fixed``, which need
# a stored matrix (not a generated Hadamard one). ``top-k`` takes --head-k, ``low-rank`` --head-rank, ``unfreeze``
# --unfreeze-at.
HEADS = ("fixed", "context-scale", "scales", "top-k", "low-rank", "unfreeze", "frozen-input")
BODIES = ("lstm", "gru", "transformer")
RECURRENT = ("lstm", "gru")  # bodies that carry a state between windows and have recurrent weights (wdrop)


def make_head(embed: str, vocab_size: int, dim: int, artifact=None, *, alpha: float = 10.0,
              learn_alpha: bool = True, normalize: bool = True, head: str = "fixed", head_k: int = 0,
              head_rank: int = 0):
    """The head of variant ``embed``; a fixed one takes its matrix (or Hadamard layout) from ``artifact``,
    and ``head`` says what of it is trained (see ``HEADS``)."""
    import torch

    from lmfix.model import nearly_fixed as nf
    from lmfix.model.heads import DenseFixedHead, HadamardHead, LearnedHead

    if embed in LEARNED:
        return LearnedHead(vocab_size, dim, tied=embed == "learned")
    scale = {"alpha": alpha, "learn_alpha": learn_alpha, "normalize": normalize}
    if artifact.hadamard is not None:
        return HadamardHead(artifact.hadamard, **scale)
    matrix = torch.from_numpy(artifact.matrix)
    if head == "top-k" and head_k >= vocab_size:
        raise LmfixError(f"--head-k {head_k} must be below the vocabulary size ({vocab_size:,}): all rows learned "
                         "is --embed learned")
    return {
        "fixed": lambda: DenseFixedHead(matrix, **scale),
        "context-scale": lambda: nf.ContextScaleHead(matrix, **scale),
        "scales": lambda: nf.ScalesHead(matrix, **scale),
        "top-k": lambda: nf.TopRowsHead(matrix, head_k, **scale),
        "low-rank": lambda: nf.LowRankHead(matrix, head_rank, **scale),
        "unfreeze": lambda: nf.UnfreezeHead(matrix, **scale),
        "frozen-input": lambda: nf.FrozenInputHead(matrix),
    }[head]()


def make_body(config: ModelConfig):
    """The body ``config.model`` names, its weights initialised from torch's current RNG."""
    from lmfix.model.gru import GRUBody
    from lmfix.model.lstm import LSTMBody
    from lmfix.model.transformer import TransformerBody

    return {"lstm": LSTMBody, "gru": GRUBody, "transformer": TransformerBody}[config.model](config)
