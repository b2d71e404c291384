"""What a run needs in memory, estimated before anything is allocated, and the refusal when it cannot fit.

A size that cannot fit (``--emsize 100000``, ``--nlayers 100000``) would otherwise swap, be killed, or fail
with an allocator's traceback minutes later. The estimate is a lower bound: the weights (the body's counted
exactly on torch's meta device, which allocates nothing), their gradients and optimizer state, the loss's
chunk buffers, and one float per token, unit and layer of activations.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from lmfix.embeddings.base import available_memory
from lmfix.model.config import ModelConfig
from lmfix.model.registry import LEARNED, make_body
from lmfix.ops.bits import next_pow2
from lmfix.ops.dense_loss import chunk_rows
from lmfix.training.config import ConfigError, TrainConfig
from lmfix.training.distributed import resolve_device

FLOAT = 4  # bytes: weights, gradients, optimizer state and the loss's buffers are float32
# Optimizer state per trained number: SGD none, ASGD its average (after the switch), Adam two moments.
OPTIMIZER_STATE = {"sgd": 0, "asgd": 1, "adam": 2, "adamw": 2}


def body_parameters(config: ModelConfig) -> int:
    """The body's parameter count, from bodies of at most 3 layers built on the meta device: the layers
    between the first and the last are alike, so the count grows linearly beyond 3."""

    def count(layers: int) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in make_body(replace(config, nlayers=layers)).parameters())

    if config.nlayers <= 3:
        return count(config.nlayers)
    two, three = count(2), count(3)
    return two + (config.nlayers - 2) * (three - two)


def head_elements(config: TrainConfig, vocab_size: int) -> tuple[int, int]:
    """(trained, frozen) numbers of the head: a learned E (two untied), or a frozen one (none for a generated
    Hadamard E) with what a nearly-fixed head trains of it (``--head``), and the bias."""
    rows, d = vocab_size * config.emsize, config.emsize
    if config.embed in LEARNED:
        return (2 if config.embed == "learned-untied" else 1) * rows + vocab_size, 0
    trained = {"context-scale": d, "scales": vocab_size + d, "top-k": config.head_k * d,
               "low-rank": (vocab_size + d) * config.head_rank, "unfreeze": rows, "frozen-input": rows}
    return vocab_size + trained.get(config.head, 0), 0 if config.embed == "hadamard" else rows


def model_memory(config: TrainConfig, vocab_size: int, window: int, training: bool = True) -> dict[str, int]:
    """Bytes the model needs at least, by part; ``window``: tokens per sequence of a step."""
    trained, frozen = head_elements(config, vocab_size)
    body = body_parameters(config.model_config())
    parts = {"weights": FLOAT * (body + trained + frozen)}
    if not training:
        return parts
    trained += body
    tokens = config.batch_size * window
    logits = (tokens * next_pow2(config.emsize) if config.embed == "hadamard"
              else chunk_rows(tokens, vocab_size) * vocab_size)
    return {**parts, "gradients": FLOAT * trained,
            "optimizer state": FLOAT * OPTIMIZER_STATE[config.optimizer] * trained,
            "loss buffers": 2 * FLOAT * logits,
            "activations": FLOAT * tokens * config.nlayers * max(config.emsize, config.nhid)}


def require_model_memory(config: TrainConfig, vocab_size: int, train_tokens: int, training: bool = True) -> None:
    """Refuse, with the estimate, a model that cannot fit where it runs: the GPU's free memory when it trains on
    one, else the host's (where every model is built first)."""
    window = max(1, min(config.bptt, train_tokens // config.batch_size - 1))
    parts = model_memory(config, vocab_size, window, training)
    device = resolve_device(config.device) if training else torch.device("cpu")
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_memory()
    needed = sum(parts.values())
    if free is None or needed <= free:
        return
    gib = 2**30
    shown = ", ".join(f"{name} {size / gib:,.1f}" for name, size in parts.items() if size >= gib // 10)
    raise ConfigError(f"this model needs at least {needed / gib:,.1f} GiB ({shown}) but {free / gib:,.1f} GiB is "
                      f"free on {device.type}: lower --emsize, --nhid, --nlayers, --batch-size or --bptt")
