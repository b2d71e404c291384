"""Recipes: experiments as data. ``run_recipe`` turns a recipe directory into runs and a report.

A recipe directory holds ``recipe.toml`` (name, output directory, the ordered
variant list, how to evaluate, and ``[train]`` defaults: ``TrainConfig`` fields)
and one ``VARIANT.toml`` per variant (its ``[train]`` overrides and, for a fixed
matrix, ``[embeddings]`` builder options). Running a recipe prepares the corpus,
builds or reuses the embedding artifacts, trains each variant (skipping finished
runs, resuming interrupted ones), evaluates, and writes ``report.md`` and plots.

A recipe run as written (no overrides) also keeps each finished run's record,
its config, metrics, summary and evaluation but never a checkpoint, under the
recipe's ``results/RUN/``, and writes the report there. Those records are
committed with the recipe: on another machine ``lmfix run`` adopts them and
trains only the runs that are missing.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from lmfix import atomic
from lmfix.data.corpus import SPLITS
from lmfix.errors import LmfixError
from lmfix.training import checkpoint
from lmfix.training.config import CONFIG_FILE, TrainConfig
from lmfix.training.results import current

RECIPE_FILE = "recipe.toml"
REPORT = "report.md"
RESULTS = "results"
# What a committed record of a finished run holds: enough to compare and plot it, never a checkpoint.
RECORD_FILES = (CONFIG_FILE, checkpoint.METRICS, checkpoint.SUMMARY, checkpoint.EVAL)


class RecipeError(LmfixError):
    """A recipe file is missing, malformed or names an unknown variant."""


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    train: dict
    embeddings: dict = field(default_factory=dict)
    # VARIANT.toml's own ``seeds = [...]`` (e.g. 3 seeds for the baselines, 1 for the rest); None: the recipe's
    seeds: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    path: Path
    output: Path
    variants: tuple[Variant, ...]
    train: dict
    evaluate: dict
    # [recipe] seeds = [...]: every variant once per seed (run and embedding seed alike), run
    # directories VARIANT-seedN; empty: one run per variant, named VARIANT, with [train]'s seeds.
    seeds: tuple[int, ...] = ()
    # [recipe] reuse = ["../wt2-cpu-long"]: other recipes whose committed records stand for this recipe's runs of
    # the same name (and, checked, the same config): their baselines are not trained or copied again
    reuse: tuple[Path, ...] = ()
    # [recipe] frontier = true: the report adds the frontier plots and the time-to-target table (analysis.frontier)
    frontier: bool = False
    # the recipe as loaded, kept through select(): the report covers every run of it
    loaded: Recipe | None = field(default=None, repr=False, compare=False)

    @property
    def full(self) -> Recipe:
        return self.loaded or self

    @property
    def results(self) -> Path:
        """Where the committed records of finished runs and the report live."""
        return self.path / RESULTS

    def record(self, name: str) -> Path:
        """Where run ``name``'s committed record is: in this recipe's results/, else in a reused recipe's, else
        where it will be written (this recipe's)."""
        for folder in (self.results, *(r / RESULTS for r in self.reuse)):
            if (folder / name / checkpoint.SUMMARY).is_file():
                return folder / name
        return self.results / name

    def variant_seeds(self, variant: Variant) -> tuple[int, ...]:
        return self.seeds if variant.seeds is None else variant.seeds

    def runs(self) -> list[tuple[str, Variant, dict]]:
        """(run name, variant, seed overrides) for every run the recipe asks for.

        Seed-major (every variant's first seed, then the second...), so that an interrupted
        recipe already holds a complete comparison; variants without seeds run once, first.
        """
        unseeded = [(v.name, v, {}) for v in self.variants if not self.variant_seeds(v)]
        order = list(dict.fromkeys(s for v in self.variants for s in sorted(self.variant_seeds(v))))
        return unseeded + [(f"{v.name}-seed{s}", v, {"seed": s, "embed_seed": s})
                           for s in order for v in self.variants if s in self.variant_seeds(v)]

    def select(self, only: list[str] | None) -> Recipe:
        """The recipe restricted to the variants named in ``only`` (in recipe order)."""
        if not only:
            return self
        known = [v.name for v in self.variants]
        unknown = [name for name in only if name not in known]
        if unknown:
            raise RecipeError(f"recipe {self.name} has no variant {unknown[0]!r}; its variants: {', '.join(known)}")
        return replace(self, variants=tuple(v for v in self.variants if v.name in only))

    def select_seeds(self, seeds: list[int] | None) -> Recipe:
        """The recipe restricted to the runs of these seeds (``lmfix run --seeds 1``: one full comparison first)."""
        if not seeds:
            return self
        known = sorted({s for v in self.variants for s in self.variant_seeds(v)})
        unknown = [s for s in seeds if s not in known]
        if unknown:
            raise RecipeError(f"recipe {self.name} has no seed {unknown[0]}; its seeds: "
                              f"{', '.join(map(str, known)) or 'none (set seeds = [...] in recipe.toml)'}")
        keep = tuple(replace(v, seeds=tuple(s for s in self.variant_seeds(v) if s in seeds)) for v in self.variants)
        return replace(self, variants=tuple(v for v in keep if v.seeds))

    def config(self, variant: Variant, overrides: dict | None = None) -> TrainConfig:
        """The variant's ``TrainConfig``: recipe defaults, then the variant's, then ``overrides``."""
        return TrainConfig.from_dict({**self.train, **variant.train, **(overrides or {})})


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"recipe file {path} not found; check the path (recipes live under recipes/)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RecipeError(f"cannot read recipe file {path}: {exc}") from exc


def _known(path: Path, raw: dict, sections: dict[str, set[str] | None]) -> None:
    """Unknown sections or keys are errors, not silently something else (``[trian]``); ``None``: any key."""
    for section in sorted(set(raw) - set(sections)):
        raise RecipeError(f"{path}: unknown section [{section}]; known: {', '.join(f'[{s}]' for s in sections)}")
    for section, keys in sections.items():
        value = raw.get(section, {})
        if not isinstance(value, dict):
            raise RecipeError(f"{path}: {section} must be a [{section}] section")
        for key in sorted(set(value) - keys) if keys is not None else ():
            raise RecipeError(f"{path}: unknown key {key!r} in [{section}]; known: {', '.join(sorted(keys))}")


def _seeds(path: Path, seeds: object) -> tuple[int, ...]:
    ok = isinstance(seeds, list) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    if not ok or len(set(seeds)) != len(seeds):
        raise RecipeError(f"{path}: seeds must be a list of distinct integers >= 0, like seeds = [1, 2, 3]")
    return tuple(seeds)


def _reused(path: Path, reuse: object) -> tuple[Path, ...]:
    if not isinstance(reuse, list) or not all(isinstance(r, str) for r in reuse):
        raise RecipeError(f"{path / RECIPE_FILE}: reuse must be a list of recipe folders, like reuse = "
                          '["../wt2-cpu-long"]')
    folders = tuple((path / r).resolve() for r in reuse)
    for folder, name in zip(folders, reuse, strict=True):
        if not (folder / RECIPE_FILE).is_file():
            raise RecipeError(f"{path / RECIPE_FILE}: reuse names {name}, which is not a recipe folder (no "
                              f"{RECIPE_FILE} there)")
    return folders


def _variant_names(path: Path, meta: dict) -> list[str]:
    """``[recipe] variants`` in order; without the key, every ``VARIANT.toml`` of the folder. Never none: an
    empty list is a mistake, not "all"."""
    names = meta.get("variants")
    if names is None:
        names = sorted(p.stem for p in path.glob("*.toml") if p.name != RECIPE_FILE and not p.name.startswith("."))
    elif not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) < len(names):
        raise RecipeError(f"{path / RECIPE_FILE}: variants must be a list of distinct variant names, like "
                          'variants = ["learned", "word2vec"]')
    if not names:
        raise RecipeError(f"{path / RECIPE_FILE}: the recipe has no variants; name them (variants = [\"learned\"]) "
                          "or leave variants out to run every VARIANT.toml of the folder")
    for name in names:
        problem = atomic.name_problem(name, path)
        if problem:
            raise RecipeError(f"{path / RECIPE_FILE}: a variant is a VARIANT.toml beside it: {problem}")
    return names


