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


# --------------------------------------------------------------------------- bench

# Each entry adds one `lmfix bench NAME` parser (with set_defaults(func=...)).
BENCH_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="speed and memory benchmarks on this machine")
    bench_sub = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for add in BENCH_COMMANDS:
        add(bench_sub)


# --------------------------------------------------------------------------- main

# Order is the order of `lmfix --help`.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_prepare, _add_bench]


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
