"""The ``lmfix`` command line: the only place that parses flags, prints and exits.

Each subcommand is a pair: ``_add_NAME(subparsers)`` declares its flags and
``cmd_NAME(args)`` calls the library and prints. Library failures arrive as
:class:`LmfixError` and leave as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable

from . import __version__
from .errors import LmfixError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


# --------------------------------------------------------------------------- prepare


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="find, verify, tokenize and cache a corpus")
    p.add_argument("corpus", help="known corpus (wikitext-2, wikitext-103, ptb) or a directory")
    add_corpus_flags(p)
    p.add_argument("--force", action="store_true", help="re-tokenize even if cached")
    p.add_argument(
        "--print-manifest",
        action="store_true",
        help="print the manifest [splits] block (checksums, counts) for the files found",
    )
    p.set_defaults(func=cmd_prepare)


def add_corpus_flags(p: argparse.ArgumentParser) -> None:
    """Flags that select a prepared corpus; shared by every command that reads one."""
    p.add_argument("--data-dir", help="directory holding train/valid/test text (overrides lookup)")
    p.add_argument("--tokenizer", default="word", help="word (default) or spm (sentencepiece)")
    p.add_argument("--vocab-size", type=_positive_int, help="sentencepiece vocabulary size")
    p.add_argument("--spm-type", default="unigram", help="sentencepiece model: unigram or bpe")
    p.add_argument("--no-verify", action="store_true", help="accept a checksum mismatch (warns)")


def corpus_from_args(args: argparse.Namespace, corpus: str, force: bool = False):
    """Load the prepared corpus the flags describe (preparing it if needed)."""
    from .corpus import prepare
    from .tokenizers import TokenizerConfig

    tok = TokenizerConfig(args.tokenizer, args.vocab_size, args.spm_type)
    return prepare(corpus, data_dir=args.data_dir, tokenizer=tok, verify=not args.no_verify, force=force)


def cmd_prepare(args: argparse.Namespace) -> None:
    import time

    from .corpus import SPLITS, manifest_toml, resolve

    if args.print_manifest:
        print(manifest_toml(resolve(args.corpus, args.data_dir)[1]))
        return
    t0 = time.perf_counter()
    corpus = corpus_from_args(args, args.corpus, force=args.force)
    seconds = time.perf_counter() - t0
    st = corpus.stats
    how = "loaded from cache" if st["from_cache"] else "prepared"
    print(f"{corpus.name} ({corpus.tokenizer.key}): {how} in {seconds:.2f}s")
    for split in SPLITS:
        print(f"  {split:<5} {st['tokens'][split]:>12,} tokens  {st['lines'][split]:>9,} lines  "
              f"{st['oov'][split]:>7,} OOV")
    print(f"  vocab {len(corpus.vocab):>12,} types  fingerprint {st['vocab_fingerprint'][:16]}")
    print(f"  written to {corpus.path}")


# --------------------------------------------------------------------------- build-embeddings, embeddings


def _add_build_embeddings(sub: argparse._SubParsersAction) -> None:
    from .embeddings import METHODS

    p = sub.add_parser(
        "build-embeddings", help="build a fixed V x d embedding artifact aligned with a corpus vocabulary",
        description="Methods: " + "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()) + ". Without -o "
        "the artifact goes to the embeddings cache that lmfix train reads (reused if already there).",
    )
    p.add_argument("method", help=", ".join(METHODS))
    p.add_argument("--corpus", default="wikitext-2", help="known corpus or directory (default wikitext-2)")
    add_corpus_flags(p)
    p.add_argument("--dim", type=int, default=512, help="columns d (default 512)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("-o", "--output", help="artifact file (.npz); default: the embeddings cache")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache holds this artifact")
    _add_method_options(p)
    p.set_defaults(func=cmd_build_embeddings)


def _add_method_options(p: argparse.ArgumentParser) -> None:
    """One flag per method option, generated from the config dataclasses (shared names appear once)."""
    from dataclasses import fields

    from .embeddings import METHODS

    owners: dict[str, list] = {}
    for method in METHODS.values():
        for f in fields(method.config):
            owners.setdefault(f.name, []).append((method.name, f))
    groups = {name: p.add_argument_group(f"{name} options") for name in METHODS}
    for name, owned in owners.items():
        method, f = owned[0]
        defaults = ", ".join(f"{m} {g.default}" for m, g in owned) if len(owned) > 1 else str(f.default)
        kwargs = {"dest": name, "default": argparse.SUPPRESS, "help": f"{f.metadata['help']} (default: {defaults})"}
        flag = "--" + name.replace("_", "-")
        if isinstance(f.default, bool):
            groups[method].add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            metavar = {int: "N", float: "X", str: "NAME"}[type(f.default)]
            groups[method].add_argument(flag, type=type(f.default), metavar=metavar, **kwargs)
    groups["word2vec"].add_argument("--cbow", dest="sg", action="store_false", default=argparse.SUPPRESS,
                                    help="CBOW instead of skip-gram (same as --no-sg)")


def _method_options(args: argparse.Namespace) -> dict:
    from dataclasses import fields

    from .embeddings import METHODS

    names = {f.name for m in METHODS.values() for f in fields(m.config)}
    return {k: v for k, v in vars(args).items() if k in names}


def cmd_build_embeddings(args: argparse.Namespace) -> None:
    from .embeddings import build, get_method, get_or_build
    from .embeddings.artifact import check_writable

    get_method(args.method)  # before the corpus: a typo should not wait for it
    if args.output:
        check_writable(args.output)
    corpus = corpus_from_args(args, args.corpus)
    options = _method_options(args)
    if args.output:
        art = build(args.method, corpus, args.dim, args.seed, **options)
        art.save(args.output)
    else:
        art = get_or_build(args.method, corpus, args.dim, args.seed, force=args.force, **options)
    b = art.build
    how = f"loaded from cache (built {b['built_at']})" if art.from_cache else "built"
    print(f"{art.method} embeddings for {art.corpus}: {art.shape[0]:,} x {art.shape[1]}, {how} in "
          f"{b['seconds']:.2f}s, peak memory {b['peak_rss_bytes'] / 2**30:.2f} GiB (process RSS)")
    _print_artifact(art)
    print(f"  written to {art.path}")


def _print_artifact(art, sample: int = 2000) -> None:
    """Options, notes and quality diagnostics: what `build-embeddings` and `embeddings info` show."""
    from .embeddings.diagnostics import diagnose

    d = diagnose(art, sample)
    options = " ".join(f"{k}={v}" for k, v in {"seed": art.seed, **art.options}.items())
    runtime = " ".join(f"{k}={v}" for k, v in art.build.get("runtime_options", {}).items())
    print(f"  options    {options}" + (f" (runtime: {runtime})" if runtime else ""))
    for note in art.build.get("notes", []):
        print(f"  note       {note}")
    print(f"  row norms  min {d.norm_min:.4f}  mean {d.norm_mean:.4f}  max {d.norm_max:.4f}")
    print(f"  coherence  mean |cos| {d.coherence_mean:.4f}  max {d.coherence_max:.4f} "
          f"({d.coherence_sample:,} sampled rows)")
    print(f"  distinct   {d.distinct_rows:,} of {art.shape[0]:,} rows")
    print(f"  id         {art.id}  vocabulary {art.vocab_fingerprint[:16]}  lmfix {art.build.get('lmfix_version')}")


def _add_embeddings(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embeddings", help="inspect and export embedding artifacts")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    info = actions.add_parser("info", help="shape, method, options, row norms, coherence, distinct rows")
    info.add_argument("file")
    info.add_argument("--sample", type=_positive_int, default=2000, help="rows sampled for coherence")
    info.add_argument("--corpus", help="also check that the rows align with this corpus's vocabulary")
    add_corpus_flags(info)
    info.set_defaults(func=cmd_embeddings_info)
    near = actions.add_parser("neighbors", help="nearest words by cosine")
    near.add_argument("file")
    near.add_argument("word")
    near.add_argument("-k", type=_positive_int, default=10, help="how many (default 10)")
    near.set_defaults(func=cmd_embeddings_neighbors)
    export = actions.add_parser("export", help="write a file gensim's KeyedVectors.load_word2vec_format reads")
    export.add_argument("file")
    export.add_argument("--format", choices=["word2vec"], default="word2vec", help="output format (word2vec)")
    export.add_argument("--binary", action="store_true", help="binary word2vec format (default: text)")
    export.add_argument("-o", "--output", help="output file (default: FILE with suffix .txt or .bin)")
    export.set_defaults(func=cmd_embeddings_export)


def cmd_embeddings_info(args: argparse.Namespace) -> None:
    from .embeddings import load_artifact

    corpus = corpus_from_args(args, args.corpus) if args.corpus else None
    art = load_artifact(args.file, vocab=corpus.vocab if corpus else None)
    b = art.build
    print(f"{args.file}: {art.method}, {art.shape[0]:,} x {art.shape[1]}, corpus {art.corpus}, built "
          f"{b.get('built_at')} in {b.get('seconds', 0):.2f}s")
    _print_artifact(art, args.sample)
    if corpus:
        print(f"  aligned    row for row with the vocabulary of {corpus.name} ({corpus.path})")


def cmd_embeddings_neighbors(args: argparse.Namespace) -> None:
    from .embeddings import load_artifact
    from .embeddings.diagnostics import neighbors

    for word, cos in neighbors(load_artifact(args.file), args.word, args.k):
        print(f"{cos:8.4f}  {word}")


def cmd_embeddings_export(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .embeddings import load_artifact
    from .embeddings.artifact import check_writable
    from .embeddings.diagnostics import export_word2vec

    out = args.output or Path(args.file).with_suffix(".bin" if args.binary else ".txt")
    check_writable(out)
    art = load_artifact(args.file)
    print(f"wrote {export_word2vec(art, out, args.binary)} ({art.shape[0]:,} x {art.shape[1]}, "
          f"{'binary' if args.binary else 'text'} word2vec format)")


# --------------------------------------------------------------------------- bench

# Each entry adds one `lmfix bench NAME` parser (with set_defaults(func=...)).
BENCH_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="speed and memory benchmarks on this machine")
    bench_sub = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for add in BENCH_COMMANDS:
        add(bench_sub)


def _add_bench_embeddings(bench_sub: argparse._SubParsersAction) -> None:
    from .embeddings.bench import TARGET_SECONDS

    p = bench_sub.add_parser(
        "embeddings", help="build time and peak memory of each embedding method",
        description="Each build runs in a fresh process; prints medians against the budgets "
        + ", ".join(f"{m} {s:g}s" for m, s in TARGET_SECONDS.items()) + " and 4 GiB peak memory.",
    )
    p.add_argument("--corpus", default="wikitext-2", help="known corpus or directory (default wikitext-2)")
    add_corpus_flags(p)
    p.add_argument("--methods", default=",".join(TARGET_SECONDS), help="comma-separated subset")
    p.add_argument("--dim", type=_positive_int, default=512, help="columns d (default 512)")
    p.add_argument("--repeat", type=_positive_int, default=3, help="builds per method (default 3)")
    p.add_argument("--compare-svd", action="store_true",
                   help="instead: time ARPACK and the randomized SVD on the PMI matrix, with accuracy")
    p.set_defaults(func=cmd_bench_embeddings)


def cmd_bench_embeddings(args: argparse.Namespace) -> None:
    import os

    from .embeddings import get_method
    from .embeddings.bench import TARGET_PEAK_BYTES, TARGET_SECONDS, bench, compare_svd

    corpus = corpus_from_args(args, args.corpus)
    if args.compare_svd:
        print(f"PMI truncated SVD, {len(corpus.vocab):,} x {len(corpus.vocab):,} PPMI, k={args.dim} "
              "(accuracy against ARPACK)")
        print(f"{'solver':<16} {'seconds':>8} {'sv err mean':>12} {'sv err max':>11} {'subspace':>9} "
              f"{'top-10 nbrs':>12}")
        for r in compare_svd(corpus, args.dim):
            name = r.solver if r.power_iters is None else f"{r.solver} q={r.power_iters}"
            print(f"{name:<16} {r.seconds:>8.2f} {r.sv_error_mean:>12.4f} {r.sv_error_max:>11.4f} "
                  f"{r.subspace:>9.4f} {r.neighbor_agreement:>12.3f}")
        return
    methods = [get_method(m.strip()).name for m in args.methods.split(",")]
    load_kwargs = {"data_dir": args.data_dir, "tokenizer": corpus.tokenizer, "verify": not args.no_verify}

    def progress(method, run) -> None:
        print(f"  {method}: {run.seconds:.2f}s ({run.cpu_seconds:.1f} CPU s), "
              f"peak {run.peak_rss_bytes / 2**30:.2f} GiB", file=sys.stderr)

    results = bench(methods, args.corpus, load_kwargs, args.dim, args.repeat, progress=progress)
    print(f"{corpus.name}: V={len(corpus.vocab):,}, d={args.dim}, {args.repeat} fresh-process builds per method, "
          f"{len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'method':<11} {'median s':>9} {'budget':>7} {'CPU s':>7} {'peak GiB':>9} {'build GiB':>10} "
          f"{'imports s':>10}  ok")
    for r in results:
        build_gib = max(run.build_rss_bytes for run in r.runs) / 2**30
        imports = max(run.import_seconds for run in r.runs)
        print(f"{r.method:<11} {r.median_seconds:>9.2f} {TARGET_SECONDS[r.method]:>7g} {r.median_cpu_seconds:>7.1f} "
              f"{r.max_peak_bytes / 2**30:>9.2f} {build_gib:>10.2f} {imports:>10.2f}  "
              f"{'yes' if r.within_target else 'NO'}")
    print(f"median s: wall clock; CPU s: median user+system time; peak GiB: whole process (max over runs; budget "
          f"{TARGET_PEAK_BYTES / 2**30:g}); build GiB: peak above the resident memory just before the build; "
          "imports: one-off library imports, not timed")


BENCH_COMMANDS.append(_add_bench_embeddings)


# --------------------------------------------------------------------------- train, evaluate, compare, generate

# Corpus settings come from add_corpus_flags; the other TrainConfig fields become --flags.
_CORPUS_FIELDS = ("data_dir", "tokenizer", "vocab_size", "spm_type", "verify")


def _count(text: str) -> int:
    """Token counts: 500000, 500k, 2M, 1.5e6."""
    scale = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(text[-1:].lower(), 1)
    try:
        value = float(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count like 500000, 500k or 2M") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return int(value)


def _duration(text: str) -> float:
    """Durations in seconds: 90, 90s, 10m, 1.5h."""
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:].lower())
    try:
        value = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 10m or 2h") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return value


def _add_train(sub: argparse._SubParsersAction) -> None:
    from dataclasses import fields

    from .train_config import HELP, TrainConfig

    p = sub.add_parser(
        "train", help="train an LSTM language model with a learned or fixed E",
        description="Train into RUNS_DIR/NAME (config.toml, checkpoints, metrics.jsonl). Under torchrun "
        "(torchrun --nproc-per-node N -m lmfix train ...) it trains with DistributedDataParallel.",
    )
    p.add_argument("--name", help="run name (default: the --embed variant)")
    p.add_argument("--runs-dir", default="runs", help="where runs live (default: runs)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run of the same name")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_corpus_flags(p)
    types = {"max_tokens": _count, "time_budget": _duration}
    for f in fields(TrainConfig):
        if f.name in _CORPUS_FIELDS:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{HELP[f.name]} (default: {'on' if f.default else 'off'})")
        else:
            default = "" if f.name == "lr" else f" (default: {f.default})"  # lr's help states its defaults
            p.add_argument(flag, type=types.get(f.name, type(f.default)), default=None, metavar=f.name.upper(),
                           help=HELP[f.name] + default)
    p.set_defaults(func=cmd_train)


def _train_overrides(args: argparse.Namespace) -> dict:
    """TrainConfig fields the user set on the command line (so a resume can tell what changed)."""
    from dataclasses import fields

    from .train_config import TrainConfig

    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name not in _CORPUS_FIELDS}
    given = {k: v for k, v in given.items() if v is not None}
    corpus = {"data_dir": args.data_dir or "", "tokenizer": args.tokenizer, "vocab_size": args.vocab_size or 0,
              "spm_type": args.spm_type, "verify": not args.no_verify}
    defaults = TrainConfig.__dataclass_fields__
    given.update({k: v for k, v in corpus.items() if v != defaults[k].default})
    return given


class _TrainProgress:
    """Draws training events: a header, a tqdm bar (tokens, tok/s, ETA, loss, ppl, lr), validation lines."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.bar = enabled, None

    def __call__(self, event) -> None:
        import math

        from tqdm import tqdm

        if event.kind == "start":
            for line in _run_header(event.info):
                print(line, file=sys.stderr)
            self.bar = tqdm(total=event.total_tokens or None, initial=event.tokens, unit="tok", unit_scale=True,
                            disable=not self.enabled, dynamic_ncols=True, smoothing=0.05, desc="train")
        elif event.kind == "step":
            self.bar.update(event.tokens - self.bar.n)
            self.bar.set_postfix_str(
                f"loss {event.loss:.3f} ppl {math.exp(min(event.loss, 700)):,.1f} lr {event.lr:.3g}", refresh=False)
        elif event.kind == "valid":
            self.bar.write(f"step {event.step:,} | {event.tokens:,} tokens | valid ppl {event.valid_ppl:,.2f} "
                           f"| lr {event.lr:.3g}", file=sys.stderr)
        elif event.kind == "interrupted":
            self.close()
            resume = f"lmfix train --resume {event.info['run_dir']}"
            if event.info["world_size"] > 1:
                resume = f"torchrun --nproc-per-node {event.info['world_size']} -m {resume}"
            print(f"checkpoint saved at step {event.step:,}; continue with: {resume}", file=sys.stderr)
        elif event.kind == "end":
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _run_header(info: dict) -> list[str]:
    c = info["counts"]
    emb = info["embedding"]
    source = f", fixed E from artifact {emb['id']} ({emb['method']})" if emb else ""
    lines = [
        f"device {info['device']}, {info['world_size']} process(es), vocabulary {info['vocab_size']:,}, "
        f"{info['tokens_per_epoch']:,} tokens/epoch{source}"
        + (" (resumed)" if info["resumed"] else ""),
        f"parameters: trainable {c.trainable:,} | fixed {c.fixed:,} | generated {c.generated:,} | "
        f"total {c.total:,}",
    ]
    if c.trainable < c.total:
        lines.append(f"  {1 - c.trainable / c.total:.1%} of the model's {c.total:,} parameters are not trained "
                     f"({c.stored:,} stored)")
    lines.append(f"gradients per step: {info['grad_bytes_per_step'] / 2**10:,.1f} KiB")
    return lines


