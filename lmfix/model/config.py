"""``ModelConfig``: the architecture (body, sizes, dropouts), apart from how it is trained.

No torch import: ``TrainConfig`` resolves and checks these settings before anything heavy loads,
and a run's architecture is rebuilt from its saved config by ``TrainConfig.model_config``.
"""

from __future__ import annotations

from dataclasses import dataclass

POSITIONS = ("sinusoidal", "learned")  # the Transformer's position encodings; the first is the default


@dataclass(frozen=True)
class ModelConfig:
    """What builds a body; ``TrainConfig`` fills it from its fields of the same names."""

    model: str = "lstm"  # the body: a name in ``registry.BODIES``
    emsize: int = 200  # E's rows and the body's output
    nhid: int = 200  # recurrent: hidden units below the last layer; transformer: feed-forward width
    nlayers: int = 2
    nhead: int = 2  # transformer only
    positions: str = POSITIONS[0]  # transformer only
    bptt: int = 35  # the transformer's context: learned positions have this many rows
    dropout: float = 0.2
    dropouth: float = 0.2
    dropouti: float = 0.2
    dropoute: float = 0.0
    wdrop: float = 0.0
