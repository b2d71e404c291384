"""Which entries of the Sylvester matrix H_n make up the fixed classifier E.

Row ``w`` of E (V x d) is ``H_n[w, columns] / sqrt(d)`` with
``H_n[i, j] = (-1)^popcount(i & j)`` (scipy.linalg.hadamard order). E is never
stored: rows come from popcount parities and products with E go through the
Walsh-Hadamard transform (see ``transform.py`` and ``hadamard_loss.py``).

Column structure (all layouts): with ``D = 2^ceil(log2 d)`` (the *block*),
``columns[k] = k + high[k] * D``. Because the low and high bits of a word id
``w = r * D + lo`` then never overlap those of a column,
``E'[w, k] = H_D[lo, k] * (-1)^popcount(r & high[k])`` (E' = sqrt(d) E), so the
logits of one vocabulary block ``r`` are a D-point transform of
``x * signs[r]``. Scoring all V words costs ``V log D`` instead of ``V d``,
without touching an n-point transform of the (mostly zero) scattered input.

* ``truncated`` (Hoffer et al. 2018 and their code): ``high = 0``, i.e.
  ``H_n[:V, :d]``. Rows repeat every D words, so only D distinct vectors serve
  V words; kept for comparison, and its loss has an O(d log d + V) shortcut.
* ``distinct`` (default): seeded random ``high`` whose bit patterns, together
  with the low bits ``k``, span all ``log2 n`` bits over GF(2), so every word
  gets its own row. Among a few seeded draws the one with the lowest maximal
  row coherence ``max_{u != 0} |sum_k (-1)^popcount(u & c_k)| / d`` is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lmfix.ops.bits import next_pow2, parity

LAYOUTS = ("distinct", "truncated")
# Seeded draws compared for coherence in make_layout; more barely helps.
_COHERENCE_DRAWS = 8
# Draws tried before giving up on a full-rank set of columns.
_MAX_DRAWS = 256


def _gf2_basis(values: list[int]) -> list[int]:
    """Indices of a maximal GF(2)-independent subset of the bit vectors ``values``."""
    pivots: dict[int, int] = {}
    chosen = []
    for index, value in enumerate(values):
        while value:
            top = value.bit_length() - 1
            if top not in pivots:
                pivots[top] = value
                chosen.append(index)
                break
            value ^= pivots[top]
    return chosen


@dataclass(frozen=True)
class HadamardLayout:
    """A V x d classifier made of ``d`` columns of ``H_n``; see the module doc."""

    vocab_size: int
    dim: int
    n: int
    columns: tuple[int, ...]
    layout: str
    seed: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple(int(c) for c in self.columns))
        # The columns as tensors, per (dtype, device): made from the tuple once, since a copy from the host
        # to a GPU waits for it (``_column_tensor``).
        object.__setattr__(self, "_tensors", {})
        _check_sizes(self.vocab_size, self.dim, self.layout)
        if self.n & (self.n - 1) or self.n < max(self.vocab_size, self.dim):
            raise ValueError(
                f"n={self.n} must be a power of two >= vocab_size and dim; build layouts with make_layout()"
            )
        if len(self.columns) != self.dim or len(set(self.columns)) != self.dim:
            raise ValueError(f"columns must be {self.dim} distinct indices; build layouts with make_layout()")
        if any(c < 0 or c >= self.n for c in self.columns):
            raise ValueError(f"columns must lie in [0, {self.n}); build layouts with make_layout()")
        if any(c % self.block != k for k, c in enumerate(self.columns)):
            raise ValueError(
                f"columns[k] mod {self.block} must equal k (the fast transform relies on it); "
                "build layouts with make_layout()"
            )

    @property
    def block(self) -> int:
        """D: words come in blocks of D whose logits are one D-point transform."""
        return next_pow2(self.dim)

    @property
    def num_blocks(self) -> int:
        """R = ceil(V / D) vocabulary blocks (the last one may be partial)."""
        return -(-self.vocab_size // self.block)

    @property
    def periodic(self) -> bool:
        """True when row w depends only on w mod D (always for ``truncated``)."""
        return all(c < self.block for c in self.columns)

    @property
    def scale(self) -> float:
        """Entries of E are +-scale."""
        return 1.0 / math.sqrt(self.dim)

    def _column_tensor(self, dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
        """``columns`` as a (d,) tensor, made once per dtype and device (callers must not write to it)."""
        key = (dtype, None if device is None else torch.device(device))
        if key not in self._tensors:
            self._tensors[key] = torch.tensor(self.columns, dtype=dtype, device=device)
        return self._tensors[key]

    def high_bits(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(d,) int64 ``columns >> log2 D``: the part of each column that varies across blocks."""
        shift = self.block.bit_length() - 1
        return self._column_tensor(torch.int64, device) >> shift

    def block_signs(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
        """(R, D) +-1 with ``E' = H_D[lo, k] * signs[r, k]``; zero for padding columns k >= d."""
        blocks = torch.arange(self.num_blocks, device=device)[:, None]
        signs = torch.zeros(self.num_blocks, self.block, dtype=dtype, device=device)
        signs[:, : self.dim] = 1 - 2 * parity(blocks & self.high_bits(device)).to(dtype)
        return signs

    def signs(self, ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(..., d) unscaled +-1 rows ``sqrt(d) * E[ids]``."""
        # int32 halves the work of the parity folds whenever the indices fit.
        index_dtype = torch.int32 if self.n <= 2**31 else torch.int64
        columns = self._column_tensor(index_dtype, ids.device)
        return 1 - 2 * parity(ids.to(index_dtype)[..., None] & columns).to(dtype)

    def rows(self, ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(..., d) rows of E for token ids, from popcount parities (no V x d tensor)."""
        return self.signs(ids, dtype) * self.scale

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The full V x d matrix E. Only for tests and small V: the point of the layout is to avoid it."""
        return self.rows(torch.arange(self.vocab_size), dtype)

    def distinct_rows(self) -> int:
        """Number of distinct rows of E.

        Row w is fixed by the parities of w against a GF(2) basis of the columns,
        so counting distinct parity signatures over w < V is exact and O(V rank).
        """
        basis = [self.columns[i] for i in _gf2_basis(list(self.columns))]
        words = np.arange(self.vocab_size, dtype=np.int64)
        signature = np.zeros(self.vocab_size, dtype=np.int64)
        for bit, column in enumerate(basis):
            signature |= parity(torch.from_numpy(words & column)).numpy() << bit
        return len(np.unique(signature))

    def to_dict(self) -> dict:
        """JSON-able form for the artifact file."""
        return {
            "vocab_size": self.vocab_size,
            "dim": self.dim,
            "n": self.n,
            "columns": list(self.columns),
            "layout": self.layout,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: dict) -> HadamardLayout:
        """Inverse of ``to_dict`` (validates like the constructor)."""
        return cls(
            vocab_size=int(data["vocab_size"]),
            dim=int(data["dim"]),
            n=int(data["n"]),
            columns=tuple(data["columns"]),
            layout=str(data["layout"]),
            seed=int(data["seed"]),
        )


def _check_sizes(vocab_size: int, dim: int, layout: str) -> None:
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if dim <= 0:
        raise ValueError(f"dim must be positive, got {dim}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown Hadamard layout {layout!r}; use one of {', '.join(LAYOUTS)}")


def _max_coherence(columns: np.ndarray, n: int) -> float:
    """max over u != 0 of |<row w, row w ^ u>| / d, via one n-point transform of the column indicator."""
    from lmfix.ops.transform import fwht  # the transform does not import the layout: no circle

    indicator = torch.zeros(1, n, dtype=torch.float64)
    indicator[0, torch.from_numpy(columns)] = 1.0
    return float(fwht(indicator)[0, 1:].abs().max()) / len(columns)


def make_layout(vocab_size: int, dim: int, layout: str = "distinct", seed: int = 0) -> HadamardLayout:
    """Choose the columns of H_n for a V x d fixed classifier; see the module doc."""
    _check_sizes(vocab_size, dim, layout)
    n = next_pow2(max(vocab_size, dim))
    block = next_pow2(dim)
    low = np.arange(dim, dtype=np.int64)
    if layout == "truncated" or n == block:
        # With n == D the low bits alone already span every word id.
        return HadamardLayout(vocab_size, dim, n, tuple(low.tolist()), layout, seed)
    bits = n.bit_length() - 1
    if dim < bits:
        raise ValueError(
            f"dim={dim} columns cannot give {vocab_size} distinct rows (need dim >= log2(n) = {bits}); "
            "raise dim or use layout='truncated'"
        )
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray] | None = None
    found = 0
    for _ in range(_MAX_DRAWS):
        columns = low + rng.integers(0, n // block, size=dim) * block
        if len(_gf2_basis(columns.tolist())) < bits:
            continue
        coherence = _max_coherence(columns, n)
        if best is None or coherence < best[0]:
            best = (coherence, columns)
        found += 1
        if found == _COHERENCE_DRAWS:
            break
    if best is None:
        raise ValueError(
            f"no full-rank column set found for vocab_size={vocab_size}, dim={dim}; "
            "raise dim, try another seed or use layout='truncated'"
        )
    return HadamardLayout(vocab_size, dim, n, tuple(best[1].tolist()), layout, seed)
