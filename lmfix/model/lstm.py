"""The recurrent bodies' stack (AWD-LSTM, Merity et al. 2017) and the LSTM body.

``nlayers`` single-layer RNNs (the last one outputs emsize) with two of AWD-LSTM's
dropouts, each off at zero (the others act on the body's input and output, in
``LanguageModel``, for every body):

* ``dropouth``: locked (variational) dropout between layers;
* ``wdrop``: DropConnect on the hidden-to-hidden weights of every layer.

One stack serves every torch RNN (``gru.py`` is the GRU); its state is each layer's
tensors, carried from one window to the next.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lmfix.model.body import Body, State, locked_dropout
from lmfix.model.config import ModelConfig

LayerState = tuple[torch.Tensor, ...]


class RecurrentLayer(nn.Module):
    """One single-layer ``rnn`` (``nn.LSTM``, ``nn.GRU``) whose hidden-to-hidden weights get DropConnect
    while training."""

    def __init__(self, rnn: type[nn.RNNBase], input_size: int, hidden_size: int, wdrop: float) -> None:
        super().__init__()
        self.rnn = rnn(input_size, hidden_size)
        self.wdrop = wdrop

    def forward(self, x: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        if x.is_cuda and torch.is_autocast_enabled("cuda"):
            # Autocast casts cuDNN RNNs to float16 whatever dtype it was given (ATen's AutocastRNN), and lmfix
            # scales no loss: on a GPU the recurrence runs in float32 (the head's products stay bf16).
            with torch.autocast("cuda", enabled=False):
                return self._run(x.float(), tuple(s.float() for s in state))
        return self._run(x, state)

    def _run(self, x: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        hx = state if len(state) > 1 else state[0]  # nn.LSTM takes (h, c), nn.GRU h
        if self.training and self.wdrop > 0:
            dropped = F.dropout(self.rnn.weight_hh_l0, self.wdrop, training=True)
            x, hx = functional_call(self.rnn, {"weight_hh_l0": dropped}, (x, hx))
        else:
            x, hx = self.rnn(x, hx)
        return x, hx if isinstance(hx, tuple) else (hx,)


class RecurrentBody(Body):
    """Stacked ``rnn`` layers with locked dropout between them; a subclass names the RNN."""

    rnn: type[nn.RNNBase]
    carried: int  # tensors each layer carries between windows

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        sizes = [config.emsize] + [config.nhid] * (config.nlayers - 1) + [config.emsize]
        self.layers = nn.ModuleList(RecurrentLayer(self.rnn, i, o, config.wdrop) for i, o in pairwise(sizes))
        self.dropouth = config.dropouth

    def init_state(self, batch_size: int) -> State:
        ref = next(self.parameters())
        return [(ref.new_zeros(1, batch_size, layer.rnn.hidden_size),) * self.carried for layer in self.layers]

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        new_state = []
        for i, layer in enumerate(self.layers):
            x, layer_state = layer(x, state[i])
            new_state.append(layer_state)
            if i < len(self.layers) - 1:
                x = locked_dropout(x, self.dropouth, self.training)
        return x, new_state


class LSTMBody(RecurrentBody):
    rnn = nn.LSTM
    carried = 2  # (h, c)