def _output(path: Path, output: object) -> Path:
    """``[recipe] output``: a folder below the current directory, so that a recipe writes nowhere else (the
    command line's --output may go anywhere)."""
    parts = Path(output).parts if isinstance(output, str) else ()
    problem = next(filter(None, (atomic.name_problem(part, Path.cwd()) for part in parts)), None)
    if problem or not parts:
        raise RecipeError(f"{path / RECIPE_FILE}: output must be a relative folder like \"runs/{path.name}\", got "
                          f"{output!r}{f' ({problem})' if problem else ''}; pass --output DIR to write elsewhere")
    return Path(output)


def _evaluation(path: Path, evaluate: dict) -> dict:
    """``[evaluate]``, checked when the recipe loads rather than after its runs have trained."""
    split, batch_size = evaluate.get("split", "test"), evaluate.get("batch_size", 1)
    if split not in SPLITS or not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise RecipeError(f"{path / RECIPE_FILE}: [evaluate] takes split = one of {', '.join(SPLITS)} and "
                          f"batch_size = an integer >= 1; got split = {split!r}, batch_size = {batch_size!r}")
    return evaluate


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Load a recipe directory, or one ``VARIANT.toml`` of it (then only that variant runs)."""
    from lmfix.embeddings import get_method
    from lmfix.embeddings.base import make_config

    path = Path(path)
    only = None
    if path.is_file() and path.name != RECIPE_FILE:
        only = [path.stem]
        path = path.parent
    elif path.name == RECIPE_FILE:
        path = path.parent
    raw = _read_toml(path / RECIPE_FILE)
    _known(path / RECIPE_FILE, raw, {"recipe": {"name", "description", "output", "variants", "seeds", "reuse",
                                                "frontier"},
                                     "evaluate": {"split", "batch_size"}, "train": None})
    meta = raw.get("recipe", {})
    names = _variant_names(path, meta)
    variants = []
    for name in names:
        data = _read_toml(path / f"{name}.toml")
        unknown = sorted(set(data) - {"description", "train", "embeddings", "seeds"})
        if unknown:
            raise RecipeError(f"{path / f'{name}.toml'}: unknown section(s) {', '.join(unknown)}")
        _known(path / f"{name}.toml", {k: data[k] for k in ("train", "embeddings") if k in data},
               {"train": None, "embeddings": None})
        seeds = _seeds(path / f"{name}.toml", data["seeds"]) if "seeds" in data else None
        variants.append(Variant(name, data.get("description", ""), data.get("train", {}), data.get("embeddings", {}),
                                seeds))
    recipe = Recipe(
        name=meta.get("name", path.name),
        description=meta.get("description", ""),
        path=path,
        output=_output(path, meta.get("output", f"runs/{path.name}")),
        variants=tuple(variants),
        train=raw.get("train", {}),
        evaluate=_evaluation(path, raw.get("evaluate", {})),
        seeds=_seeds(path / RECIPE_FILE, meta.get("seeds", [])),
        reuse=_reused(path, meta.get("reuse", [])),
        frontier=meta.get("frontier", False) is True,
    )
    recipe = replace(recipe, loaded=recipe)
    for name, variant, seeded in recipe.runs():  # fail on a bad setting or name before hours of training, not after
        problem = atomic.name_problem(name, recipe.output) or atomic.name_problem(name, recipe.results)
        if problem:
            raise RecipeError(f"{path / RECIPE_FILE}: a run's folder is named after its variant: {problem}; rename "
                              "the variant")
        try:
            config = recipe.config(variant, seeded)
            if variant.embeddings:
                make_config(get_method(config.embed).config, config.embed, variant.embeddings)
        except LmfixError as exc:
            raise RecipeError(f"{path / f'{variant.name}.toml'}: {exc}") from exc
    return recipe.select(only)


@dataclass
class RecipeEvent:
    """Progress of ``run_recipe``: ``adopt``, ``skip``, ``train``, ``resume`` or ``evaluate`` a run, or a
    ``conflict`` between a committed record and the local run (the record is kept)."""

    kind: str
    variant: str
    detail: str = ""


@dataclass
class RecipeResult:
    report: Path
    table: str
    plots: list[Path]
    run_dirs: list[Path]


def run_recipe(
    recipe: Recipe,
    *,
    output: Path | None = None,
    overrides: dict | None = None,
    on_event: Callable[[RecipeEvent], None] = lambda event: None,
    train_callback=None,
    keep_results: bool = True,
) -> RecipeResult:
    """Run every run of ``recipe`` into ``output/RUN`` and write the report.

    Without ``overrides`` the recipe runs as written: committed records under ``recipe.results``
    stand for finished runs, each newly finished run is recorded there, and so is the report.
    With overrides (a shorter budget, another device), or ``keep_results=False`` (the demo), nothing
    under the recipe is read or written.
    """
    from lmfix.analysis.compare import compare_runs
    from lmfix.analysis.evaluate import evaluate_run
    from lmfix.analysis.frontier import STEP_TIMES, Clock
    from lmfix.training.trainer import train

    out = Path(output or recipe.output)
    as_written = keep_results and not overrides
    if as_written:
        _check_records(recipe)
    # the recipe's committed clock (lmfix bench recipe --save), checked before anything trains
    step_times = recipe.results / STEP_TIMES
    clock = Clock.load(step_times) if recipe.frontier and as_written and step_times.is_file() else None
    split, batch_size = recipe.evaluate.get("split", "test"), recipe.evaluate.get("batch_size")
    compared = []
    for name, variant, seeded in recipe.runs():
        run_dir, record = out / name, recipe.record(name)
        config, artifact_id = run_config(recipe, variant, {**seeded, **(overrides or {})})
        finished = (run_dir / checkpoint.SUMMARY).is_file()
        if as_written and not finished and _evaluated(record, split, batch_size):
            _check_same_config(record, config, artifact_id, _RECORD_ADVICE)
            on_event(RecipeEvent("adopt", name, f"committed result ({record})"))
            compared.append(record)
            continue
        if finished:
            _check_same_config(run_dir, config, artifact_id)
            on_event(RecipeEvent("skip", name, f"finished earlier ({run_dir})"))
        else:
            resume = (run_dir / checkpoint.LAST).is_file()
            on_event(RecipeEvent("resume" if resume else "train", name, str(run_dir)))
            train(config, run_dir, resume=resume, overwrite=not resume, callback=train_callback)
        if not finished or not _evaluated(run_dir, split, batch_size):
            on_event(RecipeEvent("evaluate", name, split))
            evaluate_run(run_dir, split, batch_size, device=config.device)
        if as_written and record.parent != recipe.results:  # another recipe's record: read, never written
            _check_same_config(record, config, artifact_id, _RECORD_ADVICE)
        elif as_written:
            differ = _record(run_dir, record, built=artifact_id is not None)
            if differ:
                on_event(RecipeEvent("conflict", name, f"{record} differs from {run_dir} in {', '.join(differ)}: "
                                     "the committed record is kept and reported; move it away to record this run"))
        compared.append(record if as_written else run_dir)
    report_dir = recipe.results if as_written else out
    missing = []
    if as_written:  # the report covers every committed run, also those this call did not select
        missing = unfinished(recipe)
        compared = [recipe.record(name) for name, _, _ in recipe.full.runs() if name not in missing]
    # the recipe's own variants may differ in more than the matrix (an ablation): the table says how
    table, plots = compare_runs(compared, report_dir, mixed=True, frontier=recipe.frontier, clock=clock)
    report = report_dir / REPORT
    atomic.write_text(report, _report(recipe.full, table, plots, report_dir, missing))
    return RecipeResult(report, table, plots, compared)


def run_config(recipe: Recipe, variant: Variant, overrides: dict) -> tuple[TrainConfig, str | None]:
    """What one run of ``variant`` trains with, and the id of the artifact the recipe built for it (a variant's
    ``[embeddings]`` options beyond the defaults: it trains on that artifact), else None."""
    config = recipe.config(variant, overrides)
    if not variant.embeddings:
        return config, None
    from lmfix.embeddings import get_or_build
    from lmfix.training.setup import load_corpus

    art = get_or_build(config.embed, load_corpus(config), config.emsize, seed=config.embed_seed, **variant.embeddings)
    return replace(config, embeddings=str(art.path)), art.id


def variant_configs(recipe: Recipe) -> dict[str, TrainConfig]:
    """Each variant's config, of its first run (the seeds of a variant train the same model)."""
    configs: dict[str, TrainConfig] = {}
    for _, variant, seeded in recipe.runs():
        if variant.name not in configs:
            configs[variant.name] = run_config(recipe, variant, seeded)[0]
    return configs


