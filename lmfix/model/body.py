"""The body interface: what ``LanguageModel`` (and the trainer, evaluation, sampling) need from a body.

A body maps the embedded window (T, B, emsize) to features of the same shape and
may carry a state from one window to the next. The state is generic so the trainer
can detach, move and checkpoint it without knowing the body: per layer, a tuple of
tensors (an LSTM layer's ``(h, c)``, a GRU layer's ``(h,)``), or None for a body
without state (the Transformer sees only its window).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

State = list[tuple[torch.Tensor, ...]] | None


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: State) -> State:
    """``fn`` applied to every tensor of ``state`` (detach, float, to a device); None stays None."""
    return None if state is None else [tuple(fn(t) for t in layer) for layer in state]


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout with one mask per sequence, shared over time (x: T x B x H)."""
    if not training or p == 0:
        return x
    mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - p) / (1 - p)
    return x * mask


class Body(nn.Module):
    """Interface: ``init_state``, ``forward(x, state) -> (x, state)``, ``detach``.

    ``context`` is how many past tokens one call can see: None when the state carries
    the whole history (feed new tokens only), else the window to feed again each time.
    """

    context: int | None = None

    def init_state(self, batch_size: int) -> State:
        """The state before the first window of ``batch_size`` streams."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """(T, B, emsize) inputs and the previous state -> (T, B, emsize) features and the new state."""
        raise NotImplementedError

    def detach(self, state: State) -> State:
        """Cut the graph between windows (truncated backpropagation)."""
        return map_state(torch.Tensor.detach, state)
