"""Recipes: the shipped TOML files load, the smoke recipe runs end to end, reruns skip and resume."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from lmfix.cli import main
from lmfix.model.registry import EMBEDS
from lmfix.recipes.runner import RECIPES_DIR, RecipeError, load_recipe, run_recipe
from lmfix.training.config import TrainConfig
from tests.test_docs import markdown_tables

PAPER_VARIANTS = ["learned", "learned-untied", "orthogonal", "word2vec", "pmi", "hadamard", "hadamard-truncated"]


@pytest.mark.parametrize("name", ["smoke", "wt2-cpu", "wt2-paper"])
def test_shipped_recipes_load_and_cover_every_variant(name: str):
    recipe = load_recipe(RECIPES_DIR / name)
    assert [v.name for v in recipe.variants] == PAPER_VARIANTS
    configs = {v.name: recipe.config(v) for v in recipe.variants}
    assert {c.embed for c in configs.values()} == set(EMBEDS)
    assert recipe.variants[-1].embeddings == {"layout": "truncated"}
    # Every variant of a recipe trains the same model at the same budget.
    shapes = {(c.emsize, c.nhid, c.nlayers, c.max_tokens, c.epochs, c.seed) for c in configs.values()}
    assert len(shapes) == 1


def test_bf16_recipe_pairs_each_variant_with_itself_in_fp32():
    recipe = load_recipe(RECIPES_DIR / "wt2-cpu-bf16")
    configs = {v.name: recipe.config(v) for v in recipe.variants}
    for name in ("learned", "word2vec", "pmi"):
        fp32, bf16 = configs[name], configs[f"{name}-bf16"]
        assert (fp32.precision, bf16.precision) == ("fp32", "bf16") and replace(bf16, precision="fp32") == fp32
    assert recipe.seeds == (1, 2, 3)


def test_transformer_recipe_differs_only_in_the_head_or_the_precision():
    recipe = load_recipe(RECIPES_DIR / "wt2-cpu-transformer")
    configs = {v.name: recipe.config(v) for v in recipe.variants}
    assert {c.model for c in configs.values()} == {"transformer"} and configs["learned"].optimizer == "adam"
    for name, config in configs.items():
        embed, _, precision = name.partition("-")
        assert (config.embed, config.precision) == (embed, precision or "fp32")
        assert replace(config, embed="learned", precision="fp32") == configs["learned"]
    seeds = {v.name: recipe.variant_seeds(v) for v in recipe.variants}
    assert recipe.seeds == (1, 2, 3) and seeds.pop("hadamard") == (1,) and set(seeds.values()) == {(1, 2, 3)}
    assert {name for name in configs if name.endswith("-bf16")} == {"learned-bf16", "word2vec-bf16", "pmi-bf16"}


def test_schedule_recipe_is_the_long_recipe_checked_once_per_epoch():
    long, ablation = load_recipe(RECIPES_DIR / "wt2-cpu-long"), load_recipe(RECIPES_DIR / "wt2-cpu-long-schedule")
    configs = {v.name: long.config(v) for v in long.variants}
    assert [v.name for v in ablation.variants] == ["learned", "word2vec", "pmi"] and ablation.seeds == (1,)
    for variant in ablation.variants:
        config = ablation.config(variant)
        assert config.eval_interval == 0 and replace(config, eval_interval=750) == configs[variant.name]
    assert ablation.evaluate == long.evaluate


def test_paper_recipe_is_the_papers_model():
    recipe = load_recipe(RECIPES_DIR / "wt2-paper")
    c = recipe.config(recipe.variants[0])
    assert (c.corpus, c.emsize, c.nhid, c.nlayers, c.optimizer) == ("wikitext-2", 512, 512, 2, "asgd")
    assert recipe.evaluate["batch_size"] == 1


def test_variant_file_and_only_select(tmp_path: Path):
    one = load_recipe(RECIPES_DIR / "smoke" / "pmi.toml")
    assert [v.name for v in one.variants] == ["pmi"]
    with pytest.raises(RecipeError, match="no variant 'glove'"):
        load_recipe(RECIPES_DIR / "smoke").select(["glove"])


def test_bad_recipe_fails_before_training(tmp_path: Path):
    (tmp_path / "recipe.toml").write_text('[recipe]\nvariants = ["a"]\n[train]\nemsize = 16\n')
    (tmp_path / "a.toml").write_text('[train]\nembed = "glove"\n')
    with pytest.raises(RecipeError, match="a.toml.*unknown --embed 'glove'"):
        load_recipe(tmp_path)
    assert main(["run", str(tmp_path / "missing")]) == 2
    (tmp_path / "a.toml").write_text('train = 3\n')  # a key where a section belongs
    with pytest.raises(RecipeError, match=r"a.toml: train must be a \[train\] section"):
        load_recipe(tmp_path)


class Interrupt(Exception):
    pass


def test_smoke_recipe_runs_skips_and_resumes(tmp_path: Path):
    recipe = load_recipe(RECIPES_DIR / "smoke")
    out = tmp_path / "smoke"
    overrides = {"max_tokens": 3200, "eval_interval": 5, "checkpoint_interval": 5}

    # First pass: interrupted during the third variant, after one of its checkpoints.
    state = {"variant": 0}

    def events(event):
        if event.kind in ("train", "resume"):
            state["variant"] += 1

    def stop_in_third(event):
        if state["variant"] == 3 and event.kind == "checkpoint":
            raise Interrupt

    with pytest.raises(Interrupt):
        run_recipe(recipe, output=out, overrides=overrides, on_event=events, train_callback=stop_in_third)
    third = recipe.variants[2].name
    assert (out / third / "checkpoint.pt").is_file() and not (out / third / "summary.json").exists()

    # Second pass: finished variants skipped, the interrupted one resumed, the rest trained.
    seen = []
    result = run_recipe(recipe, output=out, overrides=overrides, on_event=lambda e: seen.append((e.kind, e.variant)))
    kinds = {v: [k for k, name in seen if name == v] for v in PAPER_VARIANTS}
    assert kinds["learned"] == ["skip"] and kinds["learned-untied"] == ["skip"]
    assert "resume" in kinds[third]
    assert all("train" in kinds[v] for v in PAPER_VARIANTS[3:])

    report = result.report.read_text()
    for name in PAPER_VARIANTS:
        assert f"| {name} |" in report
    assert all(p.is_file() and p.stat().st_size > 1000 for p in result.plots)

    # Third pass: nothing left to do.
    seen.clear()
    run_recipe(recipe, output=out, overrides=overrides, on_event=lambda e: seen.append(e.kind))
    assert set(seen) == {"skip"}


def test_demo_uses_wikitext2_when_found(wikitext2_dir: Path, monkeypatch):
    from lmfix.recipes.runner import DEMO_VARIANTS, demo_recipe

    monkeypatch.setenv("LMFIX_CORPORA", str(wikitext2_dir.parent))
    recipe, overrides, output, missing = demo_recipe()
    assert missing is None and recipe.name == "wt2-cpu"
    assert [v.name for v in recipe.variants] == DEMO_VARIANTS
    assert overrides["max_tokens"] < recipe.config(recipe.variants[0]).max_tokens


def test_demo_falls_back_to_smoke_and_says_why(monkeypatch, tmp_path: Path):
    from lmfix.data import sources
    from lmfix.recipes.runner import demo_recipe

    monkeypatch.delenv("LMFIX_CORPORA", raising=False)
    monkeypatch.setattr(sources, "hub_offline_reason", lambda: "offline: cannot resolve huggingface.co")
    recipe, overrides, output, missing = demo_recipe()
    assert recipe.name == "smoke" and overrides == {}
    assert "LMFIX_CORPORA" in missing and "offline" in missing


def test_finished_run_with_other_settings_is_not_reused(tmp_path: Path):
    recipe = load_recipe(RECIPES_DIR / "smoke").select(["learned"])
    out = tmp_path / "out"
    run_recipe(recipe, output=out, overrides={"max_tokens": 1600})
    with pytest.raises(RecipeError, match="max_tokens = 1600, the recipe asks for 3200"):
        run_recipe(recipe, output=out, overrides={"max_tokens": 3200})


def tiny_recipe(folder: Path, corpus_dir: Path, variants: dict[str, str], recipe_extra: str = "") -> Path:
    """A recipe of tiny models on ``corpus_dir``: ``variants`` maps each name to its TOML file's text."""
    folder.mkdir()
    names = ", ".join(f'"{name}"' for name in variants)
    (folder / "recipe.toml").write_text(
        f'[recipe]\nvariants = [{names}]\n{recipe_extra}[train]\ncorpus = "{corpus_dir}"\nemsize = 16\nnhid = 16\n'
        'batch_size = 4\neval_batch_size = 4\nbptt = 10\nmax_tokens = 200\n')
    for name, text in variants.items():
        (folder / f"{name}.toml").write_text(text)
    return folder


