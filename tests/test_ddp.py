"""DistributedDataParallel with 2 CPU processes (gloo) through torchrun, as users launch it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmfix.train import train
from tests.test_train import TINY, one_thread, tiny_config  # noqa: F401  (one_thread: autouse fixture)

ROOT = Path(__file__).resolve().parent.parent
# Per-process batch 2 on 2 processes sees exactly the columns of batch 4 in one process.
SETTINGS = dict(batch_size=2, dropout=0.0, dropouth=0.0, dropouti=0.0, epochs=1, max_tokens=600, eval_interval=10)


def torchrun(corpus_dir: Path, run_dir: Path, **overrides) -> dict:
    flags = []
    for key, value in {**TINY, **SETTINGS, **overrides}.items():
        flags += ["--" + key.replace("_", "-"), str(value)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "lmfix",
           "train", "--corpus", str(corpus_dir), "--runs-dir", str(run_dir.parent), "--name", run_dir.name,
           "--no-progress", *flags]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gradient all-reduce" in proc.stdout and proc.stdout.count("best valid ppl") == 1  # rank 0 prints
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.slow
def test_two_processes_match_one_and_frozen_matrix_is_not_synchronized(tiny_corpus_dir: Path, tmp_path: Path):
    learned = torchrun(tiny_corpus_dir, tmp_path / "learned")
    single = train(tiny_config(tiny_corpus_dir, **{**SETTINGS, "batch_size": 4}), tmp_path / "single")
    assert learned["world_size"] == 2 and learned["tokens"] == single.tokens and learned["steps"] == single.steps
    assert learned["final_valid_ppl"] == pytest.approx(single.final_valid_ppl, rel=1e-4)
    assert learned["sync_bytes_per_step"] == learned["grad_bytes_per_step"] == 4 * learned["params"]["trainable"]

    fixed = torchrun(tiny_corpus_dir, tmp_path / "fixed", embed="orthogonal")
    assert fixed["sync_bytes_per_step"] == 4 * fixed["params"]["trainable"]
    vocab_times_dim = fixed["params"]["fixed"]
    # E (V x d) is all-reduced for the learned model only; the fixed one adds a scalar alpha
    assert learned["sync_bytes_per_step"] - fixed["sync_bytes_per_step"] == 4 * (vocab_times_dim - 1)
