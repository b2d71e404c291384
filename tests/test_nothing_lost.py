"""Nothing lost, nothing silently wrong: the five data-loss and wrong-answer cases of the reliability issue.

Each test hashes what a user had before the command and asserts it is unchanged after (or is exactly the old
run again), besides the exit code and the one-line message.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmfix.analysis.compare import CompareError, compare_runs
from lmfix.cli import main
from lmfix.recipes.runner import load_recipe, run_recipe
from lmfix.training.rundir import PREVIOUS, SET_ASIDE, recover, set_aside, settle_previous, settled
from lmfix.training.trainer import train
from tests.test_hostile import snapshot
from tests.test_recipe import tiny_recipe
from tests.test_train import assert_one_line_error, one_thread, run_cli, tiny_config, tiny_flags  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def without_lock(files: dict[str, bytes]) -> dict[str, bytes]:
    return {name: data for name, data in files.items() if name != ".lock"}


# ---------------------------------------------------------------- 1. recipe records keep a user's files


def test_a_recipe_rerun_keeps_a_users_files_and_reports_a_conflicting_record(tmp_path, tiny_corpus_dir):
    folder = tiny_recipe(tmp_path / "r", tiny_corpus_dir, {"learned": '[train]\nembed = "learned"\n'})
    run_recipe(load_recipe(folder), output=tmp_path / "out")
    record = folder / "results" / "learned"
    (record / "NOTES.md").write_text("why this run matters")
    events = []
    run_recipe(load_recipe(folder), output=tmp_path / "out", on_event=events.append)  # skipped as finished
    assert (record / "NOTES.md").read_text() == "why this run matters"
    assert [e.kind for e in events] == ["skip"]

    # A committed record that differs from the local run is kept, and the conflict named.
    summary = json.loads((record / "summary.json").read_text())
    summary["wall_seconds"] = 1.0
    (record / "summary.json").write_text(json.dumps(summary))
    before = snapshot(record)
    events.clear()
    run_recipe(load_recipe(folder), output=tmp_path / "out", on_event=events.append)
    assert snapshot(record) == before
    conflict = [e for e in events if e.kind == "conflict"]
    assert len(conflict) == 1 and "summary.json" in conflict[0].detail and "committed record is kept" in \
        conflict[0].detail


# ---------------------------------------------------------------- 2. --overwrite is a transaction

# Trains with --overwrite and holds before its first checkpoint until killed (a marker file says it is there).
OVERWRITER = """
import json, pathlib, sys, time, torch
from lmfix.training.trainer import train
from lmfix.training.config import TrainConfig
torch.set_num_threads(1)
def hold(event):
    if event.kind == "step":
        pathlib.Path(sys.argv[3]).touch()
        time.sleep(3600)
