"""What every builder shares: its result type, option handling and row normalisation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np

from lmfix.embeddings.artifact import EmbeddingError

if TYPE_CHECKING:
    from lmfix.ops.hadamard import HadamardLayout

# Offsets the seeds of auxiliary random streams so they never replay a method's main stream.
FALLBACK_STREAM = 0x5EED
# BLAS/LAPACK threads of every build, whatever the environment says. 2: what this project's committed runs were
# built with (on 2 cores), so a fresh build reproduces their matrices; threadpoolctl raises a torchrun worker's
# single thread to it as well as it lowers a large machine's.
BUILD_BLAS_THREADS = 2


@dataclass
class Built:
    """A builder's result: a dense matrix or a Hadamard generator, plus notes for the summary."""

    matrix: np.ndarray | None = None
    hadamard: HadamardLayout | None = None
    notes: list[str] = field(default_factory=list)
    runtime: dict = field(default_factory=dict)  # resolved runtime options, e.g. workers=0 -> 2


def option(default: object, help: str) -> object:
    """A dataclass field that shapes the values; ``help`` is shown by the CLI and docs."""
    return field(default=default, metadata={"help": help})


def make_config(cls: type, method: str, options: dict) -> object:
    """``cls(**options)`` with one-line errors for unknown names and wrong types."""
    known = {f.name: f for f in fields(cls)}
    for name, value in options.items():
        if name not in known:
            raise EmbeddingError(
                f"{method} has no option {name!r}; its options are: {', '.join(known) or 'none'}"
            )
        kind = type(known[name].default)
        accepted = (int, float) if kind is float else kind  # an int is a fine float; a bool is no number
        if not isinstance(value, accepted) or isinstance(value, bool) != (kind is bool):
            raise EmbeddingError(f"{method} option {name} must be {kind.__name__}, got {value!r}")
    # 2 and 2.0 must give the same cache key and id.
    return cls(**{k: float(v) if type(known[k].default) is float else v for k, v in options.items()})


def require(condition: bool, message: str) -> None:
    if not condition:
        raise EmbeddingError(message)


@contextmanager
def pinned_blas_threads() -> Iterator[None]:
    """Run numpy's and scipy's BLAS/LAPACK on ``BUILD_BLAS_THREADS`` threads, whatever the environment says.

    OpenBLAS splits a product or a factorisation by its thread count, and the split
    changes the rounding: unpinned, the same build command gives another matrix (another
    artifact id) under torchrun (one thread per worker), another ``OMP_NUM_THREADS`` or
    another core count, and a run that must rebuild its matrix is refused. Builders use
    no torch operations, so torch's threads need no pin.
    """
    import scipy.linalg  # noqa: F401 -- loads scipy's own OpenBLAS now, so that the limit reaches it too
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=BUILD_BLAS_THREADS, user_api="blas"):
        yield


def _proc_bytes(path: str, key: str) -> int | None:
    """A ``KEY: N kB`` line of a Linux /proc file, in bytes; None where there is no such file or line."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_memory() -> int | None:
    """Bytes of memory the system can still give (``MemAvailable``), None where it is not known."""
    return _proc_bytes("/proc/meminfo", "MemAvailable")


def require_memory(needed: int, what: str, fix: str) -> None:
    """Refuse up front a build that cannot fit, instead of swapping or being killed hours later."""
    free = available_memory()
    require(free is None or needed <= free,
            f"{what} needs about {needed / 2**30:.1f} GiB of memory but {(free or 0) / 2**30:.1f} GiB is "
            f"available; {fix}")


def unit_rows(matrix: np.ndarray, seed: int, empty: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Scale rows to unit length (float32); rows marked ``empty`` or all zero get seeded random unit rows.

    A type the method learned nothing about (never seen, no co-occurrence) still
    needs a distinct, well-defined row so a tied classifier can score it; a random
    direction is nearly orthogonal to all others in high dimension, i.e. neutral.
    Returns the matrix and how many rows were replaced.
    """
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1)
    missing = norms == 0 if empty is None else (norms == 0) | empty
    n_missing = int(missing.sum())
    if n_missing:
        rng = np.random.default_rng([seed, FALLBACK_STREAM])
        matrix[missing] = rng.standard_normal((n_missing, matrix.shape[1]), dtype=np.float32)
        norms[missing] = np.linalg.norm(matrix[missing], axis=1)
    matrix /= norms[:, None]
    return matrix, n_missing


def rss_bytes() -> int:
    """This process's resident memory now (Linux VmRSS; 0 where /proc is not there)."""
    return _proc_bytes("/proc/self/status", "VmRSS") or 0


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux VmHWM; ru_maxrss elsewhere)."""
    peak = _proc_bytes("/proc/self/status", "VmHWM")
    if peak is not None:
        return peak
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024
