"""Hadamard classifiers: +-1/sqrt(d) rows of a Sylvester matrix, generated, never stored.

The generator lives in ``lmfix.ops.hadamard`` (shared with the fused loss); the
artifact keeps only its layout (the chosen columns of H_n). ``distinct``
(default) gives every word its own row; ``truncated`` is the paper's
``H_n[:V, :d]``, whose rows repeat every 2^ceil(log2 d) words when V > d, kept
for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmfix.data.corpus import Corpus
from lmfix.embeddings.artifact import EmbeddingError
from lmfix.embeddings.base import Built, option, require, require_memory

LAYOUT_NOTES = {
    "distinct": "distinct layout: every word gets its own row",
    "truncated": "truncated layout H_n[:V, :d] (the paper's): rows repeat when V > d",
}


@dataclass(frozen=True)
class HadamardConfig:
    layout: str = option("distinct", "distinct (every word its own row) or truncated (the paper's H[:V, :d])")

    def __post_init__(self) -> None:
        require(self.layout in LAYOUT_NOTES, f"unknown hadamard layout {self.layout!r}; use distinct or truncated")


def build(corpus: Corpus, dim: int, seed: int, cfg: HadamardConfig) -> Built:
    from lmfix.ops.bits import next_pow2
    from lmfix.ops.hadamard import make_layout

    # Measured: ~120 bytes per column (index arrays, Python integers), 16 per row of H_n (the coherence check).
    n = next_pow2(max(len(corpus.vocab), dim))
    require_memory(120 * dim + 16 * n, f"a hadamard layout of {dim:,} columns", "lower --dim")
    try:
        layout = make_layout(len(corpus.vocab), dim, layout=cfg.layout, seed=seed)
    except ValueError as exc:  # sizes the layout cannot serve
        raise EmbeddingError(f"hadamard: {exc}") from exc
    return Built(hadamard=layout, notes=[LAYOUT_NOTES[cfg.layout], "entries +-1/sqrt(d): rows are unit length"])
