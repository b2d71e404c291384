"""Hostile inputs, second pass: names that become paths, numbers, streams, bench, recipes, and the cases a new
user tried (``tests/README.md`` lists every case, what it must do, and what it did before).

The rows run ``lmfix ARGS`` in-process in test_battery's workspace (a finished run, artifacts, notes), to which
this module adds damaged corpora and broken recipes, and assert what test_battery asserts: exit 2, one error line
naming the problem, no traceback, every file of the workspace byte for byte as it was. Memory is what the test
says (1 GiB), so that a refusal does not depend on the machine running the tests.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmfix import atomic
from lmfix.analysis.generate import MIN_TEMPERATURE, generate, sample
from lmfix.bench.train import BenchTrainConfig, bench_train
from lmfix.cli import main
from lmfix.data.corpus import load
from lmfix.errors import LmfixError
from lmfix.model.registry import make_body
from lmfix.recipes.runner import load_recipe
from lmfix.training.config import FLOAT32_MAX, INT_MAX, ConfigError, TrainConfig
from lmfix.training.memory import body_parameters
from lmfix.training.rundir import check_run_name
from tests.test_battery import snapshot, workspace  # noqa: F401 (the fixture, one per module)
from tests.test_train import TINY, assert_one_line_error, one_thread, run_cli  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30
TINY_TRAIN = '[train]\ncorpus = "{corpus}"\n' + "".join(f"{k} = {v!r}\n" for k, v in TINY.items())
# recipe folder: (recipe.toml's [recipe] lines, {variant: VARIANT.toml})
LEARNED = {"learned": '[train]\nembed = "learned"\n'}
RECIPES = {
    "empty-list": ("variants = []", LEARNED),
    "no-variants": ("", {}),
    "string-variants": ('variants = "learned"', LEARNED),
    "twice": ('variants = ["learned", "learned"]', LEARNED),
    "escape": ('variants = ["../x"]', LEARNED),
    "empty-name": ('variants = [""]', LEARNED),
    "abs-output": ('output = "/tmp/elsewhere"', LEARNED),
    "up-output": ('output = "../outside"', LEARNED),
    "int-output": ("output = 5", LEARNED),
    "nul-output": ('output = "out\\u0000x"', LEARNED),
    "long-variant": (f'seeds = [1]\nvariants = ["{"v" * 236}"]', {"v" * 236: '[train]\nembed = "learned"\n'}),
    "huge-seed": ("seeds = [9223372036854775808]", LEARNED),
    "huge-lr": ("", {"big": "[train]\nlr = 1e308\n"}),
    "bad-option": ("", {"orth": '[train]\nembed = "orthogonal"\n[embeddings]\nbogus = 1\n'}),
    "ok": ('variants = ["learned"]', {**LEARNED, "other": '[train]\nembed = "learned"\n'}),
}
EVALUATE = {"bad-split": 'split = "bogus"', "zero-batch": "batch_size = 0", "text-batch": 'batch_size = "x"'}
# damaged corpus folders: {split: text, or None for no file, or "DIR" for a folder in its place}
CORPORA = {
    "empty-train": {"train": ""},
    "blank-train": {"train": "  \n\n \n"},
    "binary-train": {"train": b"\xff\xfe\x00garbage\x80\n" * 20},
    "no-valid": {"valid": None},
    "empty-valid": {"valid": ""},
    "dir-train": {"train": "DIR"},
}


def _corpus(folder: Path, damage: dict) -> None:
    folder.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        text = damage.get(split, "w1 w2 w3\n" * 30)
        if text == "DIR":
            (folder / f"{split}.txt").mkdir()
        elif text is not None:
            (folder / f"{split}.txt").write_bytes(text if isinstance(text, bytes) else text.encode())


@pytest.fixture(scope="module")
def ws(workspace: Path) -> Path:  # noqa: F811 (test_battery's fixture, extended)
    """test_battery's workspace with damaged corpora, broken recipes and a symlink loop added."""
    train_lines = TINY_TRAIN.format(corpus=workspace / "corpus")
    for name, (meta, variants) in {**RECIPES, **{k: ("", LEARNED) for k in EVALUATE}}.items():
        folder = workspace / "recipes" / name
        folder.mkdir(parents=True)
        evaluate = f"[evaluate]\n{EVALUATE[name]}\n" if name in EVALUATE else ""
        (folder / "recipe.toml").write_text(f"[recipe]\n{meta}\n{evaluate}{train_lines}")
        for variant, text in variants.items():
            (folder / f"{variant}.toml").write_text(text)
    for name, damage in CORPORA.items():
        _corpus(workspace / "bad" / name, damage)
    (workspace / "bad" / "loop").mkdir()
    for split in ("train", "valid", "test"):
        (workspace / "bad" / "loop" / f"{split}.txt").symlink_to(f"{split}.txt")
    return workspace


