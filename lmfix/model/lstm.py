"""The LSTM language model: embed with E, run stacked LSTMs, score with E again.

Everything about E (learned, frozen or generated) lives in the head
(``lmfix.model.heads``); this file is the recurrent body and the dropouts of Merity
et al. 2017 (AWD-LSTM), each off when its probability is zero:

* ``dropoute``: drops whole words (every occurrence in the batch) from E;
* ``dropouti`` / ``dropouth`` / ``dropout``: locked (variational) dropout on the
  LSTM input, between layers, and on the output;
* ``wdrop``: DropConnect on the hidden-to-hidden weights of every layer.

In bf16 (``set_precision``) the body runs under ``torch.autocast`` (bf16 LSTM
products, float32 weights); its output and the carried state are float32
again before the head, which chooses its own operand dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lmfix.model.heads import Head, ParamCounts, count_module

Hidden = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class ModelConfig:
    emsize: int = 200
    nhid: int = 200
    nlayers: int = 2
    dropout: float = 0.2
    dropouth: float = 0.2
    dropouti: float = 0.2
    dropoute: float = 0.0
    wdrop: float = 0.0


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout with one mask per sequence, shared over time (x: T x B x H)."""
    if not training or p == 0:
        return x
    mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - p) / (1 - p)
    return x * mask


class LSTMLayer(nn.Module):
    """One ``nn.LSTM`` layer whose hidden-to-hidden weights get DropConnect while training."""

    def __init__(self, input_size: int, hidden_size: int, wdrop: float) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size)
        self.wdrop = wdrop

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        if self.training and self.wdrop > 0:
            dropped = F.dropout(self.lstm.weight_hh_l0, self.wdrop, training=True)
            return functional_call(self.lstm, {"weight_hh_l0": dropped}, (x, state))
        return self.lstm(x, state)


class LanguageModel(nn.Module):
    """Head embedding -> ``nlayers`` LSTMs (the last one outputs emsize) -> head loss or logits."""

    def __init__(self, head: Head, config: ModelConfig) -> None:
        super().__init__()
        if head.dim != config.emsize:
            raise ValueError(f"head dim {head.dim} != emsize {config.emsize}")
        self.head, self.config = head, config
        self.autocast: torch.dtype | None = None  # bf16 runs: the body's autocast dtype
        sizes = [config.emsize] + [config.nhid] * (config.nlayers - 1) + [config.emsize]
        self.layers = nn.ModuleList(LSTMLayer(i, o, config.wdrop) for i, o in pairwise(sizes))

    def set_precision(self, dtype: torch.dtype) -> None:
        """float32, or bfloat16 operands in the body (autocast) and the head's products."""
        self.autocast = None if dtype == torch.float32 else dtype
        self.head.use_operands(dtype)

    def init_hidden(self, batch_size: int) -> Hidden:
        ref = self.head.bias
        return [(ref.new_zeros(1, batch_size, layer.lstm.hidden_size),) * 2 for layer in self.layers]

    def features(self, ids: torch.Tensor, hidden: Hidden) -> tuple[torch.Tensor, Hidden]:
        """ids (T, B) -> top-layer outputs (T, B, emsize) after output dropout, and the new state (float32)."""
        if self.autocast is None:
            return self._features(ids, hidden)
        with torch.autocast(ids.device.type, dtype=self.autocast):
            x, hidden = self._features(ids, hidden)
        return x.float(), [(h.float(), c.float()) for h, c in hidden]

    def _features(self, ids: torch.Tensor, hidden: Hidden) -> tuple[torch.Tensor, Hidden]:
        cfg = self.config
        x = self.head.embed(ids)
        if self.training and cfg.dropoute > 0:
            keep = x.new_empty(self.head.vocab_size).bernoulli_(1 - cfg.dropoute) / (1 - cfg.dropoute)
            x = x * keep[ids].unsqueeze(-1)
        x = locked_dropout(x, cfg.dropouti, self.training)
        new_hidden = []
        for i, layer in enumerate(self.layers):
            x, state = layer(x, hidden[i])
            new_hidden.append(state)
            p = cfg.dropouth if i < len(self.layers) - 1 else cfg.dropout
            x = locked_dropout(x, p, self.training)
        return x, new_hidden

    def forward(
        self, ids: torch.Tensor, targets: torch.Tensor, hidden: Hidden, reduction: str = "mean"
    ) -> tuple[torch.Tensor, Hidden]:
        """Loss of predicting ``targets`` (T, B) from ``ids`` (T, B); the head may fuse it."""
        x, hidden = self.features(ids, hidden)
        return self.head.loss(x.reshape(-1, x.size(-1)), targets.reshape(-1), reduction), hidden

    def logits(self, ids: torch.Tensor, hidden: Hidden) -> tuple[torch.Tensor, Hidden]:
        """(T, B, V) next-word logits, for sampling."""
        x, hidden = self.features(ids, hidden)
        return self.head.logits(x), hidden

    def counts(self) -> ParamCounts:
        return count_module(self.layers) + self.head.counts()


def detach_hidden(hidden: Hidden) -> Hidden:
    """Cut the graph between BPTT windows (truncated backpropagation)."""
    return [(h.detach(), c.detach()) for h, c in hidden]