def test_seeds_train_every_variant_once_per_seed_and_reruns_skip(tmp_path: Path, tiny_corpus_dir: Path):
    folder = tiny_recipe(tmp_path / "seeded", tiny_corpus_dir, {
        "learned": '[train]\nembed = "learned"\n', "orthogonal": '[train]\nembed = "orthogonal"\n'},
        "seeds = [3, 4]\n")
    recipe = load_recipe(folder)
    assert [name for name, _, _ in recipe.runs()] == [  # seed-major: a complete comparison first
        "learned-seed3", "orthogonal-seed3", "learned-seed4", "orthogonal-seed4"]
    events = []
    result = run_recipe(recipe, output=tmp_path / "out", on_event=events.append)
    assert [d.name for d in result.run_dirs] == [name for name, _, _ in recipe.runs()]

    saved = {d.name: TrainConfig.load(d) for d in result.run_dirs}
    assert (saved["orthogonal-seed4"].seed, saved["orthogonal-seed4"].embed_seed) == (4, 4)
    assert {e.kind for e in events} >= {"train", "evaluate"}
    assert "| orthogonal | orthogonal | 3, 4 |" in result.table and "(2 seeds)" in result.table
    assert "| learned | learned | 3, 4 |" in result.table and " ± " in result.table
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in result.plots)
    events.clear()
    run_recipe(recipe, output=tmp_path / "out", on_event=events.append)
    assert [e.kind for e in events] == ["skip"] * 4