T = "train --corpus {corpus} --runs-dir {ws}/runs --no-progress --device cpu --emsize 16 --nhid 16 --max-tokens 200"
BENCH = "bench train --corpus {corpus} --device cpu --rounds 1 --steps 1 --warmup 1"
# Values a whitespace-split row cannot hold; each token of a row is formatted with them.
VALUES = {"long": "a" * 300, "e130": "é" * 130, "euro": "€" * 90, "nl": "new\nline", "tab": "a\tb",
          "huge": "99999999999999999999999"}

# (command line, words the single error line must contain)
CASES = [
    # names that become paths (issue 31)
    (T + " --name {long}", "is 300 bytes long; at most"),
    (T + " --name {e130}", "is 260 bytes long"),  # 130 characters, but bytes are what the file system counts
    (T + " --name {euro}", "is 270 bytes long"),
    (T + " --name {nl}", "holds a control character"),
    (T + " --name {tab}", "holds a control character"),
    (T.replace("{ws}/runs", "{deep}") + " --name a", "--runs-dir cannot be a folder"),
    ("train --resume {ws}/runs/good --name other", "drop --name"),
    ("build-embeddings orthogonal --corpus {corpus} --dim 8 -o {deep}.npz", "no such path can exist"),
    ("embeddings info {deep}.npz", "no such path can exist"),
    ("prepare {deep}", "no such path can exist"),
    ("run {deep}", "no such path can exist"),
    ("train --resume {deep}", "no such path can exist"),
    ("evaluate {deep}", "cannot read"),
    ("generate {deep}", "cannot read"),
    ("compare {ws}/runs/good --out {deep}", "is 300 bytes long; at most"),
    ("compare {ws}/runs/good {ws}/runs/../runs/good", "is given twice"),
    # recipes: names, output, settings checked before anything trains
    ("run {ws}/recipes/empty-list --output {ws}/out", "the recipe has no variants"),
    ("run {ws}/recipes/no-variants --output {ws}/out", "the recipe has no variants"),
    ("run {ws}/recipes/string-variants --output {ws}/out", "variants must be a list of distinct variant names"),
    ("run {ws}/recipes/twice --output {ws}/out", "variants must be a list of distinct variant names"),
    ("run {ws}/recipes/escape --output {ws}/out", "'../x' starts with '.'"),
    ("run {ws}/recipes/empty-name --output {ws}/out", "the name is empty"),
    ("run {ws}/recipes/abs-output", "output must be a relative folder"),
    ("run {ws}/recipes/up-output", "output must be a relative folder"),
    ("run {ws}/recipes/int-output", "output must be a relative folder like \"runs/int-output\", got 5"),
    ("run {ws}/recipes/nul-output", "holds a control character"),
    ("run {ws}/recipes/long-variant --output {ws}/out", "a run's folder is named after its variant"),
    ("run {ws}/recipes/huge-seed --output {ws}/out", "does not fit config.toml's 64-bit integers"),
    ("run {ws}/recipes/huge-lr --output {ws}/out", "big.toml: --lr 1e+308 is beyond float32's range"),
    ("run {ws}/recipes/bad-option --output {ws}/out", "orth.toml: orthogonal has no option 'bogus'"),
    ("run {ws}/recipes/bad-split --output {ws}/out", "[evaluate] takes split"),
    ("run {ws}/recipes/zero-batch --output {ws}/out", "batch_size = 0"),
    ("run {ws}/recipes/text-batch --output {ws}/out", "batch_size = 'x'"),
    ("run {ws}/recipes/ok/other.toml --output {ws}/out", "has no variant 'other'"),
    # numbers checked before work starts, and memory (issue 31)
    (T + " --lr 1e308", "--lr 1e+308 is beyond float32's range"),
    (T + " --alpha=-1e39 --embed orthogonal", "--alpha -1e+39 is beyond float32's range"),
    (T + " --weight-decay 1e39", "--weight-decay 1e+39 is beyond float32's range"),
    (T + " --seed -1", "--seed must be >= 0"),
    (T + " --seed {huge}", "--seed 99999999999999999999999 does not fit config.toml's 64-bit integers"),
    (T + " --embed-seed -1 --embed orthogonal", "--embed-seed must be >= 0"),
    (T + " --max-tokens 1e30", "does not fit config.toml's 64-bit integers"),
    (T + " --emsize 100000", "this model needs at least"),
    (T + " --nlayers 100000", "this model needs at least"),
    (T + " --nhid 100000 --optimizer adam", "optimizer state"),
    (T + " --model transformer --positions learned --bptt 1000000000", "this model needs at least"),
    ("build-embeddings hadamard --corpus {corpus} --dim 1000000000 -o {ws}/new.npz",
     "a hadamard layout of 1,000,000,000 columns needs about"),
    ("build-embeddings word2vec --corpus {corpus} --dim 100000000 -o {ws}/new.npz", "word2vec 61 x 100,000,000"),
    ("bench head --vocab 64 --dim 1000000000 --tokens 4 --repeats 1 --layouts distinct --precision fp32",
     "a batch of 4 x 1,000,000,000 with its gradients needs about"),
    (BENCH + " --emsize 100000 --nhid 100000", "this model needs at least"),  # plain, built first, too
    ("generate {ws}/runs/good --temperature 1e-300", "--temperature must be a finite number >= 2.94e-39"),
    ("generate {ws}/runs/good --seed {huge}", "--seed must be in"),
    # bench (issue 31)
    (BENCH + " --emsize 16 --nhid 16 --batch-size 4 --bptt 100000", "--bptt 100000 is longer than the training text"),
    (BENCH + " --batch-size 100000 --variants plain", "too few for batch size 100000"),
    # a new user's pass: these held, and stay held
    ("prepare {ws}/bad/empty-train", "train.txt is empty"),
    ("prepare {ws}/bad/blank-train", "train.txt is empty"),
    ("prepare {ws}/bad/binary-train", "is not UTF-8 text"),
    ("prepare {ws}/bad/no-valid", "has no valid split"),
    ("prepare {ws}/bad/empty-valid", "valid.txt is empty"),
    ("prepare {ws}/bad/dir-train", "has no train split"),
    ("prepare {ws}/bad/loop", "not found"),
    ("build-embeddings orthogonal --corpus {corpus} --dim 8 --seed -1 -o {ws}/new.npz", "--seed must be an integer"),
    ("build-embeddings hadamard --corpus {corpus} --dim 3 -o {ws}/new.npz", "cannot give 61 distinct rows"),
    ("embeddings export {ws}/o.npz -o {ws}/runs", "it is a directory"),
    ("embeddings neighbors {ws}/o.npz w1 -k 0", "-k: 0 must be >= 1"),
    (T.replace("{ws}/runs", "{ws}/notes.txt") + " --name a", "Not a directory"),
    (T.replace("{ws}/runs", "/dev/null") + " --name a", "Not a directory"),
    (T.replace("--corpus {corpus}", "--corpus {corpus}/train.txt") + " --name a", "not found"),
    ("train --resume {ws}/o.npz", "Not a directory"),
    (T + " --eval-tokens 1 --name a", "lower --eval-batch-size (or raise --eval-tokens)"),
    (T + " --log-interval 0 --name a", "--log-interval must be >= 1"),
    (T + " --model transformer --nhead 3 --name a", "--nhead 3 must divide --emsize 16"),
    (T + " --embed orthogonal --emsize 100 --name a", "orthogonal needs --dim <= the vocabulary size (61)"),
    ("evaluate {ws}/runs/good --stride 5", "--stride is for a transformer run"),
    ("evaluate {ws}/runs/good --split valid --batch-size 100000", "too few for batch size 100000"),
    ("generate {ws}/runs/good --words 0", "--words: 0 must be >= 1"),
    ("compare {ws}/runs/good --out {ws}/notes.txt", "cannot write"),
]