train(TrainConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2], overwrite=True, callback=hold)
"""


def test_an_overwrite_killed_before_its_first_checkpoint_leaves_the_old_run(tiny_corpus_dir, tmp_path, capsys):
    run = tmp_path / "runs" / "a"
    train(tiny_config(tiny_corpus_dir, max_tokens=200), run)
    old = without_lock(snapshot(run))
    config = tiny_config(tiny_corpus_dir, max_tokens=400, lr=7.0, checkpoint_interval=1000)
    held = tmp_path / "held"
    child = subprocess.Popen([sys.executable, "-c", OVERWRITER, json.dumps(config.to_dict()), str(run), str(held)],
                             cwd=ROOT, env=dict(os.environ))
    deadline = time.monotonic() + 300
    while not held.exists():
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert (run / PREVIOUS).is_dir()  # killed mid-overwrite

    # The next lmfix command that claims the folder finds the old run whole again.
    assert without_lock(snapshot(settled(run))) == old and not (run / PREVIOUS).exists()
    # and `--resume` (which said "nothing to resume ... start it again with --overwrite") continues it
    code, _, err = run_cli(["train", "--resume", str(run), "--no-progress"], capsys)
    assert code == 0, err
    assert (run / "checkpoint.pt").read_bytes() == old["checkpoint.pt"]  # finished: nothing more to train


def _old_run(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True)
    files = {"config.toml": b"old config", "checkpoint.pt": b"old last", "best.pt": b"old best",
             "metrics.jsonl": b"old metrics", "summary.json": b"old summary", "mine.txt": b"a user's file"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def test_every_kill_point_of_an_overwrite_recovers_to_one_whole_run(tmp_path):
    """Each state an --overwrite passes through, as a kill would leave it: recovery gives the old run back
    until the new run has a checkpoint, and the new run after."""
    run = tmp_path / "run"
    old = _old_run(run)
    # set_aside killed after two files: the rest are still in place, no mark yet
    keep = run / PREVIOUS
    keep.mkdir()
    for name in ("config.toml", "checkpoint.pt"):
        os.replace(run / name, keep / name)
    recover(run)
    assert snapshot(run) == old

    def overwritten_by(files: dict[str, bytes]) -> None:
        """An --overwrite that set the old run aside and wrote ``files``, killed there."""
        set_aside(run)
        for name, data in files.items():
            (run / name).write_bytes(data)

    # the new run wrote its config and metrics, no checkpoint: the old run again
    overwritten_by({"config.toml": b"new config", "metrics.jsonl": b"new metrics"})
    recover(run)
    assert snapshot(run) == old

    # a restore killed half way (the new files gone and the mark removed, one old file moved back)
    overwritten_by({})
    (keep / SET_ASIDE).unlink()
    os.replace(keep / "best.pt", run / "best.pt")
    recover(run)
    assert snapshot(run) == old

    # the new run wrote its first checkpoint: it is the run, the old files go
    overwritten_by({"config.toml": b"new config", "checkpoint.pt": b"new last"})
    recover(run)
    assert snapshot(run) == {"config.toml": b"new config", "checkpoint.pt": b"new last", "mine.txt": b"a user's file"}


def test_settling_after_a_failed_overwrite_is_the_old_run(tmp_path):
    run = tmp_path / "run"
    old = _old_run(run)
    set_aside(run)
    (run / "config.toml").write_bytes(b"new config")
    settle_previous(run, new_run_checkpointed=False)
    assert snapshot(run) == old


# ---------------------------------------------------------------- 3. an output is never an input


@pytest.fixture
def artifact(tiny_corpus_dir, tmp_path) -> Path:
    path = tmp_path / "h.npz"
    assert main(["build-embeddings", "orthogonal", "--corpus", str(tiny_corpus_dir), "--dim", "8", "-o",
                 str(path)]) == 0
    return path


def test_export_onto_its_own_input_is_refused(artifact, tmp_path, capsys):
    before = artifact.read_bytes()
    link = tmp_path / "same.npz"
    link.symlink_to(artifact)
    for out in (artifact, link):
        code, _, err = run_cli(["embeddings", "export", str(artifact), "-o", str(out), "--force"], capsys)
        assert_one_line_error(code, err, "the input of this command")
    assert artifact.read_bytes() == before


def test_an_existing_file_is_replaced_only_with_force(artifact, tiny_corpus_dir, tmp_path, capsys):
    mine = tmp_path / "mine.txt"
    mine.write_text("not lmfix's")
    code, _, err = run_cli(["embeddings", "export", str(artifact), "-o", str(mine)], capsys)
    assert_one_line_error(code, err, "already exists", "--force")
    assert mine.read_text() == "not lmfix's"
    code, _, err = run_cli(["build-embeddings", "orthogonal", "--corpus", str(tiny_corpus_dir), "--dim", "8",
                            "-o", str(mine)], capsys)
    assert_one_line_error(code, err, "already exists", "--force")
    assert mine.read_text() == "not lmfix's"
    code, _, _ = run_cli(["embeddings", "export", str(artifact), "-o", str(mine), "--force"], capsys)
    assert code == 0 and mine.read_text().split("\n")[0] == "61 8"


def test_a_full_device_is_a_one_line_error_not_a_silent_success(artifact, capsys):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    code, _, err = run_cli(["embeddings", "export", str(artifact), "-o", "/dev/full"], capsys)
    assert_one_line_error(code, err, "/dev/full")
    code, _, err = run_cli(["embeddings", "export", str(artifact), "-o", "/dev/null"], capsys)
    assert code == 0 and "Traceback" not in err


# ---------------------------------------------------------------- 4. a resume is the same experiment


def test_a_resumed_budget_is_recorded_or_refused(tiny_corpus_dir, tmp_path, capsys):
    run = tmp_path / "runs" / "a"
    train(tiny_config(tiny_corpus_dir, max_tokens=200), run)
    finished = snapshot(run)
    code, _, err = run_cli(["train", "--resume", str(run), "--max-tokens", "100", "--no-progress"], capsys)
    assert_one_line_error(code, err, "would train nothing", "larger budget")
    assert without_lock(snapshot(run)) == without_lock(finished)

    assert main(["train", "--resume", str(run), "--max-tokens", "400", "--no-progress"]) == 0
    assert "max_tokens = 400\n" in (run / "config.toml").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tokens"] >= 400 and summary["budget_changes"][0]["max_tokens"] == [200, 400]


def test_a_hand_edited_config_is_refused_on_resume(tiny_corpus_dir, tmp_path, capsys):
    run = tmp_path / "runs" / "a"
    train(tiny_config(tiny_corpus_dir, max_tokens=200), run)
    config = run / "config.toml"
    config.write_text(config.read_text().replace("lr = 5.0", "lr = 50.0"))
    before = snapshot(run)
    code, _, err = run_cli(["train", "--resume", str(run), "--max-tokens", "400", "--no-progress"], capsys)
    assert_one_line_error(code, err, "lr = 50.0", "was edited")
    assert without_lock(snapshot(run)) == without_lock(before)


def test_an_evaluation_older_than_the_best_checkpoint_is_not_reported(tiny_corpus_dir, tmp_path, capsys):
    run = tmp_path / "runs" / "a"
    train(tiny_config(tiny_corpus_dir, max_tokens=200, eval_interval=5), run)
    assert main(["evaluate", str(run)]) == 0
    train(tiny_config(tiny_corpus_dir, max_tokens=800, eval_interval=5), run, resume=True)
    best = json.loads((run / "summary.json").read_text())["provenance"]["best_step"]
    evaluated = json.loads((run / "eval.json").read_text())["test"]["step"]
    assert best != evaluated  # the run improved after its evaluation
    with pytest.raises(CompareError, match="not the best checkpoint the run ended with: evaluate it again"):
        compare_runs([run], tmp_path / "cmp")
    assert main(["evaluate", str(run)]) == 0
    capsys.readouterr()
    compare_runs([run], tmp_path / "cmp")


# ---------------------------------------------------------------- 5. compare the text, not the path


def test_compare_refuses_runs_of_different_text_at_the_same_path(tiny_corpus_dir, tmp_path, capsys):
    corpus = tmp_path / "wt"
    shutil.copytree(tiny_corpus_dir, corpus)
    train(tiny_config(corpus, max_tokens=200), tmp_path / "runs" / "before")
    with (corpus / "train.txt").open("a") as f:
        f.write(" w1 w2 w3 \n")  # the same words: the vocabulary may stay, the text does not
    train(tiny_config(corpus, max_tokens=200), tmp_path / "runs" / "after")
    runs = [tmp_path / "runs" / "before", tmp_path / "runs" / "after"]
    code, _, err = run_cli(["compare", *map(str, runs), "--out", str(tmp_path / "cmp")], capsys)
    assert_one_line_error(code, err, "differ in text")
    table, _ = compare_runs(runs, tmp_path / "cmp", mixed=True)
    assert "Warning: these runs differ in more than the matrix and the seeds: text:" in table


def test_compare_refuses_runs_evaluated_differently(tiny_corpus_dir, tmp_path, capsys):
    runs = [tmp_path / "runs" / name for name in ("a", "b")]
    for run in runs:
        train(tiny_config(tiny_corpus_dir, max_tokens=200), run)
    assert main(["evaluate", str(runs[0])]) == 0
    assert main(["evaluate", str(runs[1]), "--batch-size", "4"]) == 0
    capsys.readouterr()
    with pytest.raises(CompareError, match="test evaluation"):
        compare_runs(runs, tmp_path / "cmp")


def test_compare_replaces_in_its_output_folder_only_what_lmfix_wrote(tiny_corpus_dir, tmp_path, capsys):
    run = tmp_path / "runs" / "a"
    train(tiny_config(tiny_corpus_dir, max_tokens=200), run)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "compare.md").write_text("my own notes on the comparison")
    (out / "gap.png").write_bytes(b"\x89PNG my own figure")
    for name in ("compare.md", "gap.png"):
        before = snapshot(out)
        code, _, err = run_cli(["compare", str(run), "--out", str(out)], capsys)
        assert_one_line_error(code, err, "lmfix did not write it", "--force")
        assert snapshot(out) == before
        (out / name).unlink()  # the next refusal is the other file's
    code, _, err = run_cli(["compare", str(run), "--out", str(out)], capsys)
    assert code == 0, err
    code, _, err = run_cli(["compare", str(run), "--out", str(out)], capsys)  # its own files: replaced again
    assert code == 0, err
    (out / "compare.md").write_text("mine again")
    code, _, err = run_cli(["compare", str(run), "--out", str(out), "--force"], capsys)
    assert code == 0 and (out / "compare.md").read_text().startswith("| run | variant |")


def test_a_run_refused_before_it_wrote_anything_leaves_no_folder(tiny_corpus_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("lmfix.training.memory.available_memory", lambda: 1 << 30)
    runs = tmp_path / "runs"
    code, _, err = run_cli(["train", *tiny_flags(tiny_corpus_dir, runs), "--name", "big", "--emsize", "100000"],
                           capsys)
    assert_one_line_error(code, err, "this model needs at least")
    assert not (runs / "big").exists()
