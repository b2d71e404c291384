"""DistributedDataParallel with 2 CPU processes (gloo) through torchrun, as users launch it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lmfix.training import checkpoint
from lmfix.training.trainer import train
from tests.test_train import TINY, one_thread, tiny_config  # noqa: F401  (one_thread: autouse fixture)

ROOT = Path(__file__).resolve().parent.parent
# Per-process batch 2 on 2 processes sees exactly the columns of batch 4 in one process.
SETTINGS = dict(batch_size=2, dropout=0.0, dropouth=0.0, dropouti=0.0, epochs=1, max_tokens=600, eval_interval=10)


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "lmfix"]


def torchrun_env(**extra: str) -> dict[str, str]:
    """The environment at call time: it holds the test's own LMFIX_CACHE (see conftest), not the repo's cache."""
    return dict(os.environ, OMP_NUM_THREADS="1", **extra)


def torchrun_cmd(corpus_dir: Path, run_dir: Path, **overrides) -> list[str]:
    flags = []
    for key, value in {**TINY, **SETTINGS, **overrides}.items():
        flags += ["--" + key.replace("_", "-"), str(value)]
    return [*TORCHRUN, "train", "--corpus", str(corpus_dir), "--runs-dir", str(run_dir.parent),
            "--name", run_dir.name, "--no-progress", *flags]


def finished(cmd: list[str], run_dir: Path) -> dict:
    proc = subprocess.run(cmd, cwd=ROOT, env=torchrun_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gradient all-reduce" in proc.stdout and proc.stdout.count("best valid ppl") == 1  # rank 0 prints
    return json.loads((run_dir / checkpoint.SUMMARY).read_text())


def torchrun(corpus_dir: Path, run_dir: Path, **overrides) -> dict:
    return finished(torchrun_cmd(corpus_dir, run_dir, **overrides), run_dir)


def torchrun_resume(run_dir: Path) -> dict:
    return finished([*TORCHRUN, "train", "--resume", str(run_dir), "--no-progress"], run_dir)


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


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gru", "transformer"])
def test_every_body_trains_in_two_processes_as_in_one(tiny_corpus_dir: Path, tmp_path: Path, model: str):
    two = torchrun(tiny_corpus_dir, tmp_path / "two", model=model)
    one = train(tiny_config(tiny_corpus_dir, **{**SETTINGS, "batch_size": 4, "model": model}), tmp_path / "one")
    assert two["world_size"] == 2 and two["tokens"] == one.tokens and two["steps"] == one.steps
    assert two["final_valid_ppl"] == pytest.approx(one.final_valid_ppl, rel=1e-4)
    assert two["sync_bytes_per_step"] == two["grad_bytes_per_step"] == 4 * two["params"]["trainable"]


@pytest.mark.slow
def test_a_finished_run_leaves_no_ddp_wrapper_for_interpreter_exit(tiny_corpus_dir: Path, tmp_path: Path):
    """DDP's C++ reducer holds its communication hook where the garbage collector cannot see it. A hook that
    reached back to the trainer kept trainer, DDP wrapper and process group alive until interpreter exit,
    where gloo's teardown aborted a worker at random ("terminate called without an active exception")."""
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(f"""
        import gc, sys
        from pathlib import Path
        from torch.nn.parallel import DistributedDataParallel
        from lmfix.training.trainer import train
        from tests.test_train import tiny_config
        train(tiny_config(Path({str(tiny_corpus_dir)!r}), **{SETTINGS!r}), Path({str(tmp_path / "run")!r}))
        gc.collect()
        sys.exit(sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects()))
    """))
    env = torchrun_env(PYTHONPATH=str(ROOT))
    proc = subprocess.run([*TORCHRUN[:-2], str(worker)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]  # exit status: the DDP wrappers still alive after train()


@pytest.mark.slow
def test_ctrl_c_under_torchrun_checkpoints_and_resume_matches_an_uninterrupted_run(
        tiny_corpus_dir: Path, tmp_path: Path):
    # epochs=20: the token budget, not the (short) tiny epoch, ends the run, so Ctrl-C lands mid-run
    long = dict(epochs=20, max_tokens=16000, eval_interval=100, checkpoint_interval=50)
    reference = torchrun(tiny_corpus_dir, tmp_path / "reference", **long)

    run = tmp_path / "interrupted"
    # A terminal's Ctrl-C reaches torchrun and both workers (one process group); torchrun forwards it once more.
    child = subprocess.Popen(torchrun_cmd(tiny_corpus_dir, run, **long), cwd=ROOT, env=torchrun_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (run / checkpoint.LAST).exists():
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()[1][-3000:]
        time.sleep(0.01)
    os.killpg(child.pid, signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode != 0
    assert f"continue with: torchrun --nproc-per-node 2 -m lmfix train --resume {run}" in err, err[-3000:]
    step = checkpoint.load(run / checkpoint.LAST)["progress"]["step"]
    assert f"checkpoint saved at step {step:,};" in err  # the step it was on, not the last interval checkpoint
    assert 50 <= step < reference["steps"] and not (run / checkpoint.SUMMARY).exists()

    resumed = torchrun_resume(run)
    assert resumed["world_size"] == 2 and resumed["steps"] == reference["steps"]
    assert resumed["tokens"] == reference["tokens"]
    assert resumed["final_valid_ppl"] == pytest.approx(reference["final_valid_ppl"], rel=1e-6)


@pytest.mark.slow
def test_torchrun_starts_several_new_runs_in_a_row(tiny_corpus_dir: Path, tmp_path: Path):
    """A new run name under torchrun must never race: only rank 0 checks and creates the directory."""
    for i in range(3):
        summary = torchrun(tiny_corpus_dir, tmp_path / f"run{i}", max_tokens=200)
        assert summary["world_size"] == 2 and summary["tokens"] >= 200


# Each rank started by hand (what torchrun does), with the claim of the run directory held for 3 s after it
# created the directory and its lock file: a start where every rank checked the directory would see that
# rank's files and refuse (as the old start did with its temporary write-test file).
CONTENDED_RANK = """
import sys, time
import lmfix.training.trainer as trainer
real = trainer._claim
def slow(*args):
    real(*args)
    time.sleep(3)
trainer._claim = slow
from lmfix.cli import main
sys.exit(main(sys.argv[1:]))
"""


def launch_by_hand(cmd: list[str], attempts: int = 3) -> list[subprocess.CompletedProcess]:
    """Both ranks started by hand on a free port; again on another port if something took it in between."""
    for _ in range(attempts):
        done = _launch_on_a_free_port(cmd)
        if not any("address already in use" in proc.stderr.lower() for proc in done):
            return done
    return done


def _launch_on_a_free_port(cmd: list[str]) -> list[subprocess.CompletedProcess]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = torchrun_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                           MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-c", CONTENDED_RANK, *cmd], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outputs = [p.communicate(timeout=120) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("a rank hung: one rank refused to start while the other waited for it")
    return [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(procs, outputs, strict=True)]


@pytest.mark.slow
def test_new_run_directory_check_under_contention(tiny_corpus_dir: Path, tmp_path: Path):
    run = tmp_path / "contended"
    cmd = torchrun_cmd(tiny_corpus_dir, run, max_tokens=200)[len(TORCHRUN):]
    for proc in launch_by_hand(cmd):
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / checkpoint.SUMMARY).read_text())["world_size"] == 2

    # Rank 0 refuses the existing run; every rank fails with its message instead of hanging or training.
    for proc in launch_by_hand(cmd):
        assert proc.returncode == 2
        errors = [line for line in proc.stderr.splitlines() if line.startswith("lmfix: error:")]
        assert len(errors) == 1 and f"{run} already exists" in errors[0], proc.stderr[-3000:]