@pytest.mark.parametrize(("line", "needle"), CASES, ids=range(len(CASES)))
def test_hostile_command_line(ws: Path, capsys, monkeypatch, line: str, needle: str):
    for module in ("lmfix.training.memory", "lmfix.embeddings.base"):
        monkeypatch.setattr(f"{module}.available_memory", lambda: GIB)
    values = {**VALUES, "ws": ws, "corpus": ws / "corpus", "deep": ws / ("d" * 300)}
    argv = [token.format(**values) for token in line.split()]
    before = snapshot(ws)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    errors = [row for row in err.splitlines() if ": error:" in row]
    assert code == 2, err
    assert "Traceback" not in err and len(errors) == 1, err
    assert needle in errors[0], errors[0]
    assert snapshot(ws) == before


def test_a_run_name_leaves_room_for_the_temporary_names_beside_it(tmp_path):
    """The limit is the file system's: the longest accepted name still takes an atomic write beside it."""
    room = os.pathconf(tmp_path, "PC_NAME_MAX") - len("..12345678.tmp")
    assert check_run_name("a" * room, tmp_path) == tmp_path / ("a" * room)
    atomic.write_text(tmp_path / ("a" * room), "fits")  # through .NAME.XXXXXXXX.tmp
    with pytest.raises(ConfigError, match=f"is {room + 1} bytes long; at most {room} fit"):
        check_run_name("a" * (room + 1), tmp_path)
    with pytest.raises(LmfixError, match="File name too long"):
        atomic.write_text(tmp_path / ("a" * (room + 1)), "does not fit")