def test_a_variant_sets_its_own_seeds_and_runs_can_be_restricted_to_seeds(tmp_path: Path, tiny_corpus_dir: Path):
    folder = tiny_recipe(tmp_path / "seeded", tiny_corpus_dir, {
        "learned": '[train]\nembed = "learned"\n', "orthogonal": 'seeds = [2]\n[train]\nembed = "orthogonal"\n'},
        "seeds = [1, 2, 3]\n")
    recipe = load_recipe(folder)
    assert [name for name, _, _ in recipe.runs()] == [
        "learned-seed1", "learned-seed2", "orthogonal-seed2", "learned-seed3"]
    assert [name for name, _, _ in recipe.select_seeds([2]).runs()] == ["learned-seed2", "orthogonal-seed2"]
    assert [name for name, _, _ in recipe.select_seeds([3]).runs()] == ["learned-seed3"]
    with pytest.raises(RecipeError, match="has no seed 7; its seeds: 1, 2, 3"):
        recipe.select_seeds([7])
    (folder / "orthogonal.toml").write_text('seeds = [2, 2]\n[train]\nembed = "orthogonal"\n')
    with pytest.raises(RecipeError, match="orthogonal.toml: seeds must be a list of distinct integers"):
        load_recipe(folder)


@pytest.mark.parametrize("seeds", ["[1, 1]", "[-1]", '["a"]', "3"])
def test_bad_seeds_are_refused(tmp_path: Path, seeds: str):
    (tmp_path / "recipe.toml").write_text(f'[recipe]\nvariants = ["a"]\nseeds = {seeds}\n')
    (tmp_path / "a.toml").write_text('[train]\nembed = "learned"\n')
    with pytest.raises(RecipeError, match="seeds must be a list of distinct integers"):
        load_recipe(tmp_path)