def _record(run_dir: Path, record: Path, built: bool = False) -> list[str]:
    """Copy a finished run's record for committing; the artifact is named by its id, not this machine's path
    (``built``: the recipe built it into this machine's cache, so config.toml names no file either).

    Only the record's own files are written, each atomically; anything else in the folder (a user's notes)
    stays. A finished record that differs is a conflict: kept as it is, and the files that differ returned.
    """
    files = {name: (run_dir / name).read_bytes() for name in RECORD_FILES}
    if built:
        files[CONFIG_FILE] = replace(TrainConfig.load(run_dir), embeddings="").to_toml().encode()
    summary = checkpoint.read_json(run_dir / checkpoint.SUMMARY)
    if summary.get("embedding"):
        summary["embedding"].pop("path", None)
        files[checkpoint.SUMMARY] = checkpoint.json_text(summary).encode()
    if (record / checkpoint.SUMMARY).is_file():
        differ = [name for name, data in files.items() if (record / name).is_file()
                  and (record / name).read_bytes() != data]
        if differ:
            return differ
    # the summary last: a record is finished once it has one, so a killed copy is never taken for a whole one
    for name in sorted(files, key=lambda name: name == checkpoint.SUMMARY):
        if not (record / name).is_file() or (record / name).read_bytes() != files[name]:
            atomic.write_bytes(record / name, files[name])
    return []


