"""Using finished runs: ``lmfix evaluate``, ``lmfix compare``, ``lmfix generate``."""

from __future__ import annotations

import argparse

from lmfix.cli.common import add_device_flags, command, positive_int


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "evaluate", "perplexity of trained runs on valid or test (writes eval.json)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--split", default="test", help="valid or test (default: test)")
    p.add_argument("--batch-size", type=positive_int,
                   help="default 1 for test (as AWD-LSTM: each token sees its whole history), the run's "
                   "--eval-batch-size for valid")
    p.add_argument("--stride", type=positive_int,
                   help="transformer runs: slide the bptt-token windows by this many tokens (every token scored "
                   "once, with at least bptt - stride + 1 tokens of context; default: bptt, windows side by side)")
    add_device_flags(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from lmfix.analysis.evaluate import evaluate_run

    for run in args.runs:
        r = evaluate_run(run, args.split, args.batch_size, args.device, args.precision, args.stride)
        print(f"{run}: {r['split']} ppl {r['ppl']:.2f} (loss {r['loss']:.4f}, {r['tokens']:,} tokens, batch size "
              f"{r['batch_size']}, bptt {r['bptt']}, stride {r['stride']}, {r['precision']}, "
              f"{r['tokens_per_second']:,.0f} tok/s, step {r['step']:,})")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "compare", "markdown table and plots comparing runs with the learned baseline",
                "One row per run, against the learned tied run of its seed. Runs named NAME-seedN form groups: "
                "mean ± std per group, the change against learned paired by seed with a 95% interval, and each "
                "seed's validation gap over training. Plots: validation perplexity, alpha, the gap.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="where compare.md and the PNGs go (default: RUNS_DIR/compare)")
    p.add_argument("--mixed", action="store_true",
                   help="compare runs whose settings differ beyond the matrix and the seeds (the table says how)")
    p.add_argument("--force", action="store_true", help="replace files in --out that lmfix did not write")
    p.add_argument("--frontier", action="store_true",
                   help="also plot test perplexity per trained parameter and per training second, and tabulate "
                        "the tokens and time each run needed to reach the learned run's 1/2/4-epoch validation")
    p.add_argument("--step-times", metavar="FILE",
                   help="with --frontier: time runs at the step times in FILE (lmfix bench recipe RECIPE --save "
                        "writes RECIPE/results/step_times.json) instead of each run's own wall-clock")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> None:
    from pathlib import Path

    from lmfix.analysis.compare import compare_runs
    from lmfix.analysis.frontier import Clock
    from lmfix.training.config import ConfigError

    if args.step_times and not args.frontier:
        raise ConfigError("--step-times times the frontier: add --frontier")
    clock = Clock.load(Path(args.step_times)) if args.step_times else None
    runs = [Path(r) for r in args.runs]
    out = Path(args.out) if args.out else runs[0].parent / "compare"
    table, plots = compare_runs(runs, out, mixed=args.mixed, frontier=args.frontier, force=args.force, clock=clock)
    print(table)
    print(f"written: {out / 'compare.md'}" + "".join(f", {p}" for p in plots))


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "generate", "sample text from a trained run")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--words", type=positive_int, default=100, help="tokens to sample (default: 100)")
    p.add_argument("--temperature", type=float, default=1.0, help="below 1: safer, above 1: wilder (default: 1.0)")
    p.add_argument("--seed", type=int, help="random seed (default: a fresh one)")
    p.add_argument("--prompt", default="", help="text to continue, in the corpus's tokens")
    add_device_flags(p)
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> None:
    from lmfix.analysis.generate import sample

    piece = "\n"
    for piece in sample(args.run, args.words, args.temperature, args.seed, args.prompt, args.device, args.precision):
        print(piece, end="", flush=piece == "\n")  # as sampled, a line at a time: `| head` gets lines at once
    if piece != "\n":
        print()


def register(sub: argparse._SubParsersAction) -> None:
    _add_evaluate(sub)
    _add_compare(sub)
    _add_generate(sub)
