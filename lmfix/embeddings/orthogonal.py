"""Random orthogonal embeddings: the paper's data-free baseline (it did poorly in LMs).

QR of a seeded Gaussian V x d matrix gives d orthonormal columns; fixing the
signs of R's diagonal makes the basis Haar-distributed rather than biased by
the QR convention. Rows of such a matrix have norms ~ sqrt(d/V) that vary from
word to word, which a tied classifier would read as a random per-word prior, so
rows are normalised to unit length by default (columns then stay orthogonal
only approximately); ``row_norm=False`` keeps the exact orthonormal columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmfix.data.corpus import Corpus
from lmfix.embeddings.base import Built, option, require, require_memory, unit_rows


@dataclass(frozen=True)
class OrthogonalConfig:
    row_norm: bool = option(True, "normalise rows to unit length (--no-row-norm keeps orthonormal columns)")


def build(corpus: Corpus, dim: int, seed: int, cfg: OrthogonalConfig) -> Built:
    vocab_size = len(corpus.vocab)
    require(
        dim <= vocab_size,
        f"orthogonal needs --dim <= the vocabulary size ({vocab_size:,}): "
        f"a {vocab_size} x d matrix has at most {vocab_size} orthonormal columns",
    )
    # float64: the Gaussian, LAPACK's copy of it, Q (each V x d) and R (d x d).
    require_memory(8 * (3 * vocab_size * dim + dim * dim), f"orthogonal {vocab_size:,} x {dim:,}", "lower --dim")
    from scipy import linalg

    rng = np.random.default_rng(seed)
    q, r = linalg.qr(rng.standard_normal((vocab_size, dim)), mode="economic", check_finite=False)
    q *= np.where(np.diag(r) < 0, -1.0, 1.0)
    if not cfg.row_norm:
        return Built(matrix=q.astype(np.float32), notes=["raw QR rows kept: columns orthonormal, rows not unit"])
    matrix, _ = unit_rows(q, seed)
    return Built(matrix=matrix, notes=["rows normalised to unit length (columns then only nearly orthogonal)"])