def unfinished(recipe: Recipe) -> list[str]:
    """The runs of the whole recipe (also those ``select`` left out) with no evaluated record in results/."""
    split, batch_size = recipe.evaluate.get("split", "test"), recipe.evaluate.get("batch_size")
    return [name for name, _, _ in recipe.full.runs() if not _evaluated(recipe.record(name), split, batch_size)]


def missing_line(recipe: Recipe, missing: list[str]) -> str:
    """What the report (and the demo) says of the runs not finished yet."""
    return (f"**{len(missing)} of the recipe's runs are not finished yet**: {', '.join(missing)} "
            f"(`lmfix run {_shown(recipe.path)}` trains them).")


def _evaluated(run_dir: Path, split: str, batch_size: int | None) -> bool:
    """Whether ``run_dir`` finished and holds the evaluation the recipe asks for."""
    if not (run_dir / checkpoint.SUMMARY).is_file():
        return False
    evaluated = (checkpoint.read_json(run_dir / checkpoint.EVAL) or {}).get(split)
    return (evaluated is not None and (batch_size is None or evaluated["batch_size"] == batch_size)
            and current(evaluated, checkpoint.read_json(run_dir / checkpoint.SUMMARY)))


_RECORD_ADVICE = "revert the recipe, or move the record away to train the run again"