def cmd_train(args: argparse.Namespace) -> None:
    import os
    from pathlib import Path

    from .train import train
    from .train_config import TrainConfig, resume_config

    overrides = _train_overrides(args)
    if args.resume:
        run_dir = Path(args.resume)
        config = resume_config(run_dir, overrides)
    else:
        config = TrainConfig.from_dict(overrides)
        run_dir = Path(args.runs_dir) / (args.name or config.embed)
    progress = _TrainProgress(enabled=not args.no_progress)
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


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="perplexity of trained runs on valid or test (writes eval.json)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--split", default="test", help="valid or test (default: test)")
    p.add_argument("--batch-size", type=_positive_int,
                   help="default 1 for test (as AWD-LSTM: each token sees its whole history), the run's "
                   "--eval-batch-size for valid")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_run

    for run in args.runs:
        r = evaluate_run(run, args.split, args.batch_size, args.device)
        print(f"{run}: {r['split']} ppl {r['ppl']:.2f} (loss {r['loss']:.4f}, {r['tokens']:,} tokens, batch size "
              f"{r['batch_size']}, bptt {r['bptt']}, {r['tokens_per_second']:,.0f} tok/s, step {r['step']:,})")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="markdown table and plots comparing runs with the learned baseline")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="where compare.md and the PNGs go (default: RUNS_DIR/compare)")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .report import compare_runs

    out = Path(args.out) if args.out else Path(args.runs[0]).parent / "compare"
    table, plots = compare_runs([Path(r) for r in args.runs], out)
    print(table)
    print(f"written: {out / 'compare.md'}" + "".join(f", {p}" for p in plots))


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="sample text from a trained run")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--words", type=_positive_int, default=100, help="tokens to sample (default: 100)")
    p.add_argument("--temperature", type=float, default=1.0, help="below 1: safer, above 1: wilder (default: 1.0)")
    p.add_argument("--seed", type=int, help="random seed (default: a fresh one)")
    p.add_argument("--prompt", default="", help="text to continue, in the corpus's tokens")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> None:
    from .generate import generate

    print(generate(args.run, args.words, args.temperature, args.seed, args.prompt, args.device))


