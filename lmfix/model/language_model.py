"""The language model: embed with E, run a body, score with E again.

Everything about E (learned, frozen or generated) lives in the head
(``lmfix.model.heads``), the sequence model in the body (``config.model``: see
``registry.make_body``); the two only meet here. Three of AWD-LSTM's dropouts
(Merity et al. 2017) act around any body, each off when its probability is zero:

* ``dropoute``: drops whole words (every occurrence in the batch) from E;
* ``dropouti`` / ``dropout``: locked (variational) dropout on the body's input and output.

In bf16 (``set_precision``) the body runs under ``torch.autocast`` (bf16 products,
float32 weights; a recurrent layer on a GPU opts out, see ``RecurrentLayer``); its output
and the carried state are float32 again before the head, which chooses its own operand dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from lmfix.model.body import State, locked_dropout, map_state
from lmfix.model.config import ModelConfig
from lmfix.model.heads import Head, ParamCounts, count_module
from lmfix.model.registry import make_body


class LanguageModel(nn.Module):
    """Head embedding -> body (outputs emsize) -> head loss or logits."""

    def __init__(self, head: Head, config: ModelConfig) -> None:
        super().__init__()
        if head.dim != config.emsize:
            raise ValueError(f"head dim {head.dim} != emsize {config.emsize}")
        self.head, self.config = head, config
        self.autocast: torch.dtype | None = None  # bf16 runs: the body's autocast dtype
        self.body = make_body(config)

    def set_precision(self, dtype: torch.dtype) -> None:
        """float32, or bfloat16 operands in the body (autocast) and the head's products."""
        self.autocast = None if dtype == torch.float32 else dtype
        self.head.use_operands(dtype)

    def init_state(self, batch_size: int) -> State:
        return self.body.init_state(batch_size)

    def detach(self, state: State) -> State:
        return self.body.detach(state)

    def features(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """ids (T, B) -> body outputs (T, B, emsize) after output dropout, and the new state (float32)."""
        if self.autocast is None:
            return self._features(ids, state)
        with torch.autocast(ids.device.type, dtype=self.autocast):
            x, state = self._features(ids, state)
        return x.float(), map_state(torch.Tensor.float, state)

    def _features(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        cfg = self.config
        x = self.head.embed(ids)
        if self.training and cfg.dropoute > 0:
            keep = x.new_empty(self.head.vocab_size).bernoulli_(1 - cfg.dropoute) / (1 - cfg.dropoute)
            x = x * keep[ids].unsqueeze(-1)
        x = locked_dropout(x, cfg.dropouti, self.training)
        x, state = self.body(x, state)
        return locked_dropout(x, cfg.dropout, self.training), state

    def forward(
        self, ids: torch.Tensor, targets: torch.Tensor, state: State, reduction: str = "mean"
    ) -> tuple[torch.Tensor, State]:
        """Loss of predicting ``targets`` from ``ids`` (T, B); the head may fuse it.

        ``targets`` (S, B) with S < T are those of the last S positions only: a sliding
        window scores just the tokens that no earlier window scored.
        """
        x, state = self.features(ids, state)
        x = x[x.size(0) - targets.size(0):]
        return self.head.loss(x.reshape(-1, x.size(-1)), targets.reshape(-1), reduction), state

    def logits(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """(T, B, V) next-word logits, for sampling."""
        x, state = self.features(ids, state)
        return self.head.logits(x), state

    def counts(self) -> ParamCounts:
        return count_module(self.body) + self.head.counts()
