"""The variant registry: every ``--embed`` choice and the head it gives.

A new kind of fixed matrix is an embedding method (``lmfix/embeddings/``) plus
its name in ``FIXED``; its artifact decides the head (dense rows or a
Hadamard layout). Heads import torch, so only ``make_head`` loads them.
"""

from __future__ import annotations

LEARNED = ("learned", "learned-untied")
FIXED = ("orthogonal", "word2vec", "pmi", "hadamard")
EMBEDS = LEARNED + FIXED


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
