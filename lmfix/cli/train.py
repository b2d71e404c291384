"""``lmfix train``: every ``TrainConfig`` field becomes a flag; under torchrun, DDP."""

from __future__ import annotations

import argparse

from lmfix.cli.common import add_corpus_flags, command, count, duration, positive_float
from lmfix.cli.progress import TrainProgress

# Corpus settings come from add_corpus_flags; the other TrainConfig fields become --flags.
_CORPUS_FIELDS = ("data_dir", "tokenizer", "vocab_size", "spm_type", "verify")


def _add_train(sub: argparse._SubParsersAction) -> None:
    from dataclasses import fields

    from lmfix.training.config import HELP, TrainConfig

    p = command(
        sub, "train", "train a language model (LSTM, GRU or Transformer) with a learned or fixed E",
        "Train into RUNS_DIR/NAME (config.toml, checkpoints, metrics.jsonl). Under torchrun "
        "(torchrun --nproc-per-node N -m lmfix train ...) it trains with DistributedDataParallel.",
    )
    p.add_argument("--name", help="run name (default: the --embed variant)")
    p.add_argument("--runs-dir", default="runs", help="where runs live (default: runs)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run of the same name")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_corpus_flags(p)
    types = {"max_tokens": count, "time_budget": duration, "lr": positive_float}
    for f in fields(TrainConfig):
        if f.name in _CORPUS_FIELDS:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{HELP[f.name]} (default: {'on' if f.default else 'off'})")
        else:
            # these fields' help states their defaults (their unset value resolves to one)
            default = "" if f.name in ("lr", "nhead", "positions") else f" (default: {f.default})"
            p.add_argument(flag, type=types.get(f.name, type(f.default)), default=None, metavar=f.name.upper(),
                           help=HELP[f.name] + default)
    p.set_defaults(func=cmd_train)


def _train_overrides(args: argparse.Namespace) -> dict:
    """TrainConfig fields the user set on the command line (so a resume can tell what changed)."""
    from dataclasses import fields

    from lmfix.data.tokenizers import TokenizerConfig
    from lmfix.training.config import TrainConfig

    TokenizerConfig(args.tokenizer, args.vocab_size, args.spm_type)  # --vocab-size without --tokenizer spm: an error
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name not in _CORPUS_FIELDS}
    given = {k: v for k, v in given.items() if v is not None}
    corpus = {"data_dir": args.data_dir or "", "tokenizer": args.tokenizer, "vocab_size": args.vocab_size or 0,
              "spm_type": args.spm_type, "verify": not args.no_verify}
    defaults = TrainConfig.__dataclass_fields__
    given.update({k: v for k, v in corpus.items() if v != defaults[k].default})
    return given


def cmd_train(args: argparse.Namespace) -> None:
    import os
    from pathlib import Path

    from lmfix.training.config import ConfigError, TrainConfig, resume_config
    from lmfix.training.rundir import check_run_name, settled
    from lmfix.training.trainer import train

    overrides = _train_overrides(args)
    if args.resume:
        if args.name is not None:  # else the run named by --resume goes on, and --name is silently ignored
            raise ConfigError(f"--name picks a new run's folder, and --resume {args.resume} continues that run where "
                              "it is: drop --name (to start a copy, copy the folder, then resume the copy)")
        run_dir = Path(args.resume)
        config = resume_config(settled(run_dir), overrides)
    else:
        config = TrainConfig.from_dict(overrides)
        run_dir = check_run_name(config.embed if args.name is None else args.name, Path(args.runs_dir))
    progress = TrainProgress(enabled=not args.no_progress)
    try:
        result = train(config, run_dir, resume=bool(args.resume), overwrite=args.overwrite, callback=progress)
    finally:
        progress.close()
    if os.environ.get("RANK", "0") != "0":
        return
    print(f"{run_dir}: {result.steps:,} steps, {result.tokens:,} tokens, {result.epochs} epochs "
          f"(stopped: {result.stop_reason}); best valid ppl {result.best_valid_ppl:,.2f}; "
          f"{result.train_tokens_per_second:,.0f} train tok/s; wall {result.wall_seconds:,.0f}s")
    if result.sync_bytes_per_step is not None:
        print(f"gradient all-reduce: {result.sync_bytes_per_step / 2**20:,.2f} MiB/step over "
              f"{result.world_size} processes (frozen matrices are not synchronized)")
    print(f"next: lmfix evaluate {run_dir}")


def register(sub: argparse._SubParsersAction) -> None:
    _add_train(sub)
