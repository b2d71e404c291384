"""What a run reports while it trains (``Event``) and when it ends (``RunResult``, ``summary.json``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lmfix.model.heads import ParamCounts
from lmfix.training import checkpoint
from lmfix.training.config import TrainConfig


@dataclass
class Event:
    """What the loop reports: ``start``, ``step``, ``valid``, ``checkpoint``, ``interrupted`` or ``end``."""

    kind: str
    step: int
    tokens: int
    total_tokens: int
    loss: float = math.nan
    lr: float = 0.0
    valid_ppl: float | None = None
    info: dict = field(default_factory=dict)


Callback = Callable[[Event], None]


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    tokens: int
    epochs: int
    best_valid_ppl: float
    final_valid_ppl: float
    train_tokens_per_second: float
    wall_seconds: float
    stop_reason: str  # epochs, max_tokens or time_budget
    counts: ParamCounts
    grad_bytes_per_step: int  # bytes of gradients DDP would all-reduce each step
    sync_bytes_per_step: float | None  # measured under DDP, None in a single process
    world_size: int
    precision: str  # fp32 or bf16, as resolved on this device


def ppl(loss: float) -> float:
    """Perplexity exp(loss), inf instead of an overflow error."""
    return math.exp(loss) if loss < 700 else math.inf


def summary(result: RunResult, config: TrainConfig, embedding: dict | None) -> dict:
    return {
        "embed": config.embed,
        "embedding": embedding,
        "params": result.counts.to_dict(),
        "steps": result.steps,
        "tokens": result.tokens,
        "epochs": result.epochs,
        "best_valid_ppl": checkpoint.clean(result.best_valid_ppl),
        "final_valid_ppl": checkpoint.clean(result.final_valid_ppl),
        "valid_tokens": config.eval_tokens or "all",
        "train_tokens_per_second": result.train_tokens_per_second,
        "wall_seconds": result.wall_seconds,
        "stop_reason": result.stop_reason,
        "grad_bytes_per_step": result.grad_bytes_per_step,
        "sync_bytes_per_step": result.sync_bytes_per_step,
        "world_size": result.world_size,
        "precision": result.precision,
    }
