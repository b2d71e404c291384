"""Batching for truncated BPTT, shared by training, evaluation and benchmarks.

The corpus is cut into ``batch_size`` parallel streams (as pytorch/examples'
``batchify``); a :class:`BPTTStream` walks them in windows of ``bptt`` tokens,
optionally of random length (AWD-LSTM), and can save and restore its exact
position and random state so that a resumed run sees the same batches.
``sliding_windows`` is evaluation's walk: the same windows, or overlapping ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from lmfix.errors import LmfixError


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(T,) ids -> (T // batch_size, batch_size); the tail that does not fit is dropped."""
    if batch_size < 1:
        raise ValueError("batch size must be >= 1")
    steps = ids.numel() // batch_size
    if steps < 2:
        raise ValueError(f"{ids.numel()} tokens are too few for batch size {batch_size}")
    return ids[: steps * batch_size].view(batch_size, steps).t().contiguous()


def batchify_split(ids: torch.Tensor, batch_size: int, split: str, fix: str = "lower the batch size") -> torch.Tensor:
    """``batchify`` with a one-line error (ending in ``fix``) for a split too small for the batch size."""
    try:
        return batchify(ids, batch_size)
    except ValueError as exc:
        raise LmfixError(f"the {split} split: {exc}; {fix}") from None


@dataclass
class BPTTStream:
    """Windows ``(x, y)`` of shape (seq_len, batch) over batchified data, one epoch per pass.

    With ``variable=True`` the length is drawn as in AWD-LSTM: ``bptt`` with
    probability 0.95 else ``bptt / 2``, then ``N(that, 5)``, at least 5 tokens.
    """

    data: torch.Tensor
    bptt: int
    variable: bool = False
    seed: int = 0
    position: int = 0
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.bptt < 1:
            raise ValueError("bptt must be >= 1")
        self.rng = np.random.default_rng(self.seed)

    def next_length(self) -> int:
        if not self.variable:
            return self.bptt
        base = self.bptt if self.rng.random() < 0.95 else self.bptt / 2
        return max(5, int(self.rng.normal(base, 5)))

    def __iter__(self):
        """Yield windows from the current position to the end of the epoch, then rewind."""
        limit = self.data.size(0) - 1
        while self.position < limit:
            seq_len = min(self.next_length(), limit - self.position)
            i = self.position
            self.position += seq_len
            yield self.data[i : i + seq_len], self.data[i + 1 : i + 1 + seq_len]
        self.position = 0

    def state_dict(self) -> dict:
        return {"position": self.position, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])
        self.rng.bit_generator.state = state["rng"]


def sliding_windows(data: torch.Tensor, bptt: int, stride: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Windows ``(x, y)`` of up to ``bptt`` inputs starting every ``stride`` tokens; ``y`` holds the targets of
    x's last positions that no earlier window scored, so every target is scored exactly once.

    ``stride == bptt`` gives ``BPTTStream``'s windows. With a smaller stride a body without state sees
    more context: every token after the first window has at least ``bptt - stride + 1`` tokens of it.
    """
    if not 1 <= stride <= bptt:
        raise ValueError(f"stride {stride} must be in [1, bptt = {bptt}]")
    limit = data.size(0) - 1
    start = scored = 0
    while scored < limit:
        end = min(start + bptt, limit)
        yield data[start:end], data[scored + 1 : end + 1]
        start, scored = start + stride, end
