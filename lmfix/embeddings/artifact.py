"""Embedding artifacts: one ``.npz`` file per fixed matrix, row-aligned with a vocabulary.

The file is a plain numpy archive (no pickles), so users' own code can read it
with ``np.load``: ``header`` (UTF-8 JSON as uint8: method, options, fingerprint,
corpus, lmfix version, build time, content id), ``vocab`` (the ordered types,
newline-joined UTF-8 as uint8), ``counts`` (int64 training counts) and, for every
method but hadamard, ``matrix`` (float32 V x d). A Hadamard artifact stores only
the layout that generates its rows (in the header). Storing the vocabulary makes
an artifact self-describing (neighbors, export) and lets loading refuse a matrix
built for another vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lmfix import atomic
from lmfix.data.sources import PACKAGE_ROOT
from lmfix.data.vocab import Vocab
from lmfix.errors import LmfixError, first_line

if TYPE_CHECKING:
    from lmfix.ops.hadamard import HadamardLayout

FORMAT = "lmfix-embeddings"
FORMAT_VERSION = 1


class EmbeddingError(LmfixError):
    """An embedding could not be built, loaded or used; the message says what to do."""


def cache_dir() -> Path:
    """Where ``get_or_build`` keeps artifacts: ``$LMFIX_CACHE/embeddings`` or ``cache/embeddings``."""
    return Path(os.environ.get("LMFIX_CACHE") or PACKAGE_ROOT / "cache") / "embeddings"


def canonical_json(value: object) -> str:
    """Key-sorted compact JSON: equal values give equal strings, hence equal hashes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass
class EmbeddingArtifact:
    """A built V x d fixed embedding plus everything needed to trust and reuse it.

    ``options`` are the method's resolved options that shape the values (defaults
    filled in); ``build`` records how it was made (lmfix version, time, seconds,
    peak memory, BLAS threads, runtime options such as worker threads, notes)
    and takes no part in ``id``.
    """

    method: str
    dim: int
    seed: int
    options: dict
    vocab: Vocab
    corpus: str
    matrix: np.ndarray | None = None
    hadamard: HadamardLayout | None = None
    build: dict = field(default_factory=dict)
    path: Path | None = None
    from_cache: bool = False  # set by get_or_build when it reused a cached file

    def __post_init__(self) -> None:
        """ValueError for values no builder gives (a damaged file or a bug); ``load_artifact`` words it for users."""
        if (self.matrix is None) == (self.hadamard is None):
            raise ValueError("an artifact holds exactly one of matrix and hadamard")
        if self.matrix is None:
            return
        if self.matrix.shape != (len(self.vocab), self.dim):
            raise ValueError(f"matrix shape {self.matrix.shape} != ({len(self.vocab)}, {self.dim})")
        if self.matrix.dtype.kind != "f" or self.matrix.dtype.itemsize != 4:  # float32 in either byte order
            raise ValueError(f"matrix is {self.matrix.dtype}, not float32")
        bad_rows = int((~np.isfinite(self.matrix)).any(axis=1).sum())
        if bad_rows:
            raise ValueError(f"matrix has NaN or infinite values in {bad_rows:,} of its rows")

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.vocab), self.dim

    @cached_property
    def vocab_fingerprint(self) -> str:
        return self.vocab.fingerprint

    @cached_property
    def id(self) -> str:
        """Short content hash (method, options, vocabulary, values) that checkpoints can cite."""
        h = hashlib.sha256()
        meta = {"method": self.method, "dim": self.dim, "seed": self.seed, "options": self.options,
                "vocab": self.vocab_fingerprint}
        h.update(canonical_json(meta).encode())
        if self.matrix is not None:
            h.update(np.ascontiguousarray(self.matrix, dtype="<f4").tobytes())
        else:
            h.update(canonical_json(self.hadamard.to_dict()).encode())
        return h.hexdigest()[:16]

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """float32 rows for token ids; Hadamard rows are generated, never the whole matrix."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.matrix is not None:
            return self.matrix[ids]
        import torch

        return self.hadamard.rows(torch.from_numpy(ids)).numpy()

    def dense(self) -> np.ndarray:
        """The full V x d matrix, generated for Hadamard (for inspection; export streams rows in chunks)."""
        return self.matrix if self.matrix is not None else self.rows(np.arange(len(self.vocab)))

    def header(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "id": self.id,
            "method": self.method,
            "dim": self.dim,
            "seed": self.seed,
            "options": self.options,
            "corpus": self.corpus,
            "vocab_size": len(self.vocab),
            "vocab_fingerprint": self.vocab_fingerprint,
            "hadamard": self.hadamard.to_dict() if self.hadamard is not None else None,
            "build": self.build,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the artifact atomically (complete file or none); returns the path and remembers it."""
        path = Path(path)
        arrays = {
            "header": _bytes_array(json.dumps(self.header(), indent=1)),
            "vocab": _bytes_array("\n".join(self.vocab.itos)),
            "counts": np.asarray(self.vocab.counts, dtype=np.int64),
        }
        if self.matrix is not None:
            arrays["matrix"] = np.ascontiguousarray(self.matrix, dtype=np.float32)
        with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
            atomic.sync(f)
        self.path = path
        return path