def test_number_limits_are_where_the_computation_breaks():
    """A seed of 2**63 - 1 plus a rank is still torch's; an lr at float32's top is a float32; one above is inf."""
    torch.Generator().manual_seed(INT_MAX + 7)
    assert torch.tensor(FLOAT32_MAX, dtype=torch.float32).isfinite()
    assert not torch.tensor(FLOAT32_MAX * 1.001, dtype=torch.float32).isfinite()
    assert TrainConfig(corpus="c", seed=INT_MAX, lr=FLOAT32_MAX).seed == INT_MAX
    with pytest.raises(ConfigError, match="does not fit config.toml's 64-bit integers"):
        TrainConfig(corpus="c", seed=INT_MAX + 1)
    with pytest.raises(ConfigError, match="beyond float32's range"):
        TrainConfig(corpus="c", lr=FLOAT32_MAX * 1.001)


@pytest.mark.parametrize("model", ["lstm", "gru", "transformer"])
def test_the_memory_estimate_counts_the_bodys_real_parameters(model):
    for layers in range(1, 6):
        config = TrainConfig(corpus="c", model=model, emsize=16, nhid=24, nlayers=layers,
                             positions="learned" if model == "transformer" else "").model_config()
        assert body_parameters(config) == sum(p.numel() for p in make_body(config).parameters())


def test_generate_streams_as_it_samples(ws):
    """The first words of a billion arrive at once (the whole text is never built first)."""
    started = time.monotonic()
    first = list(itertools.islice(sample(ws / "runs" / "good", words=10**9, seed=1), 6))
    assert len(first) == 6 and time.monotonic() - started < 60


def _lmfix(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lmfix", *args], cwd=ROOT, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, **popen)


def test_generate_into_head_prints_lines_at_once_and_ends_quietly(ws):
    proc = _lmfix("generate", str(ws / "runs" / "good"), "--words", "1000000000", "--seed", "1",
                  stdout=subprocess.PIPE)
    lines = [proc.stdout.readline() for _ in range(2)]  # `| head -2`: a billion words would never arrive at once
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert all(line.endswith(b"\n") for line in lines) and proc.returncode in (141, -signal.SIGPIPE)
    assert b"Traceback" not in err, err.decode()


@pytest.mark.parametrize(("where", "message"), [
    ("/dev/full", "cannot write to standard output: No space left on device"),
    (None, "standard output is closed"),  # `>&-`
])
def test_a_full_or_closed_stdout_is_a_one_line_error(ws, where, message):
    if where and not os.path.exists(where):
        pytest.skip(f"no {where} here")
    argv = ("generate", str(ws / "runs" / "good"), "--words", "5", "--seed", "1")
    if where:
        with open(where, "w") as out:
            proc = _lmfix(*argv, stdout=out)
    else:
        proc = _lmfix(*argv, preexec_fn=lambda: os.close(1))
    _, err = proc.communicate(timeout=120)
    lines = err.decode().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], err.decode()


