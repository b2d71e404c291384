"""``lmfix bench head|train|embeddings|gpu``: every benchmark behind one command."""

from __future__ import annotations

import argparse
import sys

from lmfix.cli.common import add_corpus_flags, command, corpus_from_args, positive_int
from lmfix.errors import LmfixError, first_line


def _add_bench_head(bench_sub: argparse._SubParsersAction) -> None:
    p = command(
        bench_sub, "head", "output layer forward+backward: dense vs Hadamard heads (time, memory)",
        "Medians of several repeats, speed-up and peak extra memory relative to the dense head "
        "measured in the same run. Run it on an otherwise idle machine.",
    )
    p.add_argument("--vocab", type=positive_int, default=33278, help="V (default: WikiText-2's 33,278)")
    p.add_argument("--dim", type=positive_int, default=512, help="d (default: 512)")
    p.add_argument("--tokens", type=positive_int, default=700, help="tokens per step (default: 700 = 20 x 35)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed repeats per head (default: 5)")
    p.add_argument("--layouts",
                   help="comma-separated rows; dense: F.linear + F.cross_entropy, dense-fused: lmfix's fused loss, "
                   "distinct, truncated: the Hadamard heads; fwht, copy: the N x D transform and its memory floor; "
                   "liger, cce, fwht-dao: peers, where installed (default: the four heads on CPU, every row on CUDA)")
    p.add_argument("--max-matrix-gb", type=float, default=4.0, help="skip the dense head above this matrix size")
    p.add_argument("--precision", default="fp32,bf16",
                   help="comma-separated precisions (fp32, bf16, auto), each head timed in each (default: fp32,bf16)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: CUDA events, CUDA peak memory")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.set_defaults(func=cmd_bench_head)


def cmd_bench_head(args: argparse.Namespace) -> None:
    import json

    from lmfix import atomic
    from lmfix.bench.head import HEADS, ROWS, format_head_table, run_head_bench

    layouts = args.layouts.split(",") if args.layouts else (HEADS if args.device == "cpu" else ROWS)
    try:
        results = run_head_bench(args.vocab, args.dim, args.tokens, args.repeats, layouts,
                                 max_matrix_gb=args.max_matrix_gb, precisions=args.precision.split(","),
                                 device=args.device)
    except (ValueError, RuntimeError) as exc:  # unknown rows or device, sizes a layout cannot serve
        raise LmfixError(first_line(exc, 500)) from exc
    print(format_head_table(results))
    if args.json:
        atomic.write_text(args.json, json.dumps(results, indent=2))
    failed = [row["head"] for row in results if "failed" in row]
    if failed:
        raise LmfixError(f"{len(failed)} row(s) failed ({', '.join(failed)}); the table says why")


def _add_bench_train(bench_sub: argparse._SubParsersAction) -> None:
    p = command(
        bench_sub, "train", "training tokens/s: lmfix models vs plain PyTorch",
        "Defaults: WikiText-2 vocabulary, 2-layer 512/512 LSTM, batch 20, bptt 35; variants plain, "
        "learned, orthogonal, hadamard timed round-robin (5 rounds x 4 steps after 2 warm-up steps).",
    )
    p.add_argument("--corpus", help="corpus whose vocabulary and text are used")
    p.add_argument("--model", help="the body of every variant: lstm (default), gru or transformer")
    for name in ("emsize", "nhid", "nlayers", "batch_size", "bptt", "rounds", "steps", "warmup"):
        p.add_argument("--" + name.replace("_", "-"), type=positive_int)
    p.add_argument("--variants", help="comma-separated subset of plain,learned,orthogonal,hadamard")
    p.add_argument("--precision", default="fp32",
                   help="comma-separated precisions to time each variant in: fp32, bf16, auto (default: fp32)")
    p.add_argument("--gemm", help="GEMM backend of lmfix's dense heads: auto, onednn or torch (default $LMFIX_GEMM "
                   "or auto); plain always uses F.linear")
    p.add_argument("--device", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--profile", type=positive_int, metavar="STEPS",
                   help="then profile STEPS steps of each variant (torch.profiler): the ops that take the time")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_bench_train)


