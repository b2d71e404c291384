"""The registry of embedding methods and the build/cache entry points every caller uses.

A new method is one module in this package (a config dataclass and ``build``) plus one ``Method`` line here.
"""

from __future__ import annotations

import hashlib
import numbers
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from lmfix import __version__
from lmfix.data.corpus import Corpus
from lmfix.embeddings import hadamard, orthogonal, pmi, word2vec
from lmfix.embeddings.artifact import EmbeddingArtifact, EmbeddingError, cache_dir, canonical_json, load_artifact
from lmfix.embeddings.base import BUILD_BLAS_THREADS, Built, make_config, peak_rss_bytes, pinned_blas_threads, require


@dataclass(frozen=True)
class Method:
    """A registered builder: its options are the fields of ``config``."""

    name: str
    config: type
    builder: Callable[[Corpus, int, int, object], Built]
    summary: str


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("orthogonal", orthogonal.OrthogonalConfig, orthogonal.build,
               "random orthogonal columns (QR of a seeded Gaussian)"),
        Method("word2vec", word2vec.Word2VecConfig, word2vec.build, "gensim word2vec on the training split"),
        Method("pmi", pmi.PMIConfig, pmi.build, "positive PMI of windowed co-occurrences, truncated SVD"),
        Method("hadamard", hadamard.HadamardConfig, hadamard.build,
               "+-1/sqrt(d) Hadamard rows, generated (nothing stored)"),
    )
}


def get_method(name: str) -> Method:
    require(name in METHODS, f"unknown embedding method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def _settings(method: str, dim: int, seed: int, options: dict) -> tuple[Method, int, int, object]:
    """Validated (method, dim, seed, config): one-line errors before any work is done."""
    spec = get_method(method)
    for name, value, low in (("--dim", dim, 1), ("--seed", seed, 0)):
        require(isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low,
                f"{name} must be an integer >= {low}, got {value!r}")
    return spec, int(dim), int(seed), make_config(spec.config, method, options)


def build(method: str, corpus: Corpus, dim: int, seed: int = 0, **options) -> EmbeddingArtifact:
    """Build a V x d embedding for ``corpus``'s vocabulary (not saved; see ``EmbeddingArtifact.save``)."""
    spec, dim, seed, cfg = _settings(method, dim, seed, options)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    with pinned_blas_threads():
        built = spec.builder(corpus, dim, seed, cfg)
    seconds = time.perf_counter() - t0
    return EmbeddingArtifact(
        method=method, dim=dim, seed=seed, options=asdict(cfg), vocab=corpus.vocab, corpus=corpus.name,
        matrix=built.matrix, hadamard=built.hadamard,
        build={
            "lmfix_version": __version__,
            "built_at": started.isoformat(timespec="seconds"),
            "seconds": round(seconds, 3),
            "peak_rss_bytes": peak_rss_bytes(),
            "blas_threads": BUILD_BLAS_THREADS,
            "runtime_options": built.runtime,
            "notes": built.notes,
        },
    )


def cache_path(method: str, corpus: Corpus, dim: int, seed: int = 0, **options) -> Path:
    """Cache file for these settings: keyed by corpus, vocabulary, training text, method, dim, seed, options."""
    _, dim, seed, cfg = _settings(method, dim, seed, options)
    text = hashlib.sha256(corpus.ids["train"].tobytes()).hexdigest()
    key = canonical_json({"method": method, "dim": dim, "seed": seed, "options": asdict(cfg), "train": text})
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / corpus.name / corpus.vocab.fingerprint[:12] / f"{method}-d{dim}-s{seed}-{digest}.npz"


def get_or_build(
    method: str, corpus: Corpus, dim: int, seed: int = 0, *, force: bool = False, **options
) -> EmbeddingArtifact:
    """The cached artifact for these settings, building and caching it first if needed (or if ``force``)."""
    path = cache_path(method, corpus, dim, seed, **options)
    if path.is_file() and not force:
        try:
            art = load_artifact(path, corpus.vocab)
            art.from_cache = True
            return art
        except EmbeddingError as exc:
            warnings.warn(f"rebuilding the cached embedding: {exc}", stacklevel=2)
    art = build(method, corpus, dim, seed, **options)
    art.save(path)
    return art