def _check_same_config(run_dir: Path, config: TrainConfig, artifact_id: str | None = None,
                       advice: str = "move it away or pass --output DIR") -> None:
    """A finished run counts for the recipe only if it was trained with exactly this config; an artifact
    found at another path (another machine's cache) counts as the same if its id (content hash) is."""
    differences = TrainConfig.load(run_dir).differences(config)
    trained = (checkpoint.read_json(run_dir / checkpoint.SUMMARY) or {}).get("embedding") or {}
    if "embeddings" in differences and artifact_id is not None and trained.get("id") == artifact_id:
        del differences["embeddings"]
    if differences:
        name, (saved, wanted) = next(iter(differences.items()))
        raise RecipeError(f"{run_dir} was trained with {name} = {saved!r}, the recipe asks for {wanted!r}: {advice}")


def _check_records(recipe: Recipe) -> None:
    """Every committed record (also of runs not selected: the report covers them) still matches the recipe,
    checked before anything trains. A variant's own artifact is checked by id when its run is adopted."""
    stale = []
    for name, variant, seeded in recipe.full.runs():
        record = recipe.record(name)
        if not (record / checkpoint.SUMMARY).is_file():
            continue
        differences = TrainConfig.load(record).differences(recipe.config(variant, seeded))
        if variant.embeddings:
            differences.pop("embeddings", None)
        if differences:
            stale.append((record, *next(iter(differences.items()))))
    if stale:
        record, field_name, (saved, wanted) = stale[0]
        others = f" (and {len(stale) - 1} more records)" if len(stale) > 1 else ""
        raise RecipeError(f"the recipe changed since {record} was committed: {field_name} = {saved!r} there, "
                          f"{wanted!r} now{others}; {_RECORD_ADVICE}")


