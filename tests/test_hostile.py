"""Hostile inputs: each ends in a one-line error (exit 2) or a quiet, correct result, and nothing that
existed before is lost or changed."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from lmfix import atomic
from lmfix.cli import main
from lmfix.model.language_model import LanguageModel
from lmfix.training import checkpoint
from lmfix.training.rundir import claimed
from lmfix.training.trainer import TrainingDiverged, train
from tests.test_train import assert_one_line_error, one_thread, run_cli, tiny_config, tiny_flags  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (hidden ones included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def runs_with_a_finished_run(tiny_corpus_dir: Path, tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    train(tiny_config(tiny_corpus_dir, max_tokens=200), runs / "good")
    (runs / "notes.txt").write_text("my notes")
    (runs / "good" / ".lock").unlink()  # only lmfix's own lock file; the snapshot compares the rest
    return runs


@pytest.mark.parametrize(("name", "overwrite"), [
    (".", True), ("..", True), ("{elsewhere}", True), ("a/b", False), (".hidden", False), ("", False),
])
def test_name_is_a_folder_name_not_a_path(runs_with_a_finished_run, tiny_corpus_dir, capsys, name, overwrite):
    before = snapshot(runs_with_a_finished_run)
    name = name.format(elsewhere=runs_with_a_finished_run.parent / "elsewhere")  # an absolute path, never /tmp
    argv = ["train", *tiny_flags(tiny_corpus_dir, runs_with_a_finished_run), "--name", name, "--max-tokens", "100"]
    code, _, err = run_cli(argv + (["--overwrite"] if overwrite else []), capsys)
    assert_one_line_error(code, err, "--name must be a plain folder name")
    assert snapshot(runs_with_a_finished_run) == before


def test_overwrite_refuses_a_folder_that_is_not_a_run(tiny_corpus_dir, tmp_path, capsys):
    mine = tmp_path / "runs" / "mine"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        code, _, err = run_cli(["train", *tiny_flags(tiny_corpus_dir, tmp_path / "runs"), "--name", "mine", *extra],
                               capsys)
        assert_one_line_error(code, err, "not an lmfix run")
    assert snapshot(mine) == {"notes.txt": b"keep me"}


def test_overwrite_that_fails_before_its_first_checkpoint_gives_the_old_run_back(
        runs_with_a_finished_run, tiny_corpus_dir, monkeypatch):
    good = runs_with_a_finished_run / "good"
    before = snapshot(good)

    def nan_loss(self, *args, **kwargs):
        raise TrainingDiverged("training diverged at step 1 (a test)")

    monkeypatch.setattr(LanguageModel, "forward", nan_loss)
    with pytest.raises(TrainingDiverged):
        train(tiny_config(tiny_corpus_dir, max_tokens=100, lr=7.0), good, overwrite=True)
    after = snapshot(good)
    after.pop(".lock", None)
    assert after == before


def test_overwrite_replaces_only_lmfix_files(runs_with_a_finished_run, tiny_corpus_dir):
    good = runs_with_a_finished_run / "good"
    (good / "my-plot.png").write_bytes(b"png")
    train(tiny_config(tiny_corpus_dir, max_tokens=100, lr=7.0), good, overwrite=True)
    assert (good / "my-plot.png").read_bytes() == b"png" and not (good / ".previous").exists()
    assert "lr = 7.0" in (good / "config.toml").read_text()
    assert (runs_with_a_finished_run / "notes.txt").read_text() == "my notes"


def test_a_second_writer_of_one_run_is_refused_with_the_first_ones_pid(tiny_corpus_dir, tmp_path, capsys):
    run = tmp_path / "runs" / "busy"
    with claimed(run):
        code, _, err = run_cli(["train", *tiny_flags(tiny_corpus_dir, tmp_path / "runs"), "--name", "busy"], capsys)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    assert_one_line_error(code, err, "being written by another lmfix process", f"PID {os.getpid()}")
    assert not run.exists()  # the holder created the folder and wrote nothing else: it is gone with the lock


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--lr", "nan", "--lr"), ("--lr", "inf", "--lr"), ("--lr", "0", "--lr"), ("--lr", "-1", "--lr"),
    ("--clip", "nan", "--clip must be a finite number"), ("--weight-decay", "inf", "--weight-decay must be a finite"),
    ("--alpha", "nan", "--alpha must be a finite number"), ("--lr-decay", "inf", "--lr-decay must be a finite"),
    ("--dropout", "nan", "--dropout must be a finite"), ("--precision", "fp16", "--precision"),
])
def test_bad_training_flags_fail_before_anything_is_written(tiny_corpus_dir, tmp_path, capsys, flag, value, message):
    try:  # argparse's own type errors leave through SystemExit(2)
        code = main(["train", *tiny_flags(tiny_corpus_dir, tmp_path / "runs"), flag, value])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_an_exploding_loss_stops_the_run_even_while_finite(tiny_corpus_dir, tmp_path, capsys, optimizer):
    lr = {"sgd": "1e6", "adam": "50"}[optimizer]
    argv = ["train", *tiny_flags(tiny_corpus_dir, tmp_path / "runs"), "--name", "boom", "--optimizer", optimizer,
            "--lr", lr, "--clip", "0", "--eval-interval", "5", "--checkpoint-interval", "3"]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "training diverged", "ln V")
    run = tmp_path / "runs" / "boom"
    assert not (run / checkpoint.SUMMARY).exists()
    if (run / checkpoint.BEST).exists():  # best.pt, when written, is a model that had not diverged
        assert math.isfinite(checkpoint.load(run / checkpoint.BEST)["valid_loss"])
    if (run / checkpoint.LAST).exists():
        weights = checkpoint.load(run / checkpoint.LAST)["model"].values()
        assert all(bool(t.isfinite().all()) for t in weights if t.is_floating_point())


def test_evaluate_and_generate_refuse_a_changed_vocabulary(tiny_corpus_dir, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus_dir, corpus)
    run = tmp_path / "runs" / "learned"
    train(tiny_config(corpus, max_tokens=200), run)
    with (corpus / "train.txt").open("a") as f:
        f.write(" brandnewword another \n")
    for argv in (["evaluate", str(run)], ["generate", str(run), "--words", "3"]):
        code, _, err = run_cli(argv, capsys)
        assert_one_line_error(code, err, "vocabulary changed", str(run))
    assert not (run / checkpoint.EVAL).exists()


def test_a_checkpoint_from_another_run_is_refused(tiny_corpus_dir, tmp_path, capsys):
    small = tmp_path / "runs" / "small"
    big = tmp_path / "runs" / "big"
    train(tiny_config(tiny_corpus_dir, max_tokens=200), small)
    train(tiny_config(tiny_corpus_dir, max_tokens=200, nhid=32), big)
    shutil.copy(big / checkpoint.BEST, small / checkpoint.BEST)
    code, _, err = run_cli(["evaluate", str(small)], capsys)
    assert_one_line_error(code, err, "does not fit the model", "another run")
    shutil.copy(big / checkpoint.LAST, small / checkpoint.LAST)
    code, _, err = run_cli(["train", "--resume", str(small), "--max-tokens", "400", "--no-progress"], capsys)
    assert_one_line_error(code, err, "does not fit the model")


RECIPE_TOML = '[recipe]\nname = "r"\nvariants = ["learned"]\n'


@pytest.mark.parametrize(("recipe", "variant", "message"), [
    (RECIPE_TOML + "[trian]\nlr = 5.0\n", "[train]\n", "unknown section [trian]"),
    (RECIPE_TOML.replace('name = "r"', 'name = "r"\nvariant = ["x"]'), "[train]\n", "unknown key 'variant'"),
    (RECIPE_TOML + "[evaluate]\nsplt = 'test'\n", "[train]\n", "unknown key 'splt'"),
    (RECIPE_TOML, '[train]\nlr = "fast"\n', "lr = 'fast' should be float"),
    (RECIPE_TOML, "[train]\nemsize = 1.5\n", "emsize = 1.5 should be int"),
    (RECIPE_TOML, "[train]\nverify = 1\n", "verify = 1 should be bool"),
    (RECIPE_TOML, "[trian]\n", "unknown section(s) trian"),
    (RECIPE_TOML, "seeds = 1\n[train]\n", "learned.toml: seeds must be a list of distinct integers"),
    (RECIPE_TOML + "seeds = [1, 2]\n", "[train]\n", "recipe r has no seed 9; its seeds: 1, 2"),
    (RECIPE_TOML, "[train]\n", "recipe r has no seed 9; its seeds: none"),
])
def test_recipe_mistakes_are_named(tmp_path, capsys, recipe, variant, message):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "recipe.toml").write_text(recipe)
    (folder / "learned.toml").write_text(variant)
    code, _, err = run_cli(["run", str(folder), "--seeds", "9", "--output", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, message)


def test_output_through_a_symlink_keeps_the_link(tmp_path):
    target = tmp_path / "real.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    atomic.write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


def test_output_to_a_fifo_is_written_through(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    atomic.write_bytes(fifo, b"through the pipe")
    reader.join(timeout=10)
    assert got == [b"through the pipe"] and fifo.is_fifo()


def test_export_to_dev_stdout_prints_and_leaves_the_device(tiny_corpus_dir, tmp_path):
    artifact = tmp_path / "h.npz"
    assert main(["build-embeddings", "hadamard", "--corpus", str(tiny_corpus_dir), "--dim", "8", "-o",
                 str(artifact)]) == 0
    proc = subprocess.run([sys.executable, "-m", "lmfix", "embeddings", "export", str(artifact), "-o", "/dev/stdout"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split() == ["61", "8"] and os.path.islink("/dev/stdout")


def test_closing_the_pipe_early_ends_quietly(tiny_corpus_dir, tmp_path):
    artifact = tmp_path / "h.npz"
    assert main(["build-embeddings", "hadamard", "--corpus", str(tiny_corpus_dir), "--dim", "8", "-o",
                 str(artifact)]) == 0
    exporter = [sys.executable, "-m", "lmfix", "embeddings", "export", str(artifact), "-o", "/dev/stdout"]
    proc = subprocess.Popen(exporter, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader leaves before anything is read, as `| head -0` would
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 141) and b"Traceback" not in err, err.decode()


def _cut_vocab(prepared: Path) -> None:
    lines = (prepared / "vocab.txt").read_text().splitlines(keepends=True)
    (prepared / "vocab.txt").write_text("".join(lines[:10] + lines[11:]))


def _swap_vocab_lines(prepared: Path) -> None:
    lines = (prepared / "vocab.txt").read_text().splitlines(keepends=True)
    lines[5], lines[6] = lines[6], lines[5]
    (prepared / "vocab.txt").write_text("".join(lines))


@pytest.mark.parametrize(("damage", "message"), [
    (_cut_vocab, "vocab.txt has"),
    (lambda d: (d / "vocab.txt").write_text((d / "vocab.txt").read_text()[:40]), "ValueError"),
    (_swap_vocab_lines, "not the vocabulary the ids were made with"),
    (lambda d: np.save(d / "test.npy", np.zeros(0, dtype=np.int32)), "test.npy has 0 ids"),
    (lambda d: np.save(d / "valid.npy", np.full(np.load(d / "valid.npy").shape, 10**6, dtype=np.int32)),
     "valid.npy has ids outside the vocabulary"),
    (lambda d: (d / "train.npy").write_bytes(b"not numpy"), "unreadable"),
])
def test_a_damaged_prepared_corpus_is_refused_not_used(tiny_corpus_dir, capsys, damage, message):
    assert main(["prepare", str(tiny_corpus_dir)]) == 0
    prepared = next(Path(os.environ["LMFIX_CACHE"]).rglob("meta.json")).parent
    damage(prepared)
    capsys.readouterr()
    code, _, err = run_cli(["prepare", str(tiny_corpus_dir)], capsys)
    assert_one_line_error(code, err, message, "rerun with --force")
    code, out, _ = run_cli(["prepare", str(tiny_corpus_dir), "--force"], capsys)
    assert code == 0 and " 61 types" in out


def test_a_damaged_cache_description_is_prepared_again(tiny_corpus_dir, capsys):
    assert main(["prepare", str(tiny_corpus_dir)]) == 0
    next(Path(os.environ["LMFIX_CACHE"]).rglob("meta.json")).write_text("{}")
    code, out, _ = run_cli(["prepare", str(tiny_corpus_dir)], capsys)
    assert code == 0 and "prepared in" in out and " 61 types" in out


def test_a_build_that_cannot_fit_in_memory_is_refused_up_front(tiny_corpus_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("lmfix.embeddings.base.available_memory", lambda: 1 << 10)  # 1 KiB left
    code, _, err = run_cli(["build-embeddings", "orthogonal", "--corpus", str(tiny_corpus_dir), "--dim", "60",
                            "-o", str(tmp_path / "o.npz")], capsys)
    assert_one_line_error(code, err, "orthogonal 61 x 60 needs about", "lower --dim")
    assert not (tmp_path / "o.npz").exists()


def test_diagnostics_of_very_wide_rows_stay_in_bounded_memory():
    from lmfix.embeddings.diagnostics import chunk_rows, sample_rows

    assert chunk_rows(512) == 4096 and chunk_rows(65536) * 65536 * 8 <= 64 << 20
    assert sample_rows(2000, 512) == 2000 and sample_rows(2000, 65536) * 65536 * 8 <= 256 << 20


def test_first_line_of_an_error_quotes_one_line_and_never_nothing():
    from lmfix.errors import first_line

    assert first_line(RuntimeError("size mismatch\n  at layer 2")) == "size mismatch"
    assert first_line(OSError()) == "OSError" and first_line(ValueError("  \n")) == "ValueError"
    assert first_line(KeyError("x" * 300), 10) == "'xxxxxxxxx"