def cmd_bench_train(args: argparse.Namespace) -> None:
    import json

    from lmfix import atomic
    from lmfix.bench.train import BenchTrainConfig, bench_train

    names = ("corpus", "model", "emsize", "nhid", "nlayers", "batch_size", "bptt", "rounds", "steps", "warmup", "gemm",
             "device", "profile")
    given = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.variants:
        given["variants"] = tuple(args.variants.split(","))
    cfg = BenchTrainConfig(**given, precisions=tuple(args.precision.split(",")))
    result = bench_train(cfg, progress=lambda line: print(line, file=sys.stderr))
    print(f"{cfg.nlayers}-layer {cfg.emsize}/{cfg.nhid} {cfg.model}, batch {cfg.batch_size}, bptt {cfg.bptt}, "
          f"V={result['vocab_size']:,} ({result['corpus']}), {result['threads']} threads, torch {result['torch']}, "
          f"lmfix GEMM {result['gemm']}, {result['device']}")
    print(f"{'variant':<16} {'median tok/s':>13} {'median ms/step':>15} {'min':>8} {'max':>8} {'steps':>6}")
    for name, r in result["variants"].items():
        print(f"{name:<16} {r['median_tok_s']:>13,.0f} {r['median_step_ms']:>15,.1f} {r['min_step_ms']:>8,.1f} "
              f"{r['max_step_ms']:>8,.1f} {r['steps']:>6}")
    for name, ratio in result["ratios"].items():
        print(f"{name}: {ratio:.2f}x")
    for name, prof in result["profile"].items():
        print(f"\nprofile of {name} ({prof['steps']} steps, torch.profiler; self time, ms/step; "
              f"all ops {prof['total_ms']:,.1f}):")
        for op, ms in prof["ops"][:12]:
            print(f"  {ms:>8,.1f}  {100 * ms / prof['total_ms']:>4.0f}%  {op}")
    if args.json:
        atomic.write_text(args.json, json.dumps(result, indent=2))


def _add_bench_recipe(bench_sub: argparse._SubParsersAction) -> None:
    p = command(
        bench_sub, "recipe", "step time of each variant of a recipe, with its trained and stored parameters",
        "Each variant's first run exactly as lmfix run trains it (its head, width, dropout, precision), timed "
        "round-robin in one process (3 rounds x 4 steps after 2 warm-up steps by default): the step times of a "
        "frontier measured on one machine, at one time.",
    )
    p.add_argument("recipe", help="a recipe directory (recipes/wt2-cpu-long-width)")
    p.add_argument("--only", nargs="+", metavar="VARIANT", help="time only these variants")
    for name in ("rounds", "steps", "warmup"):
        p.add_argument("--" + name, type=positive_int)
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--save", action="store_true",
                   help="keep the rates as the recipe's clock (RECIPE/results/step_times.json, commit it): its "
                        "report then times every run at them, not at the wall-clock of wherever it trained")
    p.set_defaults(func=cmd_bench_recipe)


def cmd_bench_recipe(args: argparse.Namespace) -> None:
    import json

    from lmfix import atomic
    from lmfix.analysis.frontier import STEP_TIMES, Clock
    from lmfix.bench.train import bench_configs, unfrozen_name
    from lmfix.recipes.runner import load_recipe, variant_configs

    recipe = load_recipe(args.recipe)
    if args.save and args.only:
        raise LmfixError("--save keeps one clock for the whole recipe: every variant timed side by side in one "
                         "process; drop --only")
    recipe = recipe.select(args.only)
    configs = variant_configs(recipe)
    timing = {k: getattr(args, k) for k in ("rounds", "steps", "warmup") if getattr(args, k) is not None}
    result = bench_configs(configs, **timing, progress=lambda line: print(line, file=sys.stderr))
    print(f"{recipe.name}: {result['threads']} threads, torch {result['torch']}, {result['device']}, "
          f"medians of {result['rounds']} x {result['steps']} steps")
    rows = [*result["variants"].items(), *((unfrozen_name(name), r) for name, r in result["after_unfreeze"].items())]
    width = max(len("variant"), *(len(name) for name, _ in rows))
    print(f"{'variant':<{width}} {'trained':>11} {'stored':>11} {'median ms/step':>15} {'tok/s':>8}")
    for name, r in rows:
        print(f"{name:<{width}} {r['params']['trainable']:>11,} {r['params']['stored']:>11,} "
              f"{r['median_step_ms']:>15,.1f} {r['median_tok_s']:>8,.0f}")
    if args.json:
        atomic.write_text(args.json, json.dumps(result, indent=2) + "\n")
    if args.save:
        path = recipe.results / STEP_TIMES
        Clock.from_bench(result).save(path)
        print(f"written: {path} (lmfix run {args.recipe} rewrites the report with it)")


