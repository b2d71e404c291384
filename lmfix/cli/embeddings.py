"""``lmfix build-embeddings`` and ``lmfix embeddings info|neighbors|export``."""

from __future__ import annotations

import argparse

from lmfix.cli.common import add_corpus_flags, command, corpus_from_args, positive_int


def _add_build_embeddings(sub: argparse._SubParsersAction) -> None:
    from lmfix.embeddings import METHODS

    p = command(
        sub, "build-embeddings", "build a fixed V x d embedding artifact aligned with a corpus vocabulary",
        "Methods: " + "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()) + ". Without -o the artifact "
        "goes to the embeddings cache that lmfix train reads (reused if already there).",
    )
    p.add_argument("method", help=", ".join(METHODS))
    p.add_argument("--corpus", default="wikitext-2", help="known corpus or directory (default wikitext-2)")
    add_corpus_flags(p)
    p.add_argument("--dim", type=int, default=512, help="columns d (default 512)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("-o", "--output", help="artifact file (.npz); default: the embeddings cache")
    p.add_argument("--force", action="store_true",
                   help="rebuild even if the cache holds this artifact; with -o, replace an existing file")
    _add_method_options(p)
    p.set_defaults(func=cmd_build_embeddings)


def _add_method_options(p: argparse.ArgumentParser) -> None:
    """One flag per method option, generated from the config dataclasses (shared names appear once)."""
    from dataclasses import fields

    from lmfix.embeddings import METHODS

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

    from lmfix.embeddings import METHODS

    names = {f.name for m in METHODS.values() for f in fields(m.config)}
    return {k: v for k, v in vars(args).items() if k in names}


def cmd_build_embeddings(args: argparse.Namespace) -> None:
    from lmfix.embeddings import build, get_method, get_or_build
    from lmfix.embeddings.artifact import check_writable

    get_method(args.method)  # before the corpus: a typo should not wait for it
    if args.output:
        check_writable(args.output, force=args.force)
    corpus = corpus_from_args(args, args.corpus)
    options = _method_options(args)
    if args.output:
        art = build(args.method, corpus, args.dim, args.seed, **options)
        art.save(args.output)
    else:
        art = get_or_build(args.method, corpus, args.dim, args.seed, force=args.force, **options)
    b = art.build
    built = f"built in {b['seconds']:.2f}s, peak memory {b['peak_rss_bytes'] / 2**30:.2f} GiB (process RSS)"
    how = f"loaded from cache ({built} on {b['built_at']})" if art.from_cache else built
    print(f"{art.method} embeddings for {art.corpus}: {art.shape[0]:,} x {art.shape[1]}, {how}")
    _print_artifact(art)
    print(f"  written to {art.path}")


def _print_artifact(art, sample: int = 2000) -> None:
    """Options, notes and quality diagnostics: what `build-embeddings` and `embeddings info` show."""
    from lmfix.embeddings.diagnostics import diagnose

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
    p = command(sub, "embeddings", "inspect and export embedding artifacts")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    info = command(actions, "info", "shape, method, options, row norms, coherence, distinct rows of an artifact")
    info.add_argument("file")
    info.add_argument("--sample", type=positive_int, default=2000, help="rows sampled for coherence")
    info.add_argument("--corpus", help="also check that the rows align with this corpus's vocabulary")
    add_corpus_flags(info)
    info.set_defaults(func=cmd_embeddings_info)
    near = command(actions, "neighbors", "nearest words by cosine")
    near.add_argument("file")
    near.add_argument("word")
    near.add_argument("-k", type=positive_int, default=10, help="how many (default 10)")
    near.set_defaults(func=cmd_embeddings_neighbors)
    export = command(actions, "export", "write a file gensim's KeyedVectors.load_word2vec_format reads")
    export.add_argument("file")
    export.add_argument("--format", choices=["word2vec"], default="word2vec", help="output format (word2vec)")
    export.add_argument("--binary", action="store_true", help="binary word2vec format (default: text)")
    export.add_argument("-o", "--output", help="output file (default: FILE with suffix .txt or .bin)")
    export.add_argument("--force", action="store_true", help="replace the output file if it exists")
    export.set_defaults(func=cmd_embeddings_export)


def cmd_embeddings_info(args: argparse.Namespace) -> None:
    from lmfix.embeddings import load_artifact

    corpus = corpus_from_args(args, args.corpus) if args.corpus else None
    art = load_artifact(args.file, vocab=corpus.vocab if corpus else None)
    b = art.build
    print(f"{args.file}: {art.method}, {art.shape[0]:,} x {art.shape[1]}, corpus {art.corpus}, built "
          f"{b.get('built_at')} in {b.get('seconds', 0):.2f}s")
    _print_artifact(art, args.sample)
    if corpus:
        print(f"  aligned    row for row with the vocabulary of {corpus.name} ({corpus.path})")


def cmd_embeddings_neighbors(args: argparse.Namespace) -> None:
    from lmfix.embeddings import load_artifact
    from lmfix.embeddings.diagnostics import neighbors

    for word, cos in neighbors(load_artifact(args.file), args.word, args.k):
        print(f"{cos:8.4f}  {word}")


def cmd_embeddings_export(args: argparse.Namespace) -> None:
    from pathlib import Path

    from lmfix.embeddings import load_artifact
    from lmfix.embeddings.artifact import check_writable
    from lmfix.embeddings.diagnostics import export_word2vec

    out = args.output or Path(args.file).with_suffix(".bin" if args.binary else ".txt")
    check_writable(out, inputs=(args.file,), force=args.force)
    art = load_artifact(args.file)
    print(f"wrote {export_word2vec(art, out, args.binary)} ({art.shape[0]:,} x {art.shape[1]}, "
          f"{'binary' if args.binary else 'text'} word2vec format)")


def register(sub: argparse._SubParsersAction) -> None:
    _add_build_embeddings(sub)
    _add_embeddings(sub)