def _add_bench_train(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser(
        "train", help="training tokens/s: lmfix models vs plain PyTorch",
        description="Defaults: WikiText-2 vocabulary, 2-layer 512/512 LSTM, batch 20, bptt 35; variants plain, "
        "learned, orthogonal, hadamard timed round-robin (5 rounds x 4 steps after 2 warm-up steps).",
    )
    p.add_argument("--corpus", help="corpus whose vocabulary and text are used")
    for name in ("emsize", "nhid", "nlayers", "batch_size", "bptt", "rounds", "steps", "warmup"):
        p.add_argument("--" + name.replace("_", "-"), type=_positive_int)
    p.add_argument("--variants", help="comma-separated subset of plain,learned,orthogonal,hadamard")
    p.add_argument("--gemm", help="GEMM backend of lmfix's dense heads: auto, onednn or torch (default $LMFIX_GEMM "
                   "or auto); plain always uses F.linear")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_bench_train)


def cmd_bench_train(args: argparse.Namespace) -> None:
    import json

    from . import atomic
    from .bench_train import BenchTrainConfig, bench_train

    names = ("corpus", "emsize", "nhid", "nlayers", "batch_size", "bptt", "rounds", "steps", "warmup", "gemm")
    given = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.variants:
        given["variants"] = tuple(args.variants.split(","))
    cfg = BenchTrainConfig(**given)
    result = bench_train(cfg, progress=lambda line: print(line, file=sys.stderr))
    print(f"{cfg.nlayers}-layer {cfg.emsize}/{cfg.nhid} LSTM, batch {cfg.batch_size}, bptt {cfg.bptt}, "
          f"V={result['vocab_size']:,} ({result['corpus']}), {result['threads']} threads, torch {result['torch']}, "
          f"lmfix GEMM {result['gemm']}")
    print(f"{'variant':<12} {'median tok/s':>13} {'median ms/step':>15} {'min':>8} {'max':>8} {'steps':>6}")
    for name, r in result["variants"].items():
        print(f"{name:<12} {r['median_tok_s']:>13,.0f} {r['median_step_ms']:>15,.1f} {r['min_step_ms']:>8,.1f} "
              f"{r['max_step_ms']:>8,.1f} {r['steps']:>6}")
    for name, ratio in result["ratios"].items():
        print(f"{name}: {ratio:.2f}x")
    if args.json:
        atomic.write_text(args.json, json.dumps(result, indent=2))