def _add_bench_embeddings(bench_sub: argparse._SubParsersAction) -> None:
    from lmfix.bench.embeddings import TARGET_SECONDS

    p = command(
        bench_sub, "embeddings", "build time and peak memory of each embedding method",
        "Each build runs in a fresh process; prints medians against the budgets "
        + ", ".join(f"{m} {s:g}s" for m, s in TARGET_SECONDS.items()) + " and 4 GiB peak memory.",
    )
    p.add_argument("--corpus", default="wikitext-2", help="known corpus or directory (default wikitext-2)")
    add_corpus_flags(p)
    p.add_argument("--methods", default=",".join(TARGET_SECONDS), help="comma-separated subset")
    p.add_argument("--dim", type=positive_int, default=512, help="columns d (default 512)")
    p.add_argument("--repeat", type=positive_int, default=3, help="builds per method (default 3)")
    p.add_argument("--compare-svd", action="store_true",
                   help="instead: time ARPACK and the randomized SVD on the PMI matrix, with accuracy")
    p.set_defaults(func=cmd_bench_embeddings)


def cmd_bench_embeddings(args: argparse.Namespace) -> None:
    import os

    from lmfix.bench.embeddings import TARGET_PEAK_BYTES, TARGET_SECONDS, bench, compare_svd
    from lmfix.embeddings import get_method

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


def _add_bench_gpu(bench_sub: argparse._SubParsersAction) -> None:
    p = command(
        bench_sub, "gpu", "the GPU session in one command: environment, CUDA tests, benchmarks",
        "Each step runs in its own time-limited process and the next one runs after a failure; "
        "everything lands in --out with a summary.md. --device cpu --quick rehearses every step on tiny sizes.",
    )
    p.add_argument("--out", required=True, help="directory for the results (created)")
    p.add_argument("--device", default="cuda", help="cuda[:N] (default) or cpu (the rehearsal)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that every step runs, measures nothing")
    p.add_argument("--corpus", default="wikitext-2", help="corpus of the training steps (default wikitext-2)")
    p.add_argument("--deadline", type=float, default=480.0,
                   help="seconds after which no step starts and a running one is stopped (default 480, inside "
                   "a 10-minute call)")
    p.add_argument("--only", help="comma-separated steps to run (e.g. to rerun the failed ones)")
    p.set_defaults(func=cmd_bench_gpu)


def cmd_bench_gpu(args: argparse.Namespace) -> None:
    from lmfix.bench.gpu import run_gpu_bench

    try:
        results = run_gpu_bench(args.out, args.device, args.quick, args.corpus, args.deadline,
                                args.only.split(",") if args.only else None,
                                progress=lambda line: print(line, file=sys.stderr, flush=True))
    except ValueError as exc:  # unknown step names
        raise LmfixError(str(exc)) from exc
    except OSError as exc:  # --out cannot be created or written
        raise LmfixError(f"cannot write the results to --out {args.out} ({exc.strerror or exc}); choose a writable "
                         "folder") from exc
    bad = [r["step"] for r in results if r["status"] != "ok"]
    print(f"{len(results) - len(bad)}/{len(results)} steps ok; summary: {args.out}/summary.md")
    if bad:
        raise LmfixError(f"steps not ok: {', '.join(bad)}; see {args.out}/summary.md")


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "bench", "speed and memory benchmarks on this machine")
    bench_sub = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for add in (_add_bench_embeddings, _add_bench_train, _add_bench_recipe, _add_bench_head, _add_bench_gpu):
        add(bench_sub)
