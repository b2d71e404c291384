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


def summary(result: RunResult, config: TrainConfig, embedding: dict | None, provenance: dict | None = None,
            budget_changes: list[dict] | None = None) -> dict:
    """What ``summary.json`` holds. ``provenance``: the corpus's vocabulary fingerprint and split checksums
    (compare refuses runs of different text) and the best checkpoint's step (an evaluation of another step is
    stale); ``budget_changes``: what each resume changed of the budget."""
    extra = {"provenance": provenance} if provenance else {}
    if budget_changes:
        extra["budget_changes"] = budget_changes
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
    } | extra


def current(evaluation: dict, run_summary: dict) -> bool:
    """Whether an ``eval.json`` entry describes the run's best checkpoint as it is now (a run resumed after
    its evaluation may have a newer one); runs from before ``best_step`` was recorded are taken as they are."""
    best = (run_summary.get("provenance") or {}).get("best_step")
    return best is None or evaluation.get("step") in (None, best)
