"""A run killed with SIGKILL and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmfix.cli import main
from lmfix.training import checkpoint
from lmfix.training.config import TrainConfig
from lmfix.training.trainer import train
from tests.test_train import one_thread, tiny_config  # noqa: F401  (one_thread: autouse fixture)

# Everything that draws random numbers or changes the schedule mid-run is on.
HARD = dict(epochs=3, dropoute=0.1, wdrop=0.2, variable_bptt=True, optimizer="asgd", nonmono=1, lr=30.0,
            eval_interval=12, checkpoint_interval=7, log_interval=4)

# Trains like `lmfix train`, and stops mid-run (three steps past its first checkpoint, whose work the kill
# loses) until killed: it says so with a marker file, so the kill lands there however loaded the machine is.
CHILD = """
import json, pathlib, sys, time, torch
from lmfix.training.trainer import train
from lmfix.training.config import TrainConfig
torch.set_num_threads(1)
past = []
def hold_mid_run(event):
    if event.kind == "checkpoint" or (past and event.kind == "step"):
        past.append(event.kind)
    if past.count("step") == 3:
        pathlib.Path(sys.argv[3]).touch()
        time.sleep(3600)
train(TrainConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2], callback=hold_mid_run)
"""


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_corpus_dir: Path, tmp_path: Path, capsys, precision):
    assert_sigkill_then_resume_matches(tiny_config(tiny_corpus_dir, **HARD, precision=precision), tmp_path, capsys)


def assert_sigkill_then_resume_matches(config: TrainConfig, tmp_path: Path, capsys) -> None:
    """Train ``config`` once uninterrupted, once killed with SIGKILL after a checkpoint and resumed: same end."""
    reference = train(config, tmp_path / "reference")

    run, held = tmp_path / "killed", tmp_path / "held"
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(config.to_dict()), str(run), str(held)],
                             cwd=Path(__file__).resolve().parent.parent, env=dict(os.environ))
    deadline = time.monotonic() + 600  # against a hang only
    while not held.exists():
        assert child.poll() is None, "the training process ended before it was three steps past a checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    killed_at = checkpoint.load(run / checkpoint.LAST)["progress"]["step"]
    assert not (run / checkpoint.SUMMARY).exists() and killed_at + 3 < reference.steps

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    resumed = json.loads((run / checkpoint.SUMMARY).read_text())
    assert resumed["steps"] == reference.steps and resumed["tokens"] == reference.tokens
    assert abs(resumed["final_valid_ppl"] - reference.final_valid_ppl) <= 1e-6 * reference.final_valid_ppl
    assert abs(resumed["best_valid_ppl"] - reference.best_valid_ppl) <= 1e-6 * reference.best_valid_ppl

    def curve(path: Path) -> list[tuple]:
        records = checkpoint.MetricsLog(path / checkpoint.METRICS).read()
        return [(m["step"], m["tokens"], m["valid_ppl"]) for m in records]

    assert [s for s, _, _ in curve(run)] == [s for s, _, _ in curve(tmp_path / "reference")]  # no duplicates
    for (_, _, a), (_, _, b) in zip(curve(run), curve(tmp_path / "reference"), strict=True):
        assert (a is None) == (b is None) and (a is None or abs(a - b) <= 1e-6 * b)
    assert checkpoint.load(run / checkpoint.LAST)["optimizer_kind"] == "averaged"
    assert resumed["precision"] == config.precision


def test_ctrl_c_checkpoints_the_current_step_then_resume_continues(tiny_corpus_dir: Path, tmp_path: Path, capsys):
    run = tmp_path / "runs" / "learned"
    cmd = [sys.executable, "-m", "lmfix", "train", "--corpus", str(tiny_corpus_dir), "--runs-dir", str(run.parent),
           "--emsize", "16", "--nhid", "16", "--batch-size", "2", "--bptt", "5", "--epochs", "500",
           "--checkpoint-interval", "50", "--no-progress"]
    child = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parent.parent, env=dict(os.environ, OMP_NUM_THREADS="1"),
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (run / checkpoint.LAST).exists():
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert f"continue with: lmfix train --resume {run}" in err
    step = checkpoint.load(run / checkpoint.LAST)["progress"]["step"]
    assert step >= 50
    assert not (run / checkpoint.SUMMARY).exists()
    assert main(["train", "--resume", str(run), "--max-tokens", str(10 * (step + 3)), "--no-progress"]) == 0
    capsys.readouterr()
    assert json.loads((run / checkpoint.SUMMARY).read_text())["steps"] == step + 3
