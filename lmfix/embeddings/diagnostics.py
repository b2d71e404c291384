"""Looking inside an artifact: quality diagnostics, nearest neighbours, word2vec export.

A fixed classifier can only tell words apart through its rows, so the numbers
that matter are row norms (equal norms: no built-in word prior), coherence
(|cos| between rows: low means words are easy to separate) and the number of
distinct rows (duplicates can never be told apart).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmfix import atomic
from lmfix.embeddings.artifact import EmbeddingArtifact, EmbeddingError

CHUNK = 4096  # rows generated at a time for Hadamard artifacts (fewer for wide rows)
# Bytes of float64 rows held at once: a chunk while scanning, the coherence sample.
_CHUNK_BYTES, _SAMPLE_BYTES = 64 << 20, 256 << 20


def chunk_rows(dim: int) -> int:
    return max(1, min(CHUNK, _CHUNK_BYTES // (8 * dim)))


def sample_rows(sample: int, dim: int) -> int:
    """The coherence sample, capped so its rows (and their Gram matrix) stay within ``_SAMPLE_BYTES``."""
    return max(2, min(sample, _SAMPLE_BYTES // (8 * dim), int((_SAMPLE_BYTES // 8) ** 0.5)))


@dataclass(frozen=True)
class Diagnostics:
    norm_min: float
    norm_mean: float
    norm_max: float
    coherence_mean: float  # mean |cos| between distinct sampled rows
    coherence_max: float
    coherence_sample: int  # rows sampled for coherence
    distinct_rows: int


def _chunks(art: EmbeddingArtifact):
    step = chunk_rows(art.shape[1])
    for start in range(0, art.shape[0], step):
        yield art.rows(np.arange(start, min(start + step, art.shape[0])))


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms == 0, 1, norms)


def coherence(rows: np.ndarray) -> tuple[float, float]:
    """(mean, max) of |cos| over all pairs of distinct rows of ``rows``."""
    unit = _unit(rows.astype(np.float64))
    cos = np.abs(unit @ unit.T)
    off = cos[~np.eye(len(rows), dtype=bool)]
    return (float(off.mean()), float(off.max())) if off.size else (0.0, 0.0)


def distinct_rows(art: EmbeddingArtifact) -> int:
    if art.hadamard is not None:
        return art.hadamard.distinct_rows()
    m = np.ascontiguousarray(art.matrix)
    return len(np.unique(m.view(np.dtype((np.void, m.dtype.itemsize * m.shape[1]))).ravel()))


def diagnose(art: EmbeddingArtifact, sample: int = 2000, seed: int = 0) -> Diagnostics:
    """Row-norm stats over all rows; coherence on ``sample`` random rows (all if fewer; fewer for very wide
    rows, so memory stays bounded: ``coherence_sample`` says how many)."""
    norms = np.concatenate([np.linalg.norm(rows, axis=1) for rows in _chunks(art)])
    vocab_size = art.shape[0]
    sample = sample_rows(sample, art.shape[1])
    ids = np.sort(np.random.default_rng(seed).choice(vocab_size, min(sample, vocab_size), replace=False))
    mean, worst = coherence(art.rows(ids))
    return Diagnostics(
        norm_min=float(norms.min()), norm_mean=float(norms.mean()), norm_max=float(norms.max()),
        coherence_mean=mean, coherence_max=worst, coherence_sample=len(ids), distinct_rows=distinct_rows(art),
    )


def neighbors(art: EmbeddingArtifact, word: str, k: int = 10) -> list[tuple[str, float]]:
    """The ``k`` words whose rows have the highest cosine with ``word``'s row."""
    index = art.vocab.stoi.get(word)
    if index is None:
        raise EmbeddingError(
            f"{word!r} is not in the artifact's vocabulary ({art.shape[0]:,} types from {art.corpus}); "
            "words are case-sensitive"
        )
    if k < 1:
        raise EmbeddingError(f"-k must be >= 1, got {k}")
    query = _unit(art.rows(np.array([index])))[0]
    sims = np.concatenate([_unit(rows) @ query for rows in _chunks(art)])
    sims[index] = -np.inf
    top = np.argsort(-sims, kind="stable")[: min(k, len(sims) - 1)]
    return [(art.vocab.itos[i], float(sims[i])) for i in top]


def export_word2vec(art: EmbeddingArtifact, path: str | os.PathLike, binary: bool = False) -> Path:
    """Write the C word2vec format (text or binary) that gensim's ``load_word2vec_format`` reads."""
    path = Path(path)
    vocab_size, dim = art.shape
    row_format = " ".join(["%.7g"] * dim)
    rows = itertools.chain.from_iterable(_chunks(art))
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(f"{vocab_size} {dim}\n".encode())
        for word, row in zip(art.vocab.itos, rows, strict=True):
            values = row.astype("<f4").tobytes() if binary else (row_format % tuple(row.tolist())).encode()
            f.write(word.encode("utf-8") + b" " + values + b"\n")
        atomic.sync(f)
    return path
