"""The registry: every ``--embed`` choice and the head it gives, every ``--model`` and its body.

A new kind of fixed matrix is an embedding method (``lmfix/embeddings/``) plus
its name in ``FIXED``; its artifact decides the head (dense rows or a
Hadamard layout). A new body is a module in ``lmfix/model/`` plus its name in
``BODIES`` and its class in ``make_body``. Heads and bodies import torch, so
only ``make_head`` and ``make_body`` load them.
"""

from __future__ import annotations

from lmfix.model.config import ModelConfig

LEARNED = ("learned", "learned-untied")
FIXED = ("orthogonal", "word2vec", "pmi", "hadamard")
EMBEDS = LEARNED + FIXED
BODIES = ("lstm", "gru", "transformer")
RECURRENT = ("lstm", "gru")  # bodies that carry a state between windows and have recurrent weights (wdrop)


def make_head(embed: str, vocab_size: int, dim: int, artifact=None, *, alpha: float = 10.0,
              learn_alpha: bool = True, normalize: bool = True):
    """The head of variant ``embed``; a fixed one takes its matrix (or Hadamard layout) from ``artifact``."""
    import torch

    from lmfix.model.heads import DenseFixedHead, HadamardHead, LearnedHead

    if embed in LEARNED:
        return LearnedHead(vocab_size, dim, tied=embed == "learned")
    scale = {"alpha": alpha, "learn_alpha": learn_alpha, "normalize": normalize}
    if artifact.hadamard is not None:
        return HadamardHead(artifact.hadamard, **scale)
    return DenseFixedHead(torch.from_numpy(artifact.matrix), **scale)


def make_body(config: ModelConfig):
    """The body ``config.model`` names, its weights initialised from torch's current RNG."""
    from lmfix.model.gru import GRUBody
    from lmfix.model.lstm import LSTMBody
    from lmfix.model.transformer import TransformerBody

    return {"lstm": LSTMBody, "gru": GRUBody, "transformer": TransformerBody}[config.model](config)
