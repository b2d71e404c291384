"""The frontier: time-to-target on hand-made metrics, the plots, and recipes that reuse another recipe's records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lmfix.analysis.compare import groups
from lmfix.analysis.frontier import STEP_TIMES, Clock, frontier_plots, time_to_target
from lmfix.errors import LmfixError
from lmfix.recipes.runner import RecipeError, load_recipe, run_recipe
from tests.test_compare import synthetic
from tests.test_recipe import tiny_recipe


def curve(points: list[tuple[int, float, float]]) -> list[dict]:
    """metrics.jsonl records: (tokens, wall seconds, valid ppl) at each validation."""
    return [{"tokens": t, "wall": w, "valid_ppl": p} for t, w, p in points]


def finished(run, tokens: int, epochs: int, trainable: int, wall: float):
    run.summary.update(stop_reason="epochs", tokens=tokens, epochs=epochs, wall_seconds=wall,
                       params={"trainable": trainable})
    return run


def test_time_to_target_on_hand_made_metrics(tiny_corpus_dir: Path):
    # the learned run: 100 tokens per epoch; valid ppl 300 after epoch 1, 200 after 2, 150 after 4
    learned = [finished(synthetic(tiny_corpus_dir, f"learned-seed{s}", "learned", s, 140.0, metrics=curve(
        [(50, 5, 400.0), (100, 10, 300.0), (200, 20, 200.0), (300, 30, 170.0), (400, 40, 150.0)])), 400, 4, 1000, 40)
        for s in (1, 2)]
    fast = [finished(synthetic(tiny_corpus_dir, f"fast-seed{s}", "word2vec", s, 145.0, metrics=curve(
        [(50, 2, 290.0 + s), (100, 4, 190.0), (200, 8, 160.0), (400, 16, 155.0)])), 400, 4, 100, 16) for s in (1, 2)]
    # seed 2 of "slow" never reaches learned's epoch-2 perplexity
    slow = [finished(synthetic(tiny_corpus_dir, f"slow-seed{s}", "word2vec", s, 190.0, metrics=curve(
        [(100, 6, 320.0), (200, 12, 295.0), (300, 18, 200.0 if s == 1 else 230.0),
         (400, 24, 190.0 if s == 1 else 205.0)])), 400, 4, 100, 24) for s in (1, 2)]
    table = time_to_target(groups(learned + fast + slow), learned)
    lines = table.splitlines()
    assert lines[0] == ("| group | seeds | to learned's 1-epoch valid ppl | to learned's 2-epoch valid ppl "
                        "| to learned's 4-epoch valid ppl |")
    assert lines[2] == "| learned | 1, 2 | 100 tok, 0.2 min | 200 tok, 0.3 min | 400 tok, 0.7 min |"
    # fast: both seeds at 50 tokens (291, 292 <= 300) in 2 s; at 100 (190 <= 200) in 4 s; never at 150
    assert lines[3] == "| fast | 1, 2 | 50 tok, 0.0 min | 100 tok, 0.1 min | not reached |"
    # slow: both at 200 tokens; learned's epoch-2 200 only by seed 1 (at 300 tokens, 18 s)
    assert lines[4] == "| slow | 1, 2 | 200 tok, 0.2 min | 300 tok, 0.3 min (1 of 2 seeds) | not reached |"
    assert time_to_target(groups(fast), []) is None


def test_time_to_target_in_tokens_and_minutes(tiny_corpus_dir: Path):
    per_epoch = 2_000_000
    learned = finished(synthetic(tiny_corpus_dir, "learned-seed1", "learned", 1, 120.0, metrics=curve(
        [(per_epoch, 600, 300.0), (2 * per_epoch, 1200, 200.0)])), 2 * per_epoch, 2, 7_000_000, 1200)
    fixed = finished(synthetic(tiny_corpus_dir, "word2vec-seed1", "word2vec", 1, 150.0, metrics=curve(
        [(per_epoch // 2, 150, 299.0), (2 * per_epoch, 600, 250.0)])), 2 * per_epoch, 2, 700_000, 600)
    table = time_to_target(groups([learned, fixed]), [learned])
    assert "| word2vec | 1 | 1.00M tok, 2.5 min | not reached |" in table
    assert "| learned | 1 | 2.00M tok, 10.0 min | 4.00M tok, 20.0 min |" in table
    assert "Time: training wall-clock as each run measured it:" in table

    # on one clock (step times measured side by side) a run's time is its tokens at its variant's rate
    clock = Clock({"learned": 4000.0, "word2vec": 8000.0}, "Some CPU, 2 threads, torch 9, 2026-12-07")
    table = time_to_target(groups([learned, fixed]), [learned], clock)
    assert "| word2vec | 1 | 1.00M tok, 2.1 min | not reached |" in table  # 1M / 8000 = 125 s
    assert "| learned | 1 | 2.00M tok, 8.3 min | 4.00M tok, 16.7 min |" in table
    assert "(Some CPU, 2 threads, torch 9, 2026-12-07; evaluation not counted)" in table
    # a clock that misses a variant is not used at all: never two clocks in one table
    table = time_to_target(groups([learned, fixed]), [learned], Clock({"learned": 4000.0}, "Some CPU"))
    assert "1.00M tok, 2.5 min" in table and "(the step-time file does not time word2vec)" in table


def test_an_unfreeze_run_is_timed_at_two_rates_split_at_its_switch(tiny_corpus_dir: Path):
    from dataclasses import replace

    learned = finished(synthetic(tiny_corpus_dir, "learned-seed1", "learned", 1, 120.0, metrics=curve(
        [(1_000_000, 300, 300.0), (2_000_000, 600, 200.0)])), 2_000_000, 2, 7_000_000, 600)
    late = finished(synthetic(tiny_corpus_dir, "w2v-unfreeze-seed1", "word2vec", 1, 125.0, metrics=curve(
        [(800_000, 100, 299.0), (1_600_000, 250, 199.0)])), 2_000_000, 2, 7_000_000, 400)
    late.config = replace(late.config, head="unfreeze", unfreeze_at=0.25)
    clock = Clock({"learned": 2000.0, "w2v-unfreeze": 5000.0}, "Some CPU", {"w2v-unfreeze": 2500.0})
    # the switch is at 0.25 of its 2M-token budget: 500k tokens at the frozen rate, the rest at the learned one
    assert clock.seconds(late, 400_000) == 80.0
    assert clock.seconds(late, 800_000) == 500_000 / 5000 + 300_000 / 2500
    table = time_to_target(groups([learned, late]), [learned], clock)
    assert "| w2v-unfreeze | 1 | 800k tok, 3.7 min | 1.60M tok, 9.0 min |" in table and "(Some CPU;" in table
    # without the rate after the switch, or where a run's budget (so its switch) is unknown, wall-clock for all
    assert "(the step-time file does not time w2v-unfreeze)" in time_to_target(
        groups([learned, late]), [learned], Clock(clock.tok_s, "Some CPU"))
    late.summary["stop_reason"] = "time_budget"
    assert not clock.covers(late) and "does not time w2v-unfreeze" in time_to_target(
        groups([learned, late]), [learned], clock)


def test_a_step_time_file_round_trips_and_a_damaged_one_is_refused(tmp_path: Path):
    clock = Clock({"learned": 1503.5, "word2vec-top2000": 2790.25, "w2v-unfreeze": 4000.0},
                  "AMD EPYC, 2 threads, torch 2.13.0, 2026-12-07", {"w2v-unfreeze": 1400.0})
    clock.save(tmp_path / STEP_TIMES)
    assert Clock.load(tmp_path / STEP_TIMES) == clock
    # a file from before the unfreeze rates (none there) still loads
    (tmp_path / STEP_TIMES).write_text('{"machine": "x", "tok_s": {"learned": 1.5}}')
    assert Clock.load(tmp_path / STEP_TIMES) == Clock({"learned": 1.5}, "x")
    for text in ("{", '{"machine": "x"}', '{"machine": "x", "tok_s": {"learned": 0}}', '{"tok_s": [1]}',
                 '{"machine": "x", "tok_s": {"a": 1}, "after_unfreeze": {"a": -1}}',
                 '{"machine": "x", "tok_s": {"a": 1}, "after_unfreeze": [2]}'):
        (tmp_path / STEP_TIMES).write_text(text)
        with pytest.raises(LmfixError, match="lmfix bench recipe RECIPE --save$"):
            Clock.load(tmp_path / STEP_TIMES)


def test_frontier_plots_are_drawn_from_tested_runs(tiny_corpus_dir: Path, tmp_path: Path):
    runs = [finished(synthetic(tiny_corpus_dir, name, embed, 1, ppl), 100, 1, params, wall)
            for name, embed, ppl, params, wall in [("learned", "learned", 120.0, 7_000_000, 2400),
                                                   ("learned-400", "learned", 110.0, 16_000_000, 5000),
                                                   ("word2vec", "word2vec", 170.0, 700_000, 1600)]]
    plots = frontier_plots(runs, tmp_path)
    assert [p.name for p in plots] == ["frontier_params.png", "frontier_time.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in plots)
    assert frontier_plots([synthetic(tiny_corpus_dir, "x", "learned", 1, None)], tmp_path / "none") == []


def test_a_recipe_reuses_another_recipes_records_and_never_writes_there(tmp_path: Path, tiny_corpus_dir: Path):
    base = tiny_recipe(tmp_path / "base", tiny_corpus_dir, {"learned": '[train]\nembed = "learned"\n'})
    run_recipe(load_recipe(base), output=tmp_path / "out-base")
    before = {p: p.read_bytes() for p in (base / "results").rglob("*") if p.is_file()}
    heads = tiny_recipe(tmp_path / "heads", tiny_corpus_dir, {
        "learned": '[train]\nembed = "learned"\n',
        "rank": '[train]\nembed = "orthogonal"\nhead = "low-rank"\nhead_rank = 2\n'},
        'reuse = ["../base"]\nfrontier = true\n')
    events = []
    result = run_recipe(load_recipe(heads), output=tmp_path / "out-heads", on_event=events.append)
    assert [(e.kind, e.variant) for e in events if e.kind != "evaluate"] == [("adopt", "learned"), ("train", "rank")]
    assert {p: p.read_bytes() for p in (base / "results").rglob("*") if p.is_file()} == before
    assert not (heads / "results" / "learned").exists() and (heads / "results" / "rank" / "summary.json").is_file()
    assert "| rank | orthogonal (low-rank 2) |" in result.table and "to learned's 1-epoch" not in result.table
    assert {p.name for p in result.plots} >= {"frontier_params.png", "frontier_time.png"}
    summary = json.loads((heads / "results" / "rank" / "summary.json").read_text())
    assert summary["params"]["trainable"] < json.loads(
        (base / "results" / "learned" / "summary.json").read_text())["params"]["trainable"]

    # a reused record whose config differs from what this recipe asks is refused, before anything trains
    (heads / "learned.toml").write_text('[train]\nembed = "learned"\nnhid = 12\n')
    with pytest.raises(RecipeError, match="nhid = 16 there, 12 now"):
        run_recipe(load_recipe(heads), output=tmp_path / "out-heads")


def test_reuse_must_name_recipe_folders(tmp_path: Path, tiny_corpus_dir: Path):
    heads = tiny_recipe(tmp_path / "heads", tiny_corpus_dir, {"learned": '[train]\nembed = "learned"\n'},
                        'reuse = ["../nowhere"]\n')
    with pytest.raises(RecipeError, match="reuse names ../nowhere, which is not a recipe folder"):
        load_recipe(heads)


def test_bench_recipe_times_each_variant_with_its_parameters(tmp_path: Path, tiny_corpus_dir: Path, capsys):
    from lmfix.cli import main

    folder = tiny_recipe(tmp_path / "r", tiny_corpus_dir, {
        "learned": '[train]\nembed = "learned"\n',
        "rank": '[train]\nembed = "orthogonal"\nhead = "low-rank"\nhead_rank = 2\n',
        "late": '[train]\nembed = "orthogonal"\nhead = "unfreeze"\nunfreeze_at = 0.5\n'}, "seeds = [3, 4]\n")
    out = tmp_path / "bench.json"
    assert main(["bench", "recipe", str(folder), "--rounds", "1", "--steps", "2", "--warmup", "1",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    v, d = 61, 16
    saved = json.loads(out.read_text())
    result = saved["variants"]
    assert list(result) == ["learned", "rank", "late"] and all(r["steps"] == 2 and r["median_step_ms"] > 0
                                                               for r in result.values())
    # the learned model trains its V x d matrix, the low-rank one stores it frozen and trains (V + d) x 2 and alpha
    assert result["learned"]["params"]["trainable"] - result["rank"]["params"]["trainable"] == v * d - (v + d) * 2 - 1
    # the unfreeze variant is timed twice: frozen (before its switch) and with all of E learned (after it)
    after = saved["after_unfreeze"]
    assert list(after) == ["late"] and after["late"]["steps"] == 2
    assert after["late"]["params"]["trainable"] == result["late"]["params"]["trainable"] + v * d
    assert "late, unfrozen" in printed
    assert result["rank"]["params"]["stored"] == result["rank"]["params"]["trainable"] + v * d
    assert "rank" in printed and f"{result['rank']['params']['trainable']:,}" in printed


def test_bench_recipe_save_gives_the_recipe_one_clock(tmp_path: Path, tiny_corpus_dir: Path, capsys):
    from lmfix.cli import main

    whole_epoch = "max_tokens = 0\nepochs = 1\n"  # the time-to-target table needs a learned run of whole epochs
    folder = tiny_recipe(tmp_path / "r", tiny_corpus_dir, {
        "learned": f'[train]\nembed = "learned"\n{whole_epoch}',
        "rank": f'[train]\nembed = "orthogonal"\nhead = "low-rank"\nhead_rank = 2\n{whole_epoch}'},
        "frontier = true\n")
    before = run_recipe(load_recipe(folder), output=tmp_path / "out").table
    assert "Time: training wall-clock as each run measured it:" in before
    # one clock for the whole recipe: --save refuses a partial one
    assert main(["bench", "recipe", str(folder), "--only", "rank", "--save"]) == 2
    assert "drop --only" in capsys.readouterr().err and not (folder / "results" / STEP_TIMES).exists()
    assert main(["bench", "recipe", str(folder), "--rounds", "1", "--steps", "2", "--warmup", "1", "--save"]) == 0
    clock = Clock.load(folder / "results" / STEP_TIMES)
    assert set(clock.tok_s) == {"learned", "rank"} and all(rate > 0 for rate in clock.tok_s.values())
    # the report of the adopted records is timed on it, the same on every rerun
    events = []
    after = run_recipe(load_recipe(folder), output=tmp_path / "out", on_event=events.append)
    assert {e.kind for e in events} == {"skip"}
    assert f"({clock.machine}; evaluation not counted)" in after.table and "wall-clock" not in after.table
    assert run_recipe(load_recipe(folder), output=tmp_path / "out").table == after.table
    # a damaged clock is a one-line error, not a report timed on nothing, and it comes before any training
    (folder / "results" / STEP_TIMES).write_text("{")
    shutil.rmtree(folder / "results" / "rank")  # a run still to train
    assert main(["run", str(folder), "--output", str(tmp_path / "fresh"), "--no-progress"]) == 2
    assert "--save" in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "fresh" / "rank").exists()