def _report(recipe: Recipe, table: str, plots: list[Path], out: Path, missing: list[str]) -> str:
    lines = [f"# {recipe.name}: {recipe.description}", "", f"Recipe: `{_shown(recipe.path)}`", ""]
    if missing:
        lines += [missing_line(recipe, missing), ""]
    lines += [table, ""]
    lines += [f"![{p.stem}]({p.relative_to(out)})" for p in plots]
    lines += ["", "Variants:", ""] + [f"- **{v.name}**: {v.description}" for v in recipe.variants]
    return "\n".join(lines) + "\n"


def _shown(path: Path) -> str:
    """``recipes/NAME`` for the project's own recipes (a committed report names no local folders)."""
    try:
        return str(path.resolve().relative_to(RECIPES_DIR.parent))
    except ValueError:
        return str(path)


RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
# `make demo`: a few minutes on 2 CPU cores, the learned baseline against two fixed matrices.
DEMO_VARIANTS = ["learned", "word2vec", "hadamard"]
DEMO_OVERRIDES = {"max_tokens": 100_000, "eval_interval": 40, "eval_tokens": 20_000}
# ...and then the answer at a real budget, from the runs committed with this recipe.
DEMO_ANSWER = RECIPES_DIR / "wt2-cpu-long"


def demo_recipe() -> tuple[Recipe, dict, Path, str | None]:
    """(recipe, overrides, output, why WikiText-2 was not used) for ``lmfix demo``.

    The short ``wt2-cpu`` run when WikiText-2 can be found, else the smoke recipe
    on gensim's Lee corpus, with the reason (and how to provide WikiText-2).
    """
    from lmfix.data.corpus import resolve
    from lmfix.errors import CorpusError

    try:
        resolve("wikitext-2")
    except CorpusError as exc:
        return load_recipe(RECIPES_DIR / "smoke"), {}, Path("runs/demo-smoke"), str(exc)
    recipe = load_recipe(RECIPES_DIR / "wt2-cpu").select(DEMO_VARIANTS)
    return recipe, DEMO_OVERRIDES, Path("runs/demo"), None
