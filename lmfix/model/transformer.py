"""The Transformer body: a causal, pre-LayerNorm decoder whose context is the BPTT window.

No state is carried between windows: each window is attended to on its own, with
``F.scaled_dot_product_attention(is_causal=True)``. The input is layer-normalised
before positions are added because the head decides E's scale (learned rows of
about 0.1, unit rows, Hadamard rows of +-1): this way the positions weigh the same
against every head's embeddings. Positions are sinusoidal (computed per call, never
stored, any length) or learned (``bptt`` rows). ``dropouth`` drops attention weights
and both residual branches; the output passes a final LayerNorm, then the head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmfix.model.body import Body, State
from lmfix.model.config import ModelConfig


def sinusoidal(length: int, dim: int, device: torch.device) -> torch.Tensor:
    """(length, dim) positions of Vaswani et al. (2017): sines on even columns, cosines on odd ones."""
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.empty(length, dim, device=device)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return table


class Block(nn.Module):
    """x + attention(LN(x)), then + feed-forward(LN(x)); inputs (T, B, d)."""

    def __init__(self, dim: int, nhead: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.nhead, self.dropout = nhead, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + F.dropout(self.attend(self.norm1(x)), self.dropout, self.training)
        return x + F.dropout(self.ff(self.norm2(x)), self.dropout, self.training)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        t, b, d = x.shape
        q, k, v = self.qkv(x).view(t, b, 3, self.nhead, d // self.nhead).permute(2, 1, 3, 0, 4)  # 3 x (B, h, T, d/h)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.proj(y.permute(2, 0, 1, 3).reshape(t, b, d))


class TransformerBody(Body):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.emsize
        if d % config.nhead:
            raise ValueError(f"nhead {config.nhead} does not divide emsize {d}")
        self.context = config.bptt
        self.norm_in, self.norm_out = nn.LayerNorm(d), nn.LayerNorm(d)
        # GPT-2's initialisation of learned positions; sinusoidal ones are computed per call
        self.positions = nn.Parameter(torch.randn(config.bptt, d) * 0.02) if config.positions == "learned" else None
        self.blocks = nn.ModuleList(Block(d, config.nhead, config.nhid, config.dropouth) for _ in range(config.nlayers))

    def init_state(self, batch_size: int) -> State:
        return None

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        t, d = x.size(0), x.size(2)
        if self.positions is None:
            where = sinusoidal(t, d, x.device)
        elif t <= self.positions.size(0):
            where = self.positions[:t]
        else:
            raise ValueError(f"a window of {t} tokens is longer than the {self.positions.size(0)} learned positions")
        x = self.norm_in(x) + where[:, None]
        for block in self.blocks:
            x = block(x)
        return self.norm_out(x), None
