"""The GRU body: the recurrent stack of ``lstm.py`` with ``nn.GRU`` layers.

The same locked dropout between layers and DropConnect (``wdrop``) on each layer's
hidden-to-hidden weights (all three gates' ``weight_hh``); a layer carries only ``h``.
"""

from __future__ import annotations

from torch import nn

from lmfix.model.lstm import RecurrentBody


class GRUBody(RecurrentBody):
    rnn = nn.GRU
    carried = 1  # (h,)