def check_writable(path: str | os.PathLike, inputs: tuple[str | os.PathLike, ...] = (), force: bool = False) -> None:
    """Fail now, not after a long build, if ``path`` cannot be written, is one of the command's ``inputs`` (by
    inode, links and all), or is a file that exists (replaced only with ``force``, as gzip does)."""
    path = Path(path)
    if path.is_dir():
        raise EmbeddingError(f"cannot write {path}: it is a directory; give a file name such as {path / 'emb.npz'}")
    for source in inputs:
        if path.exists() and Path(source).exists() and os.path.samefile(path, source):
            raise EmbeddingError(f"cannot write {path}: it is {source}, the input of this command; choose another "
                                 "-o path")
    if path.is_file() and not force:
        raise EmbeddingError(f"{path} already exists; pass --force to replace it, or choose another -o path")
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise EmbeddingError(f"cannot write {path}: {folder} is not a writable directory; choose another -o path")


def _bytes_array(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def _text(array: np.ndarray) -> str:
    return array.astype(np.uint8, copy=False).tobytes().decode("utf-8")


def load_artifact(path: str | os.PathLike, vocab: Vocab | None = None) -> EmbeddingArtifact:
    """Read and verify an artifact; with ``vocab``, refuse one built for another vocabulary."""
    path = Path(path)
    if not path.is_file():
        raise EmbeddingError(f"no embedding artifact at {path}; build one with lmfix build-embeddings METHOD -o {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(_text(z["header"]))
            itos = _text(z["vocab"]).split("\n")
            counts = z["counts"]
            matrix = z["matrix"] if "matrix" in z.files else None
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
        if counts.ndim != 1 or counts.dtype.kind not in "iu":
            raise ValueError(f"its counts are {counts.dtype} of shape {counts.shape}, not a list of integers")
        if header.get("format") != FORMAT:
            raise ValueError(f"not an {FORMAT} file")
        if header["format_version"] > FORMAT_VERSION:
            raise EmbeddingError(
                f"{path} has format version {header['format_version']}, newer than this lmfix reads "
                f"({FORMAT_VERSION}); upgrade lmfix"
            )
        hadamard = None
        if header["hadamard"] is not None:
            from lmfix.ops.hadamard import HadamardLayout

            hadamard = HadamardLayout.from_dict(header["hadamard"])
        art = EmbeddingArtifact(
            method=header["method"], dim=int(header["dim"]), seed=int(header["seed"]), options=header["options"],
            vocab=Vocab(tuple(itos), tuple(int(c) for c in counts)), corpus=header["corpus"],
            matrix=matrix, hadamard=hadamard, build=header["build"], path=path,
        )
    except EmbeddingError:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise EmbeddingError(
            f"{path} is damaged or not an embedding artifact ({first_line(exc)}); "
            "rebuild it with lmfix build-embeddings"
        ) from exc
    if art.vocab_fingerprint != header["vocab_fingerprint"] or art.id != header["id"]:
        raise EmbeddingError(f"{path} is corrupt (its content does not match its header); rebuild it")
    if vocab is not None:
        check_vocab(art, vocab)
    return art


def check_vocab(art: EmbeddingArtifact, vocab: Vocab) -> None:
    """Refuse an artifact whose rows belong to a different vocabulary than ``vocab``."""
    if vocab.fingerprint != art.vocab_fingerprint:
        where = art.path or "the embedding artifact"
        raise EmbeddingError(
            f"{where} was built for another vocabulary ({art.corpus}: {art.shape[0]:,} types, fingerprint "
            f"{art.vocab_fingerprint[:12]}) than this one ({len(vocab):,} types, fingerprint "
            f"{vocab.fingerprint[:12]}); rebuild it with lmfix build-embeddings {art.method} for this corpus"
        )