BENCH_COMMANDS.append(_add_bench_train)


def _add_bench_head(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser(
        "head", help="output layer forward+backward: dense fixed heads vs the Hadamard heads (time, memory)",
        description="Medians of several repeats, speed-up and peak extra memory relative to the dense head "
        "measured in the same run. Run it on an otherwise idle machine.",
    )
    p.add_argument("--vocab", type=_positive_int, default=33278, help="V (default: WikiText-2's 33,278)")
    p.add_argument("--dim", type=_positive_int, default=512, help="d (default: 512)")
    p.add_argument("--tokens", type=_positive_int, default=700, help="tokens per step (default: 700 = 20 x 35)")
    p.add_argument("--repeats", type=_positive_int, default=5, help="timed repeats per head (default: 5)")
    p.add_argument("--layouts", default="dense,dense-fused,distinct,truncated",
                   help="comma-separated heads; dense: F.linear + F.cross_entropy, dense-fused: lmfix's fused loss")
    p.add_argument("--max-matrix-gb", type=float, default=4.0, help="skip the dense head above this matrix size")
    p.set_defaults(func=cmd_bench_head)


def cmd_bench_head(args: argparse.Namespace) -> None:
    from .ops.bench_head import format_head_table, run_head_bench

    try:
        results = run_head_bench(args.vocab, args.dim, args.tokens, args.repeats, args.layouts.split(","),
                                 max_matrix_gb=args.max_matrix_gb)
    except ValueError as exc:  # unknown head names, sizes a layout cannot serve
        raise LmfixError(str(exc)) from exc
    print(format_head_table(results))


BENCH_COMMANDS.append(_add_bench_head)


# --------------------------------------------------------------------------- run, demo


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run a recipe: corpus, embeddings, every variant's training and evaluation, report",
        description="Finished variants are skipped, interrupted ones resumed; the report (report.md, "
        "compare.md, plots) goes to the recipe's output directory.",
    )
    p.add_argument("recipe", help="a recipe directory (recipes/wt2-cpu) or one variant file in it")
    p.add_argument("--only", nargs="+", metavar="VARIANT", help="run only these variants")
    p.add_argument("--output", help="output directory (default: the recipe's, e.g. runs/wt2-cpu)")
    p.add_argument("--max-tokens", type=_count, help="override every variant's training-token budget")
    p.add_argument("--device", help="override the device (auto, cpu, cuda)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)


def _run_recipe(recipe, overrides: dict, output, progress: bool) -> None:
    """Run ``recipe`` printing its steps, then the table and where the report is."""
    from .recipe import run_recipe

    bar = _TrainProgress(enabled=progress)

    def on_event(event) -> None:
        print(f"[{recipe.name}/{event.variant}] {event.kind} {event.detail}", file=sys.stderr)

    try:
        result = run_recipe(recipe, output=output, overrides=overrides, on_event=on_event, train_callback=bar)
    finally:
        bar.close()
    print(result.table)
    print(f"report: {result.report}")
    for plot in result.plots:
        print(f"plot:   {plot}")


def cmd_run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .recipe import load_recipe

    recipe = load_recipe(args.recipe).select(args.only)
    overrides = {k: v for k, v in (("max_tokens", args.max_tokens), ("device", args.device)) if v is not None}
    _run_recipe(recipe, overrides, Path(args.output) if args.output else None, not args.no_progress)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="a few minutes' comparison of learned vs fixed embeddings (make demo)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> None:
    from .recipe import demo_recipe

    recipe, overrides, output, missing = demo_recipe()
    if missing:
        print(f"lmfix demo: WikiText-2 not available ({missing})", file=sys.stderr)
        print("lmfix demo: running the smoke recipe on gensim's Lee corpus instead", file=sys.stderr)
    else:
        names = ", ".join(v.name for v in recipe.variants)
        print(f"lmfix demo: {recipe.name} recipe, variants {names}, {overrides['max_tokens']:,} training "
              f"tokens each (the full comparison: lmfix run recipes/wt2-cpu)", file=sys.stderr)
    _run_recipe(recipe, overrides, output, not args.no_progress)


# --------------------------------------------------------------------------- main

# Order is the order of `lmfix --help`.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_prepare, _add_build_embeddings, _add_embeddings, _add_train, _add_evaluate, _add_compare, _add_generate,
    _add_run, _add_demo, _add_bench,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmfix", description="Language models with fixed embedding/classifier matrices."
    )
    parser.add_argument("--version", action="version", version=f"lmfix {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"lmfix: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _warning_line
    try:
        args.func(args)
    except LmfixError as exc:
        print(f"lmfix: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmfix: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
