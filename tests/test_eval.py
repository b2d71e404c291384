"""Evaluation (eval.json, batch size 1 for test) and sampling from a trained run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lmfix.analysis.evaluate import evaluate_run
from lmfix.analysis.generate import generate
from lmfix.cli import main
from lmfix.training.config import ConfigError
from lmfix.training.trainer import train
from tests.test_train import assert_one_line_error, one_thread, tiny_config  # noqa: F401


@pytest.fixture
def trained(tiny_corpus_dir: Path, tmp_path: Path) -> Path:
    train(tiny_config(tiny_corpus_dir, embed="hadamard", max_tokens=600), tmp_path / "run")
    return tmp_path / "run"


def test_evaluate_writes_both_splits_with_awd_batch_sizes(trained: Path, capsys):
    test = evaluate_run(trained, "test")
    valid = evaluate_run(trained, "valid")
    assert test["batch_size"] == 1 and valid["batch_size"] == 4  # the run's eval_batch_size
    saved = json.loads((trained / "eval.json").read_text())
    assert saved["test"]["ppl"] == test["ppl"] == pytest.approx(math.exp(test["loss"]))
    assert saved["valid"]["tokens"] == valid["tokens"] > 0
    summary = json.loads((trained / "summary.json").read_text())
    assert saved["valid"]["ppl"] == pytest.approx(summary["best_valid_ppl"], rel=1e-5)  # same weights, same data

    assert main(["evaluate", str(trained), "--split", "test", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "test ppl" in out and "batch size 2" in out
    assert json.loads((trained / "eval.json").read_text())["test"]["batch_size"] == 2


def test_generate_is_reproducible_with_a_seed(trained: Path, capsys):
    text = generate(trained, words=30, seed=4)
    assert text == generate(trained, words=30, seed=4)
    assert len(text.split()) <= 30 and all(w.startswith("w") for w in text.split())
    assert generate(trained, words=5, seed=1, prompt="w1 w2").startswith("w1 w2")
    for bad in (0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="temperature"):
            generate(trained, temperature=bad)
    assert main(["generate", str(trained), "--words", "10", "--seed", "1", "--temperature", "0.7"]) == 0
    assert capsys.readouterr().out.strip()
