"""``lmfix run RECIPE`` and ``lmfix demo``."""

from __future__ import annotations

import argparse
import sys

from lmfix.cli.common import command, count
from lmfix.cli.progress import TrainProgress


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub, "run", "run a recipe: train and evaluate every variant, then write the report",
        "Finished runs are skipped, interrupted ones resumed. Run as written (no --max-tokens or --device), each "
        "finished run's record (config, metrics, summary, evaluation; no checkpoint) is kept in the recipe's "
        "results/ folder with the report (report.md, compare.md, plots), and records found there are adopted "
        "instead of trained again: commit them.",
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


def _run_recipe(recipe, overrides: dict, output, progress: bool, keep_results: bool = True) -> None:
    """Run ``recipe`` printing its steps, then the table and where the report is."""
    from lmfix.recipes.runner import run_recipe

    bar = TrainProgress(enabled=progress)

    def on_event(event) -> None:
        print(f"[{recipe.name}/{event.variant}] {event.kind} {event.detail}", file=sys.stderr)

    try:
        result = run_recipe(recipe, output=output, overrides=overrides, on_event=on_event, train_callback=bar,
                            keep_results=keep_results)
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
    p = command(sub, "demo", "a few minutes' comparison of learned vs fixed embeddings (make demo)",
                "Trains learned, word2vec and hadamard for 100k WikiText-2 tokens each (without WikiText-2: the "
                "seconds-long smoke recipe), then prints the committed results of the real-budget recipe "
                "wt2-cpu-long and where they are explained.")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> None:
    from lmfix.recipes.runner import DEMO_ANSWER, demo_recipe

    recipe, overrides, output, missing = demo_recipe()
    if missing:
        print(f"lmfix demo: WikiText-2 not available ({missing})", file=sys.stderr)
        print("lmfix demo: running the smoke recipe on gensim's Lee corpus instead", file=sys.stderr)
    else:
        names = ", ".join(v.name for v in recipe.variants)
        print(f"lmfix demo: {recipe.name} recipe, variants {names}, {overrides['max_tokens']:,} training "
              f"tokens each, then the committed results of recipes/{DEMO_ANSWER.name}", file=sys.stderr)
    _run_recipe(recipe, overrides, output, not args.no_progress, keep_results=False)
    budget = recipe.config(recipe.variants[0], overrides).max_tokens
    _print_committed(DEMO_ANSWER, f"the {recipe.name} recipe, {budget:,} tokens per variant")


def _print_committed(recipe_dir, live: str) -> None:
    """The committed results of a real-budget recipe, labelled as such (the demo's live run is far shorter),
    ending on the recipe's README, which says what they mean."""
    from lmfix.analysis.compare import TABLE
    from lmfix.recipes.runner import RESULTS, load_recipe, missing_line, unfinished

    recipe = load_recipe(recipe_dir)
    table = recipe.results / TABLE
    rule = "=" * 100
    print(f"\n{rule}\nAbove: the live demo, {live} (minutes: far from converged).\n"
          f"Below: the committed results of {recipe.name} ({recipe.description}),\n"
          f"trained earlier with `lmfix run recipes/{recipe_dir.name}`, not now.\n{rule}")
    if not table.is_file():
        print(f"(no committed results yet in recipes/{recipe_dir.name}/{RESULTS}/)")
    else:
        missing = unfinished(recipe)
        if missing:
            print(missing_line(recipe, missing))
        print(table.read_text(encoding="utf-8").rstrip())
        for plot in sorted(recipe.results.glob("*.png")):
            print(f"plot:   {plot.relative_to(recipe_dir.parent.parent)}")
        print(f"report: recipes/{recipe_dir.name}/{RESULTS}/report.md")
    if (recipe_dir / "README.md").is_file():
        print(f"what these results say, and how they were measured: recipes/{recipe_dir.name}/README.md")


def register(sub: argparse._SubParsersAction) -> None:
    _add_run(sub)
    _add_demo(sub)
