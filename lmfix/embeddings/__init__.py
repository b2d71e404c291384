"""Fixed embedding/classifier matrices, built once before training and stored as artifacts.

    from lmfix.embeddings import get_or_build, load_artifact
    art = get_or_build("pmi", corpus, dim=512)        # built, or reused from the cache
    art.matrix                                        # float32 V x d, row i = corpus.vocab.itos[i]
    art = load_artifact("pmi.npz", vocab=corpus.vocab)  # refuses another vocabulary's matrix

Methods (``METHODS``): ``orthogonal``, ``word2vec``, ``pmi``, ``hadamard``; each
takes the options of its config dataclass as keyword arguments.
"""

from lmfix.embeddings.artifact import EmbeddingArtifact, EmbeddingError, load_artifact
from lmfix.embeddings.registry import METHODS, Method, build, cache_path, get_method, get_or_build

__all__ = [
    "METHODS", "EmbeddingArtifact", "EmbeddingError", "Method", "build", "cache_path", "get_method", "get_or_build",
    "load_artifact",
]