def test_a_finished_run_is_adopted_when_its_artifact_sits_in_another_cache(tmp_path: Path, tiny_corpus_dir: Path,
                                                                           monkeypatch):
    folder = tiny_recipe(tmp_path / "r", tiny_corpus_dir,
                         {"truncated": '[train]\nembed = "hadamard"\n[embeddings]\nlayout = "truncated"\n'})
    run_recipe(load_recipe(folder), output=tmp_path / "out")
    # the committed record names the artifact by id only: no path into this machine's cache
    assert TrainConfig.load(folder / "results" / "truncated").embeddings == ""
    assert TrainConfig.load(tmp_path / "out" / "truncated").embeddings.endswith(".npz")
    monkeypatch.setenv("LMFIX_CACHE", str(tmp_path / "another-machine"))  # the artifact is rebuilt elsewhere
    events = []
    run_recipe(load_recipe(folder), output=tmp_path / "out", on_event=events.append)
    run_recipe(load_recipe(folder), output=tmp_path / "clone", on_event=events.append)  # the record is adopted
    assert [e.kind for e in events] == ["skip", "adopt"]


def test_finished_runs_are_recorded_with_the_recipe_and_adopted_elsewhere(tmp_path: Path, tiny_corpus_dir: Path):
    from lmfix.recipes.runner import RECORD_FILES

    folder = tiny_recipe(tmp_path / "r", tiny_corpus_dir, {
        "learned": '[train]\nembed = "learned"\n', "hadamard": 'seeds = [1]\n[train]\nembed = "hadamard"\n'},
        "seeds = [1, 2]\n")
    first = run_recipe(load_recipe(folder).select_seeds([1]), output=tmp_path / "machine-a")
    results = folder / "results"
    assert sorted(p.name for p in results.iterdir() if p.is_dir()) == ["hadamard-seed1", "learned-seed1"]
    assert all(sorted(p.name for p in (results / run).iterdir()) == sorted(RECORD_FILES)
               for run in ("hadamard-seed1", "learned-seed1"))  # never a checkpoint
    recorded = json.loads((results / "hadamard-seed1" / "summary.json").read_text())["embedding"]
    assert recorded["id"] and "path" not in recorded  # no path of this machine in a committed file
    assert first.report == results / "report.md" and "| hadamard |" in first.report.read_text()
    assert "**1 of the recipe's runs are not finished yet**: learned-seed2" in first.report.read_text()

    # Another machine, nothing trained there: the committed records stand, only seed 2 trains.
    events = []
    second = run_recipe(load_recipe(folder), output=tmp_path / "machine-b", on_event=events.append)
    assert [(e.kind, e.variant) for e in events if e.kind != "evaluate"] == [
        ("adopt", "learned-seed1"), ("adopt", "hadamard-seed1"), ("train", "learned-seed2")]
    assert not (tmp_path / "machine-b" / "learned-seed1").exists()
    assert "| learned | learned | 1, 2 |" in second.table and "| hadamard |" in second.table
    assert "not finished yet" not in second.report.read_text() and "- **hadamard**" in second.report.read_text()

    # A report of one selected run still shows every committed record.
    third = run_recipe(load_recipe(folder).select(["hadamard"]), output=tmp_path / "machine-c")
    assert "| learned | learned | 1, 2 |" in third.table and "- **learned**" in third.report.read_text()

    # Records trained with other settings than the recipe now asks for are refused before anything trains,
    # also those of runs not selected (the report would show them).
    (folder / "recipe.toml").write_text((folder / "recipe.toml").read_text().replace("nhid = 16", "nhid = 12"))
    with pytest.raises(RecipeError, match=r"recipe changed since \S+learned-seed1 was committed: nhid = 16 there, "
                                          r"12 now \(and 2 more records\); revert the recipe"):
        run_recipe(load_recipe(folder).select(["hadamard"]), output=tmp_path / "machine-d")
    assert not (tmp_path / "machine-d").exists()


