"""``lmfix prepare``: find, verify, tokenize and cache a corpus."""

from __future__ import annotations

import argparse

from lmfix.cli.common import add_corpus_flags, command, corpus_from_args


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "prepare", "find, verify, tokenize and cache a corpus")
    p.add_argument("corpus", help="known corpus (wikitext-2, wikitext-103, ptb) or a directory")
    add_corpus_flags(p)
    p.add_argument("--force", action="store_true", help="re-tokenize even if cached")
    p.add_argument(
        "--print-manifest",
        action="store_true",
        help="print the manifest [splits] block (checksums, counts) for the files found",
    )
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args: argparse.Namespace) -> None:
    import time

    from lmfix.data.corpus import manifest_toml
    from lmfix.data.sources import SPLITS, resolve

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


def register(sub: argparse._SubParsersAction) -> None:
    _add_prepare(sub)