def test_bench_counts_the_tokens_each_step_trained_on(tiny_corpus_dir):
    """Windows that an epoch's end cuts short count what they hold, not batch x bptt."""
    rows = len(load(str(tiny_corpus_dir)).train) // 2 - 1  # targets per sequence of a batch of 2
    bptt = rows * 2 // 3  # an epoch: one full window, one cut short
    cfg = BenchTrainConfig(corpus=str(tiny_corpus_dir), emsize=8, nhid=8, nlayers=1, batch_size=2, bptt=bptt,
                           rounds=1, steps=2, warmup=1, variants=("plain", "learned"))
    result = bench_train(cfg)
    for timed in result["variants"].values():  # warm-up: a full window; timed: the cut one, then a full one
        assert timed["tokens"] == 2 * (rows - bptt) + 2 * bptt


@pytest.mark.parametrize("flags", [
    ["--name=-dash"], ["--model", "gru", "--nlayers", "1"], ["--seed", str(INT_MAX)],
    ["--model", "transformer", "--positions", "learned", "--bptt", "1000"],
])
def test_runs_a_new_user_may_start_work(tiny_corpus_dir, tmp_path, capsys, flags):
    runs = tmp_path / "runs"
    argv = ["train", "--corpus", str(tiny_corpus_dir), "--runs-dir", str(runs), "--no-progress", "--device",
            "cpu", "--emsize", "8", "--nhid", "8", "--batch-size", "4", "--bptt", "10", "--max-tokens", "80", *flags]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert [(run.name, (run / "summary.json").is_file()) for run in runs.iterdir()] == \
        [("-dash" if "--name=-dash" in flags else "learned", True)]


def test_an_lr_at_the_top_of_float32_diverges_in_one_line(tiny_corpus_dir, tmp_path, capsys):
    argv = ["train", "--corpus", str(tiny_corpus_dir), "--runs-dir", str(tmp_path), "--no-progress", "--device",
            "cpu", "--emsize", "8", "--nhid", "8", "--batch-size", "4", "--bptt", "10", "--max-tokens", "80",
            "--lr", "3e38", "--clip", "0", "--name", "boom"]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "training diverged", "lr 3e+38")


@pytest.mark.parametrize("kwargs", [{"prompt": "<eos> w1"}, {"temperature": 1e38}, {"seed": -1}])
def test_generate_takes_every_setting_it_accepts(ws, kwargs):
    text = generate(ws / "runs" / "good", words=5, **{"seed": 1, **kwargs})
    assert all(word.startswith("w") for word in text.split()), text  # corpus words; <eos> ends a line
    assert text.startswith("w1") if "prompt" in kwargs else "<eos>" not in text


def test_the_lowest_temperature_always_takes_the_likeliest_word(ws):
    run = ws / "runs" / "good"
    assert generate(run, words=8, temperature=MIN_TEMPERATURE, seed=1) == \
        generate(run, words=8, temperature=MIN_TEMPERATURE, seed=2)


def test_a_recipe_folder_ignores_hidden_files_and_takes_any_name(tmp_path, tiny_corpus_dir):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "recipe.toml").write_text("[recipe]\nname = 5\n" + TINY_TRAIN.format(corpus=tiny_corpus_dir))
    (folder / "learned.toml").write_text(LEARNED["learned"])
    (folder / ".learned.toml").write_text("an editor's backup [")
    recipe = load_recipe(folder)
    assert [v.name for v in recipe.variants] == ["learned"] and recipe.name == 5


def test_words_outside_the_training_split_are_unk(tmp_path):
    corpus = tmp_path / "oov"
    _corpus(corpus, {"train": "w1 w2 w3\n" * 40, "test": "zz yy w1\n" * 5})
    loaded = load(str(corpus))
    assert loaded.vocab.unk_id is not None and loaded.test[:2].tolist() == [loaded.vocab.unk_id] * 2
