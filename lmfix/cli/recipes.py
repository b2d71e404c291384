"""``lmfix run RECIPE`` and ``lmfix demo``."""

from __future__ import annotations

import argparse
import sys

from lmfix.cli.common import count
from lmfix.cli.progress import TrainProgress


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run a recipe: corpus, embeddings, every variant's training and evaluation, report",
        description="Finished variants are skipped, interrupted ones resumed; the report (report.md, "
        "compare.md, plots) goes to the recipe's output directory.",
    )
    p.add_argument("recipe", help="a recipe directory (recipes/wt2-cpu) or one variant file in it")
    p.add_argument("--only", nargs="+", metavar="VARIANT", help="run only these variants")
    p.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                   help="run only these seeds of a seeded recipe (e.g. --seeds 1: one full comparison first)")
    p.add_argument("--output", help="output directory (default: the recipe's, e.g. runs/wt2-cpu)")
    p.add_argument("--max-tokens", type=count, help="override every variant's training-token budget")
    p.add_argument("--device", help="override the device (auto, cpu, cuda)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)


def _run_recipe(recipe, overrides: dict, output, progress: bool) -> None:
    """Run ``recipe`` printing its steps, then the table and where the report is."""
    from lmfix.recipes.runner import run_recipe

    bar = TrainProgress(enabled=progress)

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

    from lmfix.recipes.runner import load_recipe

    recipe = load_recipe(args.recipe).select(args.only).select_seeds(args.seeds)
    overrides = {k: v for k, v in (("max_tokens", args.max_tokens), ("device", args.device)) if v is not None}
    _run_recipe(recipe, overrides, Path(args.output) if args.output else None, not args.no_progress)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="a few minutes' comparison of learned vs fixed embeddings (make demo)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> None:
    from lmfix.recipes.runner import demo_recipe

    recipe, overrides, output, missing = demo_recipe()
    if missing:
        print(f"lmfix demo: WikiText-2 not available ({missing})", file=sys.stderr)
        print("lmfix demo: running the smoke recipe on gensim's Lee corpus instead", file=sys.stderr)
    else:
        names = ", ".join(v.name for v in recipe.variants)
        print(f"lmfix demo: {recipe.name} recipe, variants {names}, {overrides['max_tokens']:,} training "
              f"tokens each (the full comparison: lmfix run recipes/wt2-cpu)", file=sys.stderr)
    _run_recipe(recipe, overrides, output, not args.no_progress)


def register(sub: argparse._SubParsersAction) -> None:
    _add_run(sub)
    _add_demo(sub)
