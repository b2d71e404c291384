"""The vocabulary: frequency-sorted, stable, saved as text, with a fingerprint.

Row ``i`` of every embedding matrix belongs to ``itos[i]``; the fingerprint (a
hash of the ordered types) is what artifacts and checkpoints are checked against.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lmfix import atomic
from lmfix.errors import CorpusError

EOS = "<eos>"
UNK = "<unk>"


@dataclass(frozen=True)
class Vocab:
    """Types in frequency order (ties keep first occurrence), with training counts."""

    itos: tuple[str, ...]
    counts: tuple[int, ...]
    stoi: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """ValueError for inconsistent data: the callers that read files (``load``, artifacts) turn it into
        their own one-line error, whose advice depends on the file."""
        object.__setattr__(self, "stoi", {w: i for i, w in enumerate(self.itos)})
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary has duplicate types")
        if len(self.counts) != len(self.itos):
            raise ValueError(f"vocabulary has {len(self.counts):,} counts for {len(self.itos):,} types")

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def eos_id(self) -> int:
        return self.stoi[EOS]

    @property
    def unk_id(self) -> int | None:
        return self.stoi.get(UNK)

    @property
    def fingerprint(self) -> str:
        """sha256 of the ordered types: equal fingerprints mean row-aligned matrices."""
        h = hashlib.sha256()
        for w in self.itos:
            h.update(w.encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()

    @classmethod
    def from_tokens(cls, tokens: Iterable[str], extra: Iterable[str] = ()) -> Vocab:
        """Count ``tokens``; ``extra`` types (e.g. unused subword pieces) come last with count 0."""
        counter = Counter(tokens)  # insertion order = first occurrence
        ordered = sorted(counter.items(), key=lambda kv: -kv[1])  # stable sort
        itos = [w for w, _ in ordered]
        counts = [c for _, c in ordered]
        for w in extra:
            if w not in counter:
                itos.append(w)
                counts.append(0)
                counter[w] = 0
        return cls(tuple(itos), tuple(counts))

    def save(self, path: Path) -> None:
        """One ``type<TAB>count`` per line, ending at "\\n" only: a sentencepiece piece may hold characters
        that ``str.splitlines`` also breaks at (\\x85, \\u2028); no type holds "\\n"."""
        atomic.write_text(path, "".join(f"{w}\t{c}\n" for w, c in zip(self.itos, self.counts, strict=True)))

    @classmethod
    def load(cls, path: Path) -> Vocab:
        try:
            text = path.read_text(encoding="utf-8")
            lines = text.removesuffix("\n").split("\n") if text else []
            pairs = [line.rsplit("\t", 1) for line in lines]
            return cls(tuple(w for w, _ in pairs), tuple(int(c) for _, c in pairs))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise CorpusError(
                f"cannot read vocabulary {path} ({exc}); delete that directory and rerun lmfix prepare"
            ) from exc
