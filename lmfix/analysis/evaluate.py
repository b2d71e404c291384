"""Perplexity of a trained run on valid or test, written to ``runs/NAME/eval.json``.

Test perplexity uses batch size 1 by default, as AWD-LSTM does: every token
is scored with the full history of the text before it (with larger batches the
split is cut into independent streams whose first tokens see no context).
A Transformer sees only its BPTT window: windows follow each other by default, and
``stride`` slides them (each token still scored once, with more context).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from lmfix.data.batching import batchify_split
from lmfix.data.corpus import SPLITS, Corpus
from lmfix.model.language_model import LanguageModel
from lmfix.model.registry import RECURRENT
from lmfix.ops.precision import DTYPES, resolve_precision
from lmfix.training import checkpoint
from lmfix.training.config import ConfigError, TrainConfig
from lmfix.training.distributed import resolve_device
from lmfix.training.rundir import claimed, settled
from lmfix.training.setup import build_model, check_vocabulary, load_corpus
from lmfix.training.trainer import corpus_loss


def load_trained(
    run_dir: Path, device: str = "auto", precision: str | None = None
) -> tuple[LanguageModel, TrainConfig, Corpus, dict]:
    """The best weights of a run, on ``device`` in ``precision`` (default: the run's own), with its config,
    corpus and checkpoint metadata."""
    run_dir = Path(run_dir)
    config = TrainConfig.load(run_dir)
    best = checkpoint.load(run_dir / checkpoint.BEST)
    corpus = load_corpus(config)
    # best.pt names its vocabulary since this check exists; older runs have it in checkpoint.pt
    trained_on = best.get("vocab_fingerprint") or _last_fingerprint(run_dir)
    if trained_on is not None:
        check_vocabulary(run_dir, trained_on, corpus)
    model, _ = build_model(config, corpus, expected=best.get("embedding"), training=False)
    checkpoint.load_weights(model, best["model"], run_dir / checkpoint.BEST)
    where = resolve_device(device)
    model.to(where).set_precision(DTYPES[resolve_precision(precision or config.precision, where)])
    return model.eval(), config, corpus, best


def _last_fingerprint(run_dir: Path) -> str | None:
    last = run_dir / checkpoint.LAST
    return checkpoint.load(last).get("vocab_fingerprint") if last.is_file() else None


def evaluate_run(
    run_dir: Path, split: str = "test", batch_size: int | None = None, device: str = "auto",
    precision: str | None = None, stride: int | None = None,
) -> dict:
    """Perplexity of the best checkpoint on ``split``; merged into ``eval.json`` and returned.

    ``batch_size`` defaults to 1 for test (AWD-LSTM's choice) and the run's
    ``eval_batch_size`` for valid. ``stride`` (a body without state only) slides the
    windows by that many tokens instead of ``bptt``.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    config = TrainConfig.load(run_dir)
    if stride is not None and config.model in RECURRENT:
        raise ConfigError(f"--stride is for a transformer run; {run_dir} is {config.model}, whose state carries "
                          "each token's whole history across windows: drop --stride")
    if stride is not None and not 1 <= stride <= config.bptt:
        raise ConfigError(f"--stride must be between 1 and the run's bptt ({config.bptt}), got {stride}")
    with claimed(settled(Path(run_dir))):  # no training run writes best.pt while it is read, nor eval.json
        return _evaluate(run_dir, split, batch_size, device, precision, stride)


def _evaluate(run_dir: Path, split: str, batch_size: int | None, device: str, precision: str | None,
              stride: int | None) -> dict:
    model, config, corpus, best = load_trained(run_dir, device, precision)
    if batch_size is None:
        batch_size = 1 if split == "test" else config.eval_batch_size
    data = batchify_split(corpus.split(split), batch_size, split).to(model.head.bias.device)
    start = time.perf_counter()
    loss, tokens = corpus_loss(model, data, config.bptt, stride)
    seconds = time.perf_counter() - start
    result = {
        "split": split,
        "loss": loss,
        "ppl": math.exp(loss),
        "tokens": tokens,
        "batch_size": batch_size,
        "bptt": config.bptt,
        "stride": stride or config.bptt,
        "tokens_per_second": tokens / seconds,
        "seconds": seconds,
        "checkpoint": checkpoint.BEST,
        "step": best["step"],
        "device": str(data.device),
        "precision": "fp32" if model.autocast is None else "bf16",
    }
    path = Path(run_dir) / checkpoint.EVAL
    results = checkpoint.read_json(path) or {}
    results[split] = result
    checkpoint.write_json(path, results)
    return result