def test_a_recipe_ablation_of_a_head_option_gets_its_report(tmp_path: Path, tiny_corpus_dir: Path):
    folder = tiny_recipe(tmp_path / "r", tiny_corpus_dir, {
        "learned": '[train]\nembed = "learned"\n', "orthogonal": '[train]\nembed = "orthogonal"\n',
        "orthogonal-fixed-alpha": '[train]\nembed = "orthogonal"\nfix_alpha = true\n'})
    result = run_recipe(load_recipe(folder), output=tmp_path / "out")
    assert "| orthogonal-fixed-alpha | orthogonal (fixed alpha) |" in result.table
    assert "Warning: these runs differ in more than the matrix and the seeds: fix_alpha: orthogonal False, " \
           "orthogonal-fixed-alpha True." in result.table


def test_a_recipe_run_with_overrides_leaves_the_recipe_folder_alone(tmp_path: Path, tiny_corpus_dir: Path):
    folder = tiny_recipe(tmp_path / "r", tiny_corpus_dir, {"learned": '[train]\nembed = "learned"\n'})
    before = sorted(p.name for p in folder.iterdir())
    result = run_recipe(load_recipe(folder), output=tmp_path / "out", overrides={"max_tokens": 100})
    assert sorted(p.name for p in folder.iterdir()) == before and result.report == tmp_path / "out" / "report.md"


COMMITTED = sorted(p.parent.parent.name for p in RECIPES_DIR.glob("*/results/report.md"))


def test_the_readme_check_covers_every_recipe_with_results():
    assert {"wt2-cpu", "wt2-cpu-long", "wt2-cpu-long-schedule", "wt2-cpu-bf16", "wt2-cpu-transformer"} <= set(COMMITTED)


@pytest.mark.parametrize("recipe", COMMITTED)
def test_each_recipes_readme_shows_its_committed_results(recipe: str):
    """A recipe's README holds every table of its compare.md (report.md before compare.md existed), each whole: the
    tables are the ones the committed records give, row for row, never pasted numbers that drifted."""
    from lmfix.analysis.compare import TABLE

    results = RECIPES_DIR / recipe / "results"
    source = results / TABLE if (results / TABLE).is_file() else results / "report.md"
    readme = (RECIPES_DIR / recipe / "README.md").read_text(encoding="utf-8")
    tables = markdown_tables(source.read_text(encoding="utf-8"))
    assert tables and all(table in readme for table in tables)


def test_the_demo_ends_on_committed_results_labelled_as_such(tmp_path: Path, tiny_corpus_dir: Path, capsys):
    from lmfix.cli.recipes import _print_committed

    folder = tiny_recipe(tmp_path / "r", tiny_corpus_dir, {"learned": '[train]\nembed = "learned"\n'},
                         "seeds = [1, 2]\n")
    (folder / "README.md").write_text("# r\n")
    _print_committed(folder, "a live run")
    assert "(no committed results yet in recipes/r/results/)" in capsys.readouterr().out
    run_recipe(load_recipe(folder).select_seeds([1]), output=tmp_path / "out")
    capsys.readouterr()
    _print_committed(folder, "a live run")
    out = capsys.readouterr().out
    assert "Above: the live demo, a live run" in out and "trained earlier with `lmfix run recipes/r`, not now" in out
    assert "not finished yet**: learned-seed2" in out and "| learned-seed1 | learned |" in out
    assert out.rstrip().splitlines()[-1] == "what these results say, and how they were measured: recipes/r/README.md"


def test_committed_records_name_no_path_of_the_machine_that_trained_them():
    records = [p.parent for p in RECIPES_DIR.glob("*/results/*/summary.json")]
    assert records
    for record in records:
        config = TrainConfig.load(record)
        assert not any(Path(value).is_absolute() for value in (config.corpus, config.data_dir, config.embeddings)), \
            record
        assert "path" not in (json.loads((record / "summary.json").read_text()).get("embedding") or {}), record
