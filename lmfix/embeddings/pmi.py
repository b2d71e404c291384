"""PPMI + truncated SVD embeddings (Levy & Goldberg 2014; Levy, Goldberg & Dagan 2015).

1. Count word-context pairs within ``window`` tokens of each other, never across
   a line end (the same sentences word2vec sees). ``dynamic_window`` weights a
   pair at distance k by (window - k + 1) / window: the expected count under
   word2vec's sampled window size, made deterministic.
2. PMI with context-distribution smoothing: the context marginal is raised to
   ``cds`` (0.75, as word2vec's negative sampling does), which tempers the
   large PMI of rare contexts. ``shift`` K subtracts log K (SGNS with K
   negatives factorises PMI - log K); only positive values are kept (PPMI).
3. Truncated SVD ``M ~ U S V^T`` with d components; the embedding is
   ``U S^eig`` (``eig`` 0.5 symmetrises the weighting between words and
   contexts; 1 is the "correct" SVD, which Levy et al. found worst), rows
   normalised to unit length.

Defaults follow hyperwords' best SVD settings: window 2 (narrow windows give
syntactic/functional similarity, which is what next-word prediction needs),
dynamic weighting, cds 0.75, no shift, eig 0.5. Types without any positive PMI
(e.g. never seen in training) get seeded random unit rows.

SVD solvers (``lmfix bench embeddings --compare-svd``, WikiText-2, k=512,
scored against ARPACK; seconds on 2 cores shared with a training run):

    solver           seconds  sv err mean  sv err max  subspace  top-10 neighbours
    arpack             33.5      0          0           1         1
    randomized q=4     11.6      0.0072     0.025       0.920     0.83
    randomized q=6     15.1      0.0024     0.011       0.964     0.89
    randomized q=8     17.6      0.0009     0.0055      0.985     0.92
    randomized q=10    24.3      0.0004     0.0027      0.993     0.95

``randomized`` with 8 power iterations is the default: about half ARPACK's
time (a whole build takes ~18 s, inside the 30 s budget), singular values
within 0.6 %, and 92 % of each frequent word's ten nearest neighbours shared
with the exact embedding; the differences sit in the flat tail of the
spectrum, where the exact top-512 subspace is itself nearly arbitrary.
ARPACK alone exceeds the 30 s budget; choose it with ``svd="arpack"`` when
exactness matters more than time.

Both solvers' rounding follows OpenBLAS's thread count, so every build runs
BLAS/LAPACK on ``base.BUILD_BLAS_THREADS`` threads (``base.pinned_blas_threads``):
the same bytes under torchrun, any ``OMP_NUM_THREADS`` and any core count (on one
type of CPU: OpenBLAS picks its kernels by CPU).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from lmfix.data.corpus import Corpus
from lmfix.embeddings.base import Built, option, require, require_memory, unit_rows

SVD_SOLVERS = ("randomized", "arpack")


@dataclass(frozen=True)
class PMIConfig:
    window: int = option(2, "count contexts up to this many tokens to either side")
    dynamic_window: bool = option(True, "weight a context at distance k by (window - k + 1) / window")
    cds: float = option(0.75, "context-distribution smoothing exponent (1 disables)")
    shift: float = option(1.0, "subtract log(shift) from PMI before clipping at 0 (1: no shift)")
    eig: float = option(0.5, "eigenvalue weighting p in U S^p")
    svd: str = option("randomized", "truncated SVD solver: randomized or arpack")
    power_iters: int = option(8, "power iterations of the randomized SVD (more: closer to exact, slower)")

    def __post_init__(self) -> None:
        require(self.window >= 1, f"pmi window must be >= 1, got {self.window}")
        require(0 < self.cds <= 1, f"pmi cds must be in (0, 1], got {self.cds}")
        require(self.shift >= 1, f"pmi shift must be >= 1 (it subtracts log shift), got {self.shift}")
        require(0 <= self.eig <= 1, f"pmi eig must be in [0, 1], got {self.eig}")
        require(self.svd in SVD_SOLVERS, f"unknown pmi svd solver {self.svd!r}; use {' or '.join(SVD_SOLVERS)}")
        require(self.power_iters >= 0, f"pmi power_iters must be >= 0, got {self.power_iters}")


def cooccurrence(ids: np.ndarray, eos_id: int, vocab_size: int, window: int, dynamic: bool):
    """Symmetric V x V float64 CSR of (weighted) pair counts within ``window``, inside lines."""
    from scipy import sparse

    is_eos = ids == eos_id
    line = np.cumsum(is_eos) - is_eos  # the eos closing a line belongs to it
    rows, cols, weights = [], [], []
    for k in range(1, window + 1):
        same = line[:-k] == line[k:]
        rows.append(ids[:-k][same].astype(np.int32))
        cols.append(ids[k:][same].astype(np.int32))
        weights.append(np.full(rows[-1].size, (window - k + 1) / window if dynamic else 1.0))
    right = sparse.coo_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(vocab_size, vocab_size)
    ).tocsr()
    return (right + right.T).tocsr()


def ppmi(counts, cds: float, shift: float):
    """Positive (shifted) PMI with the context distribution smoothed by ``cds``; float32 CSR."""
    from scipy import sparse

    counts = sparse.csr_matrix(counts, dtype=np.float64)
    row_sums = np.asarray(counts.sum(axis=1)).ravel()
    col_smoothed = np.asarray(counts.sum(axis=0)).ravel() ** cds
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    values = (
        np.log(counts.data) + math.log(col_smoothed.sum()) - np.log(row_sums[rows])
        - np.log(col_smoothed[counts.indices]) - math.log(shift)
    )
    result = sparse.csr_matrix((np.maximum(values, 0).astype(np.float32), counts.indices, counts.indptr),
                               shape=counts.shape)
    result.eliminate_zeros()
    return result


def randomized_svd(m, k: int, power_iters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k left singular vectors and values of sparse ``m`` (Halko, Martinsson & Tropp 2011, Alg. 4.4).

    The PPMI spectrum is flat at the tail (on WikiText-2, sigma_1/sigma_512 ~ 10), so
    the sketch needs generous oversampling (k/2 extra columns) and several power
    iterations; between products an LU factor stands in for QR (cheaper; it only has
    to keep the columns from collapsing). The small l x l problem is solved as the
    eigenproblem of ``B B^T``, much faster than an SVD of the wide ``B``.
    """
    from scipy import linalg

    def basis(block: np.ndarray) -> np.ndarray:  # same span, well conditioned: the permuted L of LU
        return linalg.lu(block, permute_l=True, check_finite=False)[0]

    width = min(k + max(16, k // 2), min(m.shape))
    mt = m.T  # CSC view: its products are faster than with a CSR copy
    y = m @ np.random.default_rng(seed).standard_normal((m.shape[1], width), dtype=np.float32)
    for _ in range(power_iters):
        y = m @ basis(mt @ basis(y))
    q = linalg.qr(y, mode="economic", overwrite_a=True, check_finite=False)[0]
    b_t = mt @ q
    values, vectors = np.linalg.eigh((b_t.T @ b_t).astype(np.float64))
    top = np.argsort(values)[::-1][:k]
    return q @ vectors[:, top].astype(np.float32), np.sqrt(np.maximum(values[top], 0))


def arpack_svd(m, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k left singular vectors and values by ARPACK (scipy svds), largest first."""
    from scipy.sparse.linalg import svds

    u, s, _ = svds(m, k=k, rng=np.random.default_rng(seed))
    order = np.argsort(s)[::-1]
    return u[:, order], s[order]


def truncated_svd(m, k: int, solver: str, power_iters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors with a deterministic sign (largest entry of each column positive)."""
    u, s = randomized_svd(m, k, power_iters, seed) if solver == "randomized" else arpack_svd(m, k, seed)
    signs = np.sign(u[np.abs(u).argmax(axis=0), np.arange(u.shape[1])])
    return u * signs, s


def build(corpus: Corpus, dim: int, seed: int, cfg: PMIConfig) -> Built:
    vocab_size = len(corpus.vocab)
    require(dim < vocab_size, f"pmi needs --dim < the vocabulary size ({vocab_size:,}) for a truncated SVD")
    # float64 V x d three times at least: the SVD's basis, its singular vectors and their scaled copy
    require_memory(3 * 8 * vocab_size * dim, f"pmi {vocab_size:,} x {dim:,}", "lower --dim")
    t0 = time.perf_counter()
    counts = cooccurrence(corpus.ids["train"], corpus.vocab.eos_id, vocab_size, cfg.window, cfg.dynamic_window)
    m = ppmi(counts, cfg.cds, cfg.shift)
    del counts
    t1 = time.perf_counter()
    u, s = truncated_svd(m, dim, cfg.svd, cfg.power_iters, seed)
    t2 = time.perf_counter()
    empty = np.diff(m.indptr) == 0
    u[empty] = 0  # exact zeros, so they get fallback rows rather than rounding noise
    matrix, n_random = unit_rows(u * s ** cfg.eig, seed, empty)
    return Built(
        matrix=matrix,
        notes=[
            f"PPMI {vocab_size:,}^2 with {m.nnz:,} non-zeros ({t1 - t0:.1f}s); {cfg.svd} SVD ({t2 - t1:.1f}s); "
            f"singular values {s[0]:.1f} .. {s[-1]:.2f}",
            f"{n_random:,} types without positive PMI got random unit rows",
            "rows normalised to unit length",
        ],
    )
