"""A battery of hostile command lines, one per row, against every command.

Each row runs ``lmfix ARGS`` in-process inside a workspace holding a finished
run, two embedding artifacts, a recipe, damaged files and unrelated notes, and
asserts what the project promises for bad input: exit status 2, exactly one
error line that names the problem (and, where the table gives more, what to
do), no traceback, and every file of the workspace byte for byte as it was.
The deeper cases (interrupted and diverging runs, damaged caches, locks,
symlinks and pipes) live in ``test_hostile.py`` and the tests of each stage.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import pytest

from lmfix.analysis.evaluate import evaluate_run
from lmfix.cli import build_parser, main
from lmfix.embeddings import build
from lmfix.training.setup import load_corpus
from lmfix.training.trainer import train
from tests.conftest import write_tiny_corpus
from tests.test_train import TINY, one_thread, tiny_config  # noqa: F401


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Built once for the module: every row only reads it (and checks that it did)."""
    ws = tmp_path_factory.mktemp("battery")
    saved = os.environ.get("LMFIX_CACHE")
    os.environ["LMFIX_CACHE"] = str(ws / "cache")
    try:
        corpus_dir = write_tiny_corpus(ws / "corpus")
        config = tiny_config(corpus_dir, max_tokens=300)
        train(config, ws / "runs" / "good")
        evaluate_run(ws / "runs" / "good", "test")
        corpus = load_corpus(config)
        build("hadamard", corpus, 16, 0).save(ws / "h.npz")
        build("orthogonal", corpus, 16, 0).save(ws / "o.npz")
    finally:
        os.environ.pop("LMFIX_CACHE") if saved is None else os.environ.__setitem__("LMFIX_CACHE", saved)
    (ws / "notes.txt").write_text("my notes")
    (ws / "not-a-run").mkdir()
    (ws / "not-a-run" / "notes.txt").write_text("keep")
    (ws / "empty-corpus").mkdir()
    (ws / "garbage.npz").write_bytes(b"\x00not an artifact" * 10)
    (ws / "half.npz").write_bytes((ws / "o.npz").read_bytes()[:300])
    for damaged, name in (("latin1-config", "config.toml"), ("latin1-summary", "summary.json")):
        shutil.copytree(ws / "runs" / "good", ws / damaged)
        (ws / damaged / name).write_bytes(b"corpus = \"caf\xe9\"\n")  # not UTF-8
    recipe = ws / "recipe"
    recipe.mkdir()
    (recipe / "recipe.toml").write_text(
        f'[recipe]\nvariants = ["learned"]\nseeds = [1]\n[train]\ncorpus = "{corpus_dir}"\n'
        + "".join(f"{k} = {v!r}\n" for k, v in TINY.items()))
    (recipe / "learned.toml").write_text('[train]\nembed = "learned"\n')
    return ws


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` but the prepared-corpus cache, which commands may fill, and run locks."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "cache" not in p.relative_to(folder).parts and p.name != ".lock"}


T = "train --corpus {corpus} --runs-dir {ws}/runs --no-progress --emsize 16 --nhid 16 --max-tokens 200"
B = "build-embeddings orthogonal --corpus {corpus} --dim 16 -o {ws}/new.npz"

# (command line, words the single error line must contain)
CASES = [
    # prepare
    ("prepare {ws}/missing", "not found"),
    ("prepare {ws}/empty-corpus", "train.txt"),
    ("prepare {ws}/notes.txt", "notes.txt"),
    ("prepare {corpus} --tokenizer bogus", "unknown tokenizer 'bogus'; choose one of word, spm"),
    ("prepare {corpus} --vocab-size 0", "--vocab-size"),
    ("prepare {corpus} --vocab-size many", "'many' is not an integer"),
    ("prepare {corpus} --tokenizer spm --vocab-size 100000", "vocab"),
    # build-embeddings
    ("build-embeddings bogus --corpus {corpus} --dim 16", "unknown embedding method 'bogus'; choose one of"),
    (B.replace("--dim 16", "--dim 0"), "--dim"),
    (B.replace("--dim 16", "--dim -3"), "--dim"),
    (B.replace("--dim 16", "--dim wide"), "invalid int value: 'wide'"),
    (B.replace("--corpus {corpus}", "--corpus {ws}/missing"), "not found"),
    (B.replace("{ws}/new.npz", "{ws}/runs"), "runs"),
    ("embeddings info {ws}/runs", "runs"),
    ("build-embeddings word2vec --corpus {corpus} --dim 16 --window 0 -o {ws}/new.npz", "window must be >= 1, got 0"),
    ("build-embeddings word2vec --corpus {corpus} --dim 16 --epochs 0 -o {ws}/new.npz", "epochs must be >= 1, got 0"),
    ("build-embeddings pmi --corpus {corpus} --dim 16 --cds nan -o {ws}/new.npz", "cds must be in (0, 1], got nan"),
    ("build-embeddings pmi --corpus {corpus} --dim 16 --window -1 -o {ws}/new.npz", "window must be >= 1, got -1"),
    ("build-embeddings pmi --corpus {corpus} --dim 100 -o {ws}/new.npz", "--dim < the vocabulary size (61)"),
    ("build-embeddings hadamard --corpus {corpus} --dim 16 --layout sideways -o {ws}/new.npz", "sideways"),
    # embeddings
    ("embeddings info {ws}/missing.npz", "missing.npz"),
    ("embeddings info {ws}/garbage.npz", "garbage.npz"),
    ("embeddings info {ws}/half.npz", "half.npz"),
    ("embeddings info {ws}/notes.txt", "notes.txt"),
    ("embeddings neighbors {ws}/o.npz nosuchword", "nosuchword"),
    ("embeddings neighbors {ws}/o.npz w1 -k 0", "-k"),
    ("embeddings neighbors {ws}/garbage.npz w1", "garbage.npz"),
    ("embeddings export {ws}/o.npz --format bogus -o {ws}/x.txt", "invalid choice: 'bogus'"),
    ("embeddings export {ws}/missing.npz -o {ws}/x.txt", "missing.npz"),
    ("embeddings bogus {ws}/o.npz", "invalid choice: 'bogus'"),
    # train: flag values
    (T + " --lr -1", "--lr"),
    (T + " --lr nan", "--lr"),
    (T + " --lr 0", "--lr"),
    (T + " --clip inf", "--clip"),
    (T + " --weight-decay nan", "--weight-decay"),
    (T + " --alpha inf", "--alpha"),
    (T + " --emsize 0", "--emsize"),
    (T + " --nhid -1", "--nhid"),
    (T + " --nlayers 0", "--nlayers"),
    (T + " --dropout 1.5", "--dropout"),
    (T + " --dropouth -0.1", "--dropouth"),
    (T + " --batch-size 0", "--batch-size"),
    (T + " --bptt 0", "--bptt"),
    (T + " --batch-size 1000000", "too few for batch size 1000000; lower --batch-size"),
    (T + " --eval-batch-size 1000000", "lower --eval-batch-size (or raise --eval-tokens)"),
    (T + " --epochs -1", "--epochs"),
    (T + " --max-tokens lots", "'lots' is not a count"),
    (T + " --max-tokens inf", "inf must be a finite count"),
    (T + " --max-tokens nan", "nan must be a finite count"),
    (T + " --time-budget soon", "'soon' is not a duration"),
    (T + " --time-budget nanh", "nanh must be a finite duration"),
    (T + " --lr-decay 0.5", "--lr-decay"),
    (T + " --eval-interval -1", "--eval-interval"),
    (T + " --embed bogus", "unknown --embed 'bogus'; choose one of learned"),
    (T + " --optimizer bogus", "unknown --optimizer 'bogus'; choose one of sgd"),
    (T + " --precision fp8", "unknown --precision 'fp8'; choose one of fp32, bf16, auto"),
    (T + " --device tpu", "tpu"),
    # train: files and names
    (T + " --embeddings {ws}/missing.npz --embed orthogonal", "missing.npz"),
    (T + " --embeddings {ws}/garbage.npz --embed orthogonal", "garbage.npz"),
    (T + " --embeddings {ws}/o.npz --embed orthogonal --emsize 24", "--emsize"),
    (T + " --embeddings {ws}/o.npz --embed word2vec", "--embed orthogonal"),
    (T + " --name good", "already exists"),
    (T + " --name ../escape", "--name must be a plain folder name"),
    (T + " --name not-a-run --runs-dir {ws}", "not an lmfix run"),
    (T.replace("--corpus {corpus}", "--corpus {ws}/missing") + " --name new", "not found"),
    (T + " --vocab-size 8000 --name new", "--vocab-size and --spm-type are for --tokenizer spm"),
    ("train --resume {ws}/missing", "missing"),
    ("train --resume {ws}/not-a-run", "not a training run"),
    ("train --resume {ws}/runs/good --emsize 32", "--emsize"),
    ("train --resume {ws}/runs/good --lr 3", "--lr"),
    # evaluate
    ("evaluate {ws}/missing", "missing"),
    ("evaluate {ws}/not-a-run", "not a training run"),
    ("evaluate {ws}/runs/good --split train2", "unknown split 'train2'; choose one of train, valid, test"),
    ("evaluate {ws}/runs/good --batch-size 0", "--batch-size"),
    ("evaluate {ws}/runs/good --precision fp8", "invalid choice: 'fp8'"),
    ("evaluate {ws}/runs/good --device tpu", "tpu"),
    # generate
    ("generate {ws}/runs/good --temperature nan", "--temperature"),
    ("generate {ws}/runs/good --temperature 0", "--temperature"),
    ("generate {ws}/runs/good --temperature -1", "--temperature"),
    ("generate {ws}/runs/good --words 0", "--words"),
    ("generate {ws}/runs/good --words many", "'many' is not an integer"),
    ("generate {ws}/runs/good --prompt nosuchword", "nosuchword"),
    ("generate {ws}/missing", "missing"),
    ("generate {ws}/not-a-run", "not a training run"),
    # compare
    ("compare {ws}/missing", "missing"),
    ("compare {ws}/not-a-run", "not a training run"),
    ("compare {ws}/runs/good {ws}/not-a-run", "not a training run"),
    ("compare {ws}/runs/good {ws}/latin1-config", "config.toml ('utf-8' codec"),
    ("compare {ws}/runs/good {ws}/latin1-summary", "summary.json ('utf-8' codec"),
    ("evaluate {ws}/latin1-config", "config.toml ('utf-8' codec"),
    # run
    ("run {ws}/missing --output {ws}/out", "not found"),
    ("run {ws}/recipe --only bogus --output {ws}/out", "has no variant 'bogus'"),
    ("run {ws}/recipe --seeds 7 --output {ws}/out", "has no seed 7"),
    ("run {ws}/recipe --seeds one --output {ws}/out", "invalid int value: 'one'"),
    ("run {ws}/recipe --max-tokens lots --output {ws}/out", "'lots' is not a count"),
    ("run {ws}/recipe --max-tokens 1e999 --output {ws}/out", "1e999 must be a finite count"),
    ("run {ws}/notes.txt --output {ws}/out", "recipe.toml not found"),
    # bench
    ("bench head --precision fp8", "fp8"),
    ("bench train --variants bogus", "bogus"),
    ("bench train --rounds 0", "--rounds"),
    ("bench train --nhid 256", "plain ties its decoder to the embedding"),
    ("bench train --profile 0", "--profile"),
    ("bench train --precision fp8", "fp8"),
    ("bench train --corpus {ws}/missing", "not found"),
    ("bench train --gemm fast", "fast"),
    ("bench train --device tpu", "unknown --device 'tpu'"),
    ("bench train --device cuda", "no CUDA GPU is visible"),
    ("bench head --device cuda", "no CUDA GPU is visible"),
    ("bench embeddings --corpus {ws}/missing", "not found"),
    ("bench bogus", "invalid choice: 'bogus'"),
    ("bench gpu --device cpu --quick --out {ws}/notes.txt", "cannot write the results to --out"),
    # demo takes no settings
    ("demo --max-tokens 5", "unrecognized arguments: --max-tokens 5"),
    # no such command or flag
    ("bogus", "invalid choice: 'bogus'"),
    ("train --bogus-flag 1", "unrecognized arguments: --bogus-flag"),
]


@pytest.mark.parametrize(("line", "needle"), CASES, ids=range(len(CASES)))
def test_hostile_command_line(workspace: Path, capsys, line: str, needle: str):
    argv = line.format(ws=workspace, corpus=workspace / "corpus").split()
    before = snapshot(workspace)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors (usage line, then the error line)
        code = exc.code
    err = capsys.readouterr().err
    errors = [row for row in err.splitlines() if ": error:" in row]
    assert code == 2, err
    assert "Traceback" not in err and len(errors) == 1, err
    assert needle in errors[0], errors[0]
    assert snapshot(workspace) == before


def test_the_battery_covers_every_command():
    """Every command the CLI has (its parser, not a list kept here) gets hostile rows."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {line.split()[0] for line, _ in CASES} >= set(commands) and len(CASES) >= 90
