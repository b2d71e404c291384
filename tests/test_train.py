"""Training runs on a tiny corpus: run files, optimizers, budgets, NaN handling and bad input."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lmfix.cli import main
from lmfix.model.heads import LearnedHead
from lmfix.model.language_model import LanguageModel
from lmfix.training import checkpoint
from lmfix.training.config import ConfigError, TrainConfig, resume_config
from lmfix.training.trainer import Trainer, TrainingDiverged, train

TINY = dict(emsize=16, nhid=24, nlayers=2, batch_size=4, eval_batch_size=4, bptt=10, epochs=1, lr=5.0,
            log_interval=5, checkpoint_interval=10, dropout=0.1, dropouth=0.1, dropouti=0.1)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: a second OpenMP thread only waits for a busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(corpus_dir: Path, **overrides) -> TrainConfig:
    return TrainConfig(corpus=str(corpus_dir), **{**TINY, **overrides})


def tiny_flags(corpus_dir: Path, runs_dir: Path) -> list[str]:
    flags = ["--corpus", str(corpus_dir), "--runs-dir", str(runs_dir), "--no-progress"]
    for key, value in TINY.items():
        flags += ["--" + key.replace("_", "-"), str(value)]
    return flags


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("lmfix: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_learned_run_writes_its_files_and_learns(tiny_corpus_dir, tmp_path):
    config = tiny_config(tiny_corpus_dir, epochs=2, eval_interval=20)
    result = train(config, tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.toml", "checkpoint.pt", "best.pt", "metrics.jsonl", "summary.json"):
        assert (run / name).is_file(), name
    assert TrainConfig.from_dict(tomllib.loads((run / "config.toml").read_text())) == config
    metrics = checkpoint.MetricsLog(run / "metrics.jsonl").read()
    assert {"step", "tokens", "train_loss", "lr", "alpha", "valid_ppl", "wall"} <= set(metrics[0])
    valid = [m["valid_ppl"] for m in metrics if m["valid_ppl"] is not None]
    assert len(valid) >= 4 and min(valid) < valid[0]
    assert result.best_valid_ppl == pytest.approx(min(valid))
    assert result.epochs == 2 and result.stop_reason == "epochs"
    assert result.best_valid_ppl < 40  # a unigram model of this corpus is at ~45
    summary = json.loads((run / "summary.json").read_text())
    assert summary["params"]["trainable"] == result.counts.trainable
    assert summary["grad_bytes_per_step"] == 4 * result.counts.trainable


def test_fixed_run_saves_no_matrix_and_learns_alpha(tiny_corpus_dir, tmp_path):
    result = train(tiny_config(tiny_corpus_dir, embed="orthogonal", alpha=5.0, eval_interval=25), tmp_path / "run")
    state = checkpoint.load(tmp_path / "run" / "checkpoint.pt")
    vocab = result.counts.fixed // 16
    assert not any(t.shape == (vocab, 16) for t in state["model"].values())
    assert state["embedding"]["method"] == "orthogonal" and len(state["embedding"]["id"]) == 16
    assert state["model"]["head.alpha"].item() != 5.0
    alphas = [m["alpha"] for m in checkpoint.MetricsLog(tmp_path / "run" / "metrics.jsonl").read()]
    assert len(set(alphas)) > 1


def test_config_toml_roundtrip_and_lr_default():
    config = TrainConfig(embed="hadamard", data_dir='we"ird\\path', fix_alpha=True, time_budget=1.5, optimizer="adam")
    assert config.lr == 1e-3
    assert TrainConfig.from_dict(tomllib.loads(config.to_toml())) == config
    with pytest.raises(ConfigError, match="unknown training setting"):
        TrainConfig.from_dict({"emsise": 3})


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_optimizers_train(tiny_corpus_dir, tmp_path, optimizer):
    result = train(tiny_config(tiny_corpus_dir, optimizer=optimizer, lr=0.0, max_tokens=400), tmp_path / "run")
    assert result.stop_reason == "max_tokens" and math.isfinite(result.best_valid_ppl)
    saved = checkpoint.load(tmp_path / "run" / checkpoint.LAST)["optimizer"]
    group = saved["param_groups"][0]  # lr 0 resolved to Adam's 1e-3; AdamW decouples its weight decay
    assert group["lr"] == 1e-3 and group["decoupled_weight_decay"] == (optimizer == "adamw")
    assert all({"exp_avg", "exp_avg_sq"} <= set(state) for state in saved["state"].values())


def test_adam_steps_a_fixed_heads_alpha_in_proportion_to_its_size(tiny_corpus_dir, tmp_path):
    """Adam's first step moves every parameter by lr; alpha's group has lr * |--alpha|."""
    one_step = tiny_config(tiny_corpus_dir, embed="orthogonal", alpha=8.0, optimizer="adam", lr=1e-3, max_tokens=40)
    train(one_step, tmp_path / "run")
    state = checkpoint.load(tmp_path / "run" / "checkpoint.pt")
    groups = state["optimizer"]["param_groups"]
    assert [g.get("lr_scale") for g in groups] == [None, 8.0] and len(groups[1]["params"]) == 1
    assert abs(state["model"]["head.alpha"].item() - 8.0) == pytest.approx(8e-3, rel=1e-3)
    bias = state["model"]["head.bias"] - torch.zeros_like(state["model"]["head.bias"])
    assert bias.abs().max().item() == pytest.approx(1e-3, rel=1e-3)  # the other parameters: lr


def test_resume_with_another_optimizer_layout_is_one_line(tiny_corpus_dir, tmp_path, capsys):
    """A fixed head's Adam run from before alpha had its own group (one group) is refused, untouched."""
    flags = [*tiny_flags(tiny_corpus_dir, tmp_path), "--name", "r", "--max-tokens", "40", "--embed", "orthogonal",
             "--optimizer", "adam", "--lr", "1e-3"]
    assert run_cli(["train", *flags], capsys)[0] == 0
    ckpt = tmp_path / "r" / "checkpoint.pt"
    state = checkpoint.load(ckpt)
    groups = state["optimizer"]["param_groups"]
    groups[0]["params"] += groups.pop()["params"]
    checkpoint.save(ckpt, state)
    before = ckpt.read_bytes()
    code, _, err = run_cli(["train", "--resume", str(tmp_path / "r"), "--max-tokens", "80"], capsys)
    assert_one_line_error(code, err, "parameter group", "train it again")
    assert ckpt.read_bytes() == before


