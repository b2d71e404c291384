"""``lmfix compare``: the markdown table against the learned tied baseline, and the plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmfix.analysis.compare import Run, compare_runs, gap_series, gap_table, gap_ticks, precision_table, variant
from lmfix.analysis.evaluate import evaluate_run
from lmfix.cli import main
from lmfix.training.trainer import train
from tests.test_train import assert_one_line_error, one_thread, tiny_config  # noqa: F401


def test_compare_table_and_plots(tiny_corpus_dir: Path, tmp_path: Path, capsys):
    runs = []
    for embed in ("learned", "orthogonal", "hadamard"):
        run = tmp_path / "runs" / embed
        train(tiny_config(tiny_corpus_dir, embed=embed, max_tokens=500, eval_interval=5), run)
        runs.append(run)
    evaluate_run(runs[0], "test")
    evaluate_run(runs[1], "test")

    table, plots = compare_runs(runs, tmp_path / "out")
    lines = table.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")] for r in lines[2:5]}
    col = {name: i for i, name in enumerate(header)}
    assert rows["learned"][col["Δ valid"]] == "+0.0%" and rows["learned"][col["trainable vs learned"]] == "+0.0%"
    assert rows["orthogonal"][col["trainable vs learned"]].startswith("-")
    assert rows["hadamard"][col["stored"]] == rows["hadamard"][col["trainable"]]  # E is generated, not stored
    assert rows["orthogonal"][col["stored"]] != rows["orthogonal"][col["trainable"]]
    assert rows["hadamard"][col["test ppl"]] == "—" and rows["orthogonal"][col["Δ test"]].endswith("%")
    assert "relative to the learned tied run learned" in table
    assert [p.name for p in plots] == ["valid_ppl.png", "alpha.png", "gap.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    assert (tmp_path / "out" / "compare.md").read_text() == table

    assert main(["compare", *map(str, runs[1:])]) == 0  # no learned baseline: still a table
    out = capsys.readouterr().out
    assert "No learned tied run" in out and (tmp_path / "runs" / "compare" / "compare.md").is_file()


def test_compare_refuses_an_unfinished_run(tmp_path: Path, tiny_corpus_dir: Path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    tiny_config(tiny_corpus_dir).save(run)
    assert_one_line_error(main(["compare", str(run)]), capsys.readouterr().err, "has not finished training")


def test_compare_refuses_runs_of_different_settings_unless_mixed(tiny_corpus_dir: Path, tmp_path: Path, capsys):
    small = tmp_path / "runs" / "small"
    wide = tmp_path / "runs" / "wide"
    seed2 = tmp_path / "runs" / "fixed-seed2"
    train(tiny_config(tiny_corpus_dir, max_tokens=200), small)
    train(tiny_config(tiny_corpus_dir, max_tokens=200, nhid=32, lr=4.0), wide)
    train(tiny_config(tiny_corpus_dir, max_tokens=200, embed="orthogonal", seed=2, embed_seed=2, alpha=3.0), seed2)
    code = main(["compare", str(small), str(wide)])
    assert_one_line_error(code, capsys.readouterr().err, "differ in lr, nhid", "small 24", "wide 32", "--mixed")
    assert main(["compare", str(small), str(wide), "--mixed"]) == 0
    assert "Warning: these runs differ in more than the matrix and the seeds: lr:" in capsys.readouterr().out
    # another matrix, its seeds and a fixed head's own options are what a comparison is about
    assert main(["compare", str(small), str(seed2)]) == 0
    assert "Warning" not in capsys.readouterr().out


def test_gap_curves_pair_each_seed_with_the_learned_run_of_that_seed(tiny_corpus_dir: Path):
    def run(name: str, embed: str, seed: int, curve: dict[int, float]) -> Run:
        metrics = [{"tokens": t, "valid_ppl": v} for t, v in curve.items()] + [{"tokens": 999, "valid_ppl": None}]
        return Run(Path(name), tiny_config(tiny_corpus_dir, embed=embed, seed=seed), {}, {}, metrics)

    runs = [run("learned-seed1", "learned", 1, {100: 200.0, 200: 100.0}),
            run("learned-seed2", "learned", 2, {100: 400.0, 200: 200.0}),
            run("pmi-seed1", "pmi", 1, {100: 220.0, 200: 90.0}),
            run("pmi-seed2", "pmi", 2, {100: 480.0, 200: 200.0, 300: 150.0}),
            run("hadamard-seed2", "hadamard", 2, {100: 200.0, 200: 300.0})]
    pmi, hadamard = gap_series(runs)
    # pmi: seed 1 +10% then -10%, seed 2 +20% then 0%; only the token counts both seeds logged
    assert pmi[0] == "pmi (mean of 2 seeds, band: min-max)" and pmi[1] == [100, 200]
    assert np.allclose(pmi[2:], [[15.0, -5.0], [10.0, -10.0], [20.0, 0.0]])
    assert hadamard[:2] == ("hadamard", [100, 200]) and np.allclose(hadamard[2], [-50.0, 50.0]) and len(hadamard) == 3
    assert gap_series([r for r in runs if r.config.embed != "learned"]) == []  # no baseline, no gap
    # the same numbers as a table, one value per seed, at the token counts every curve has
    table = gap_table(runs).splitlines()
    assert table[:4] == ["| group | seeds | 100 tok | 200 tok |", "|---|---|---|---|",
                         "| pmi | 1, 2 | +10.0/+20.0% | -10.0/+0.0% |", "| hadamard | 2 | -50.0% | +50.0% |"]
    assert gap_table(runs[2:]) is None


def test_gap_table_spreads_its_columns_over_training_and_names_epochs_when_known(tiny_corpus_dir: Path):
    def run(name: str, embed: str, seed: int, tokens: list[int], summary: dict) -> Run:
        metrics = [{"tokens": t, "valid_ppl": 100.0 + (embed == "pmi") * t} for t in tokens]
        return Run(Path(name), tiny_config(tiny_corpus_dir, embed=embed, seed=seed), summary, {}, metrics)

    # evaluations every 10 tokens and at each epoch's end (25, 50, 75, 100): not evenly spaced
    tokens = sorted({*range(10, 101, 10), 25, 75})
    whole = {"stop_reason": "epochs", "epochs": 4, "tokens": 100}
    runs = [run("learned-seed1", "learned", 1, tokens, whole), run("pmi-seed1", "pmi", 1, tokens, {})]
    header = gap_table(runs, columns=4).splitlines()[0]
    assert header == "| group | seeds | 10 tok (0.40 ep) | 40 tok (1.60 ep) | 70 tok (2.80 ep) | 100 tok (4.00 ep) |"
    runs[0].summary.update(stop_reason="max_tokens", epochs=3)  # a token budget: no epoch is known for sure
    assert gap_table(runs, columns=2).splitlines()[2] == "| pmi | 1 | +10.0% | +100.0% |"


def test_gap_axis_turns_logarithmic_past_50_percent_with_ticks_that_cover_the_data():
    assert gap_ticks([-12.0, 9.5, 50.0]) is None  # every gap within +-50%: a plain linear axis
    assert gap_ticks([-11.4, 7.7, 529.6]) == [-25, -10, 0, 10, 25, 50, 100, 200, 500, 1000]
    assert gap_ticks([-60.0, 3.0]) == [-75, -50, -25, -10, 0, 10]
    assert gap_ticks([0.0, 20_000.0])[-1] == 10000  # past the last tick: up to it


def test_precision_pairs_each_bf16_group_with_the_same_variant_in_fp32(tiny_corpus_dir: Path):
    def run(name: str, embed: str, seed: int, precision: str, test_ppl: float) -> Run:
        config = tiny_config(tiny_corpus_dir, embed=embed, seed=seed, embed_seed=seed, precision=precision)
        return Run(Path(name), config, {}, {"test": {"ppl": test_ppl}}, [])

    runs = [run("pmi-seed1", "pmi", 1, "fp32", 100.0), run("pmi-seed2", "pmi", 2, "fp32", 200.0),
            run("learned-seed1", "learned", 1, "fp32", 90.0),
            run("pmi-bf16-seed1", "pmi", 1, "bf16", 101.0), run("pmi-bf16-seed2", "pmi", 2, "bf16", 198.0),
            run("learned-bf16-seed3", "learned", 3, "bf16", 95.0)]  # no fp32 run of seed 3: no pair
    table = precision_table(runs)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "group" not in line]
    # pmi: +1% and -1% paired by seed: mean 0.0 over 2 seeds
    assert rows[0].startswith("| pmi-bf16 | pmi | +0.0% [") and rows[0].endswith("(2 seeds) |")
    assert rows[1] == "| learned-bf16 | — | — (no fp32 run of the same variant, seed and matrix) |"
    assert variant(runs[3]) == "pmi bf16" and variant(runs[0]) == "pmi"
    assert precision_table(runs[:3]) is None  # no other precision: no table


def synthetic(tiny_corpus_dir: Path, name: str, embed: str, seed: int, test_ppl: float | None,
              precision: str = "fp32", artifact: str | None = None, metrics: list | None = None) -> Run:
    """A finished run as ``load_run`` returns it, without training one."""
    config = tiny_config(tiny_corpus_dir, embed=embed, seed=seed, embed_seed=seed, precision=precision)
    summary = {"embedding": {"id": artifact}} if artifact else {}
    return Run(Path(f"/runs/{name}"), config, summary, {} if test_ppl is None else {"test": {"ppl": test_ppl}},
               metrics or [])


def test_precision_pairs_on_the_same_matrix_not_only_the_same_settings(tiny_corpus_dir: Path):
    runs = [synthetic(tiny_corpus_dir, "hadamard-seed1", "hadamard", 1, 200.0, artifact="distinct1"),
            synthetic(tiny_corpus_dir, "hadamard-truncated-seed1", "hadamard", 1, 300.0, artifact="truncated1"),
            synthetic(tiny_corpus_dir, "hadamard-truncated-bf16-seed1", "hadamard", 1, 303.0, "bf16", "truncated1")]
    # same settings as plain hadamard (the layout lives in the artifact): paired with its own layout, +1%
    assert "| hadamard-truncated-bf16 | hadamard-truncated | +1.0% (1 seed) |" in precision_table(runs)
    # a seed no fp32 run has is paired with nothing, not with the first group of the same settings
    other_seed = [*runs[:2], synthetic(tiny_corpus_dir, "hadamard-truncated-bf16-seed2", "hadamard", 2, 303.0, "bf16",
                                       "truncated2")]
    assert "| hadamard-truncated-bf16 | — | — (no fp32 run" in precision_table(other_seed)
    # a seed whose matrix differs (built elsewhere) is left out of the pairing, the others stay
    word2vec = [synthetic(tiny_corpus_dir, f"word2vec{p}-seed{s}", "word2vec", s, ppl, p.strip("-") or "fp32", m)
                for p, s, ppl, m in [("", 1, 100.0, "a"), ("", 2, 100.0, "b"), ("-bf16", 1, 102.0, "a"),
                                     ("-bf16", 2, 150.0, "B")]]
    assert "| word2vec-bf16 | word2vec | +2.0% (1 seed) |" in precision_table(word2vec)


def test_runs_of_one_name_in_two_folders_are_two_groups(tiny_corpus_dir: Path):
    from lmfix.analysis.compare import groups, seeds_table

    runs = [synthetic(tiny_corpus_dir, "learned", "learned", 1, 100.0), synthetic(tiny_corpus_dir, "learned",
                                                                                   "learned", 1, 110.0)]
    runs[1] = Run(Path("/elsewhere/learned"), runs[1].config, {}, runs[1].evals, [])
    assert list(groups(runs)) == ["learned", "elsewhere/learned"] and seeds_table(runs) is None


def test_seeds_table_says_what_its_numbers_cover(tiny_corpus_dir: Path):
    from lmfix.analysis.compare import seeds_table

    runs = [synthetic(tiny_corpus_dir, "learned-bf16-seed1", "learned", 1, 50.0, "bf16"),
            synthetic(tiny_corpus_dir, "learned-bf16-seed2", "learned", 2, 52.0, "bf16"),
            synthetic(tiny_corpus_dir, "learned-seed1", "learned", 1, 100.0),
            synthetic(tiny_corpus_dir, "learned-seed2", "learned", 2, 104.0),
            synthetic(tiny_corpus_dir, "pmi-seed1", "pmi", 1, 110.0),
            synthetic(tiny_corpus_dir, "pmi-seed2", "pmi", 2, None),  # not evaluated
            synthetic(tiny_corpus_dir, "pmi-seed3", "pmi", 3, 130.0),
            synthetic(tiny_corpus_dir, "orthogonal-seed7", "orthogonal", 7, 300.0),
            synthetic(tiny_corpus_dir, "orthogonal-seed8", "orthogonal", 8, 310.0)]
    rows = {line.split("|")[1].strip(): line for line in seeds_table(runs).splitlines() if line.startswith("| ")}
    # the baseline is the fp32 learned group even when a bf16 one comes first; pmi pairs seed 1 only
    assert rows["pmi"].endswith("| +10.0% (1 seed) |") and "120.00 ± 14.14 (2 of 3 runs)" in rows["pmi"]
    assert rows["orthogonal"].endswith("| — (no evaluated seed shared with learned) |")
    assert rows["learned"].endswith("| — |") and rows["learned-bf16"].endswith("(2 seeds) |")
    assert "Changes are against the group learned." in seeds_table(runs)


def test_two_runs_of_one_group_and_seed_are_refused(tiny_corpus_dir: Path):
    import pytest

    from lmfix.analysis.compare import CompareError, seeds_table

    twice = [synthetic(tiny_corpus_dir, "pmi-seed1", "pmi", 1, 110.0), synthetic(tiny_corpus_dir, "pmi-seed1", "pmi", 1,
                                                                                 120.0)]
    with pytest.raises(CompareError, match="both group pmi with seed 1: compare one of them"):
        seeds_table(twice)


def test_seeds_evaluated_at_different_token_counts_draw_no_gap_instead_of_failing(tiny_corpus_dir: Path):
    def curve(*tokens: int) -> list[dict]:
        return [{"tokens": t, "valid_ppl": 100.0} for t in tokens]

    runs = [synthetic(tiny_corpus_dir, "learned-seed1", "learned", 1, None, metrics=curve(100, 200)),
            synthetic(tiny_corpus_dir, "learned-seed2", "learned", 2, None, metrics=curve(110, 210)),
            synthetic(tiny_corpus_dir, "pmi-seed1", "pmi", 1, None, metrics=curve(100)),
            synthetic(tiny_corpus_dir, "pmi-seed2", "pmi", 2, None, metrics=curve(210))]
    assert gap_series(runs) == []  # the two seeds' gaps share no token count


def test_a_non_finite_perplexity_in_a_record_is_a_one_line_error(tiny_corpus_dir: Path, tmp_path: Path, capsys):
    run = tmp_path / "runs" / "learned"
    train(tiny_config(tiny_corpus_dir, max_tokens=200), run)
    (run / "eval.json").write_text('{"test": {"ppl": NaN, "batch_size": 1}}')
    assert_one_line_error(main(["compare", str(run)]), capsys.readouterr().err, "eval.json holds perplexity nan",
                          "lmfix evaluate")


def test_per_run_changes_are_against_the_learned_run_of_the_same_seed(tiny_corpus_dir: Path):
    from lmfix.analysis.compare import markdown_table

    def run(name: str, embed: str, seed: int, test_ppl: float, precision: str = "fp32") -> Run:
        result = synthetic(tiny_corpus_dir, name, embed, seed, test_ppl, precision)
        result.summary.update(params={"trainable": 100, "stored": 100, "total": 100}, best_valid_ppl=test_ppl,
                              train_tokens_per_second=1.0, wall_seconds=1.0)
        return result

    runs = [run("learned-bf16-seed1", "learned", 1, 99.0, "bf16"), run("learned-seed1", "learned", 1, 100.0),
            run("learned-seed2", "learned", 2, 200.0), run("pmi-seed1", "pmi", 1, 110.0),
            run("pmi-seed2", "pmi", 2, 230.0), run("pmi-seed3", "pmi", 3, 120.0)]
    table = markdown_table(runs)
    change = {line.split("|")[1].strip(): line.split("|")[10].strip() for line in table.splitlines()[2:8]}
    # the fp32 learned run of each seed (not learned-seed1 for all, nor the bf16 one listed first)
    assert change == {"learned-bf16-seed1": "-1.0%", "learned-seed1": "+0.0%", "learned-seed2": "+0.0%",
                      "pmi-seed1": "+10.0%", "pmi-seed2": "+15.0%", "pmi-seed3": "+20.0%"}
    assert ("Changes are relative to the learned tied run of the same seed (learned-seed1, learned-seed2); "
            "pmi-seed3: to learned-seed1.") in table
    assert "relative to the learned tied run learned-seed1." in markdown_table(runs[:2] + runs[3:4])
