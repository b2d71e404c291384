"""``lmfix bench embeddings``: build times and peak memory of every method, and the PMI SVD trade-off.

Each run builds in a fresh process, so its peak resident memory (VmHWM) is that
build's alone (plus the interpreter, the loaded corpus and the method's
libraries), and one build's leftovers never help the next. Module imports
(gensim, scipy, torch) happen before the clock starts: they are paid once per
process, not per matrix, and are reported separately.
"""

from __future__ import annotations

import importlib
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context

import numpy as np

from lmfix.data.corpus import Corpus, load
from lmfix.embeddings import build, pmi
from lmfix.embeddings.base import peak_rss_bytes, rss_bytes, unit_rows

# The budgets on WikiText-2 (V=33,278, d=512) with 2 CPU cores.
TARGET_SECONDS = {"orthogonal": 5.0, "word2vec": 90.0, "pmi": 30.0, "hadamard": 1.0}
TARGET_PEAK_BYTES = 4 * 2**30
# Heavy libraries each method imports lazily; loaded before timing.
PRELOAD = {
    "orthogonal": ("scipy.linalg",),
    "word2vec": ("gensim.models",),
    "pmi": ("scipy.sparse", "scipy.linalg", "scipy.sparse.linalg"),
    "hadamard": ("lmfix.ops.hadamard",),
}


@dataclass(frozen=True)
class Run:
    seconds: float
    cpu_seconds: float  # user + system time of the build: unlike wall time, barely moved by other load
    import_seconds: float
    peak_rss_bytes: int  # whole process
    build_rss_bytes: int  # peak minus resident memory just before the build


@dataclass
class MethodResult:
    method: str
    runs: list[Run] = field(default_factory=list)

    @property
    def median_seconds(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def median_cpu_seconds(self) -> float:
        return statistics.median(r.cpu_seconds for r in self.runs)

    @property
    def max_peak_bytes(self) -> int:
        return max(r.peak_rss_bytes for r in self.runs)

    @property
    def within_target(self) -> bool:
        return self.median_seconds <= TARGET_SECONDS[self.method] and self.max_peak_bytes <= TARGET_PEAK_BYTES


def _one_run(method: str, corpus_name: str, load_kwargs: dict, dim: int, seed: int) -> Run:
    """One build in this (fresh) process."""
    corpus = load(corpus_name, **load_kwargs)
    t0 = time.perf_counter()
    for module in PRELOAD[method]:
        importlib.import_module(module)
    import_seconds = time.perf_counter() - t0
    before = rss_bytes()
    t0, cpu0 = time.perf_counter(), time.process_time()
    build(method, corpus, dim, seed)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    peak = peak_rss_bytes()
    return Run(seconds, cpu_seconds, import_seconds, peak, peak - before)


def bench(
    methods: list[str], corpus_name: str, load_kwargs: dict, dim: int = 512, repeat: int = 3, seed: int = 0,
    progress=None,
) -> list[MethodResult]:
    """``repeat`` builds per method, each in its own fresh process; ``progress(method, run)`` after each."""
    results = []
    for method in methods:
        result = MethodResult(method)
        for _ in range(repeat):
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                run = pool.submit(_one_run, method, corpus_name, load_kwargs, dim, seed).result()
            result.runs.append(run)
            if progress:
                progress(method, run)
        results.append(result)
    return results


@dataclass(frozen=True)
class SolverResult:
    solver: str
    power_iters: int | None
    seconds: float
    sv_error_mean: float  # relative error of the singular values against ARPACK
    sv_error_max: float
    subspace: float  # ||U^T U_exact||_F^2 / k: 1 = same top-k subspace
    neighbor_agreement: float  # shared top-10 cosine neighbours of frequent words, vs ARPACK


def compare_svd(
    corpus: Corpus, dim: int = 512, power_iters: tuple[int, ...] = (4, 6, 8, 10), seed: int = 0, words: int = 300
) -> list[SolverResult]:
    """Time ARPACK and the randomized SVD on the default PPMI matrix; score the latter against ARPACK."""
    cfg = pmi.PMIConfig()
    m = pmi.ppmi(
        pmi.cooccurrence(corpus.ids["train"], corpus.vocab.eos_id, len(corpus.vocab), cfg.window, cfg.dynamic_window),
        cfg.cds, cfg.shift,
    )
    probe = np.random.default_rng(seed).choice(min(2000, len(corpus.vocab)), min(words, len(corpus.vocab)),
                                               replace=False)

    def solve(solver: str, iters: int) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        u, s = pmi.truncated_svd(m, dim, solver, iters, seed)
        seconds = time.perf_counter() - t0
        emb, _ = unit_rows(u * s**cfg.eig, seed)
        sims = emb[probe] @ emb.T
        sims[np.arange(len(probe)), probe] = -np.inf
        return seconds, u, s, np.argsort(-sims, axis=1)[:, :10]

    ref_seconds, ref_u, ref_s, ref_nb = solve("arpack", 0)
    results = [SolverResult("arpack", None, ref_seconds, 0.0, 0.0, 1.0, 1.0)]
    for iters in power_iters:
        seconds, u, s, nb = solve("randomized", iters)
        err = np.abs(s - ref_s) / ref_s
        agree = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(nb, ref_nb, strict=True)])
        results.append(SolverResult(
            "randomized", iters, seconds, float(err.mean()), float(err.max()),
            float(np.linalg.norm(u.T @ ref_u) ** 2 / dim), float(agree),
        ))
    return results