def test_nt_asgd_switches_to_averaging_and_evaluates_the_average(tiny_corpus_dir, tmp_path):
    config = tiny_config(tiny_corpus_dir, optimizer="asgd", lr=30.0, nonmono=1, eval_interval=5, epochs=2)
    train(config, tmp_path / "run")
    state = checkpoint.load(tmp_path / "run" / "checkpoint.pt")
    assert state["optimizer_kind"] == "averaged"
    assert any("ax" in s for s in state["optimizer"]["state"].values())


def test_max_tokens_and_time_budget_stop_early(tiny_corpus_dir, tmp_path):
    result = train(tiny_config(tiny_corpus_dir, max_tokens=300), tmp_path / "a")
    assert result.stop_reason == "max_tokens" and 300 <= result.tokens < 340
    result = train(tiny_config(tiny_corpus_dir, time_budget=1e-9), tmp_path / "b")
    assert result.stop_reason == "time_budget" and result.steps <= 1
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["stop_reason"] == "time_budget"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_corpus_dir, tmp_path, monkeypatch):
    forward = LanguageModel.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        loss, hidden = forward(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 7:
                loss = loss * math.nan
        return loss, hidden

    monkeypatch.setattr(LanguageModel, "forward", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"step 7 .*checkpoint.pt \(step 6\) is kept"):
        train(tiny_config(tiny_corpus_dir, checkpoint_interval=3), run)
    state = checkpoint.load(run / "checkpoint.pt")
    assert state["progress"]["step"] == 6
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert not (run / "summary.json").exists()


# --------------------------------------------------------------------------- bad input through the CLI


def test_unknown_embed_is_one_line(tiny_corpus_dir, tmp_path, capsys):
    code, _, err = run_cli(["train", *tiny_flags(tiny_corpus_dir, tmp_path), "--embed", "glove"], capsys)
    assert_one_line_error(code, err, "unknown --embed 'glove'", "learned, learned-untied")
    assert not (tmp_path / "glove").exists()


def test_artifact_for_another_vocabulary_or_dimension_is_refused(tiny_corpus_dir, tmp_path, capsys):
    from lmfix.data.corpus import load
    from lmfix.embeddings import get_or_build
    from tests.conftest import write_tiny_corpus

    other = load(str(write_tiny_corpus(tmp_path / "other", vocab=40, seed=5)))
    foreign = get_or_build("orthogonal", other, 16).save(tmp_path / "foreign.npz")
    code, _, err = run_cli(["train", *tiny_flags(tiny_corpus_dir, tmp_path), "--embeddings", str(foreign)], capsys)
    assert_one_line_error(code, err, "another vocabulary")

    mine = load(str(tiny_corpus_dir))
    narrow = get_or_build("orthogonal", mine, 8).save(tmp_path / "narrow.npz")
    code, _, err = run_cli(["train", *tiny_flags(tiny_corpus_dir, tmp_path), "--embeddings", str(narrow)], capsys)
    assert_one_line_error(code, err, "dimension 8", "--emsize 8")


def test_existing_run_name_is_refused_unless_resume_or_overwrite(tiny_corpus_dir, tmp_path, capsys):
    flags = [*tiny_flags(tiny_corpus_dir, tmp_path), "--name", "r", "--max-tokens", "200"]
    assert run_cli(["train", *flags], capsys)[0] == 0
    before = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    code, _, err = run_cli(["train", *flags], capsys)
    assert_one_line_error(code, err, "already exists", "--resume", "--overwrite")
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == before
    code, out, _ = run_cli(["train", *flags, "--overwrite", "--seed", "3"], capsys)
    assert code == 0 and "best valid ppl" in out
    assert TrainConfig.load(tmp_path / "r").seed == 3


def test_resume_with_a_different_config_is_refused(tiny_corpus_dir, tmp_path, capsys):
    flags = [*tiny_flags(tiny_corpus_dir, tmp_path), "--name", "r", "--max-tokens", "200"]
    assert run_cli(["train", *flags], capsys)[0] == 0
    before = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    code, _, err = run_cli(["train", "--resume", str(tmp_path / "r"), "--lr", "3"], capsys)
    assert_one_line_error(code, err, "--lr 5.0", "not 3.0")
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == before
    with pytest.raises(ConfigError, match="--emsize"):
        resume_config(tmp_path / "r", {"emsize": 32})
    # budget fields may change: this continues the run
    code, _, _ = run_cli(["train", "--resume", str(tmp_path / "r"), "--max-tokens", "400", "--no-progress"], capsys)
    assert code == 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["tokens"] >= 400


def test_corrupt_checkpoint_is_one_line_and_untouched(tiny_corpus_dir, tmp_path, capsys):
    flags = [*tiny_flags(tiny_corpus_dir, tmp_path), "--name", "r", "--max-tokens", "200"]
    assert run_cli(["train", *flags], capsys)[0] == 0
    ckpt = tmp_path / "r" / "checkpoint.pt"
    garbage = ckpt.read_bytes()[:1000]
    ckpt.write_bytes(garbage)
    code, _, err = run_cli(["train", "--resume", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "corrupt")
    assert ckpt.read_bytes() == garbage
    (tmp_path / "r" / "best.pt").write_bytes(b"not a checkpoint")
    code, _, err = run_cli(["evaluate", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "best.pt", "corrupt")


def test_unwritable_run_directory_is_one_line(tiny_corpus_dir, tmp_path, capsys):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the runs directory should be")
    code, _, err = run_cli(["train", *tiny_flags(tiny_corpus_dir, blocker)], capsys)
    assert_one_line_error(code, err, "cannot write to run directory")
    assert blocker.read_text().startswith("a file")


def test_resume_without_checkpoint_and_contradicting_flags(tiny_corpus_dir, tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    tiny_config(tiny_corpus_dir).save(run)
    code, _, err = run_cli(["train", "--resume", str(run)], capsys)
    assert_one_line_error(code, err, "nothing to resume")
    code, _, err = run_cli(["train", "--resume", str(tmp_path / "missing")], capsys)
    assert_one_line_error(code, err, "not a training run")


def test_bad_gemm_backend_is_one_line_before_the_run_starts(tiny_corpus_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("lmfix.ops.gemm._backend", "mkl")  # as LMFIX_GEMM=mkl would set it at import
    assert main(["train", *tiny_flags(tiny_corpus_dir, tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown GEMM backend 'mkl'" in err and "LMFIX_GEMM" in err
    assert not (tmp_path / "runs").exists()


def test_nt_asgd_evaluation_swaps_in_the_averaged_weights_for_a_bf16_head_too():
    """A bf16 head keeps E rounded once per change of E; the swap to the averaged weights must count as one,
    or validation would score the averaged body with the non-averaged classifier."""
    head = LearnedHead(50, 16)
    head.use_operands(torch.bfloat16)
    params = list(head.parameters())
    optimizer = torch.optim.ASGD(params, lr=0.5, t0=0, lambd=0.0)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        head.loss(torch.randn(20, 16, generator=g), torch.randint(50, (20,), generator=g)).backward()
        optimizer.step()
        optimizer.zero_grad()
    current = head.operand_weight().clone()
    average = optimizer.state[head.weight]["ax"]
    assert not torch.equal(average.bfloat16(), current)
    trainer = SimpleNamespace(optimizer_kind="averaged", params=params, optimizer=optimizer)
    with Trainer._eval_weights(trainer):
        assert torch.equal(head.operand_weight(), average.bfloat16())
    assert torch.equal(head.operand_weight(), current)


def test_an_nt_asgd_checkpoint_from_a_gpu_resumes_on_the_cpu(tiny_corpus_dir, tmp_path):
    """ASGD is capturable on a GPU (its step count stays there); that flag is saved with the optimizer."""
    run = tmp_path / "run"
    train(tiny_config(tiny_corpus_dir, optimizer="asgd", lr=30.0, nonmono=1, eval_interval=5, max_tokens=600), run)
    state = checkpoint.load(run / checkpoint.LAST)
    assert state["optimizer_kind"] == "averaged"
    for group in state["optimizer"]["param_groups"]:
        group["capturable"] = True  # as a CUDA run saves it
    checkpoint.save(run / checkpoint.LAST, state)
    result = train(resume_config(run, {"max_tokens": 1200}), run, resume=True)
    assert result.tokens >= 1200 and math.isfinite(result.best_valid_ppl)
