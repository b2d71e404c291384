"""Every body (LSTM, GRU, Transformer) with every kind of head: shapes, causality, frozen E, exact resume,
sliding-window evaluation, bf16, old runs, and one-line errors for settings a body does not have."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmfix.analysis.evaluate import evaluate_run
from lmfix.analysis.generate import generate
from lmfix.bench.train import BenchTrainConfig, bench_train
from lmfix.data.batching import BPTTStream, sliding_windows
from lmfix.model.config import ModelConfig
from lmfix.model.heads import DenseFixedHead, HadamardHead, LearnedHead, ParamCounts
from lmfix.model.language_model import LanguageModel
from lmfix.ops import make_layout
from lmfix.recipes.runner import load_recipe, run_recipe
from lmfix.training import checkpoint
from lmfix.training.config import CONFIG_FILE, ConfigError, TrainConfig, resume_config
from lmfix.training.trainer import corpus_loss, train
from tests.test_model import unit_rows
from tests.test_recipe import tiny_recipe
from tests.test_train import assert_one_line_error, one_thread, run_cli, tiny_config, tiny_flags  # noqa: F401
from tests.test_train_resume import HARD, assert_sigkill_then_resume_matches

V, D, T, B = 50, 16, 9, 3
MODELS = ("lstm", "gru", "transformer")
# every body, the Transformer with both kinds of positions
BODIES = {"lstm": {}, "gru": {}, "transformer": {"model": "transformer"},
          "transformer-learned": {"model": "transformer", "positions": "learned"}}
HEADS = {"learned": lambda: LearnedHead(V, D), "dense": lambda: DenseFixedHead(unit_rows()),
         "hadamard": lambda: HadamardHead(make_layout(V, D))}


def make_model(body: str, head: str, **overrides) -> LanguageModel:
    torch.manual_seed(0)
    settings = {"model": body, **BODIES[body], "emsize": D, "nhid": 24, "nlayers": 2, "nhead": 2, "bptt": T,
                "dropout": 0.0, "dropouth": 0.0, "dropouti": 0.0, **overrides}
    return LanguageModel(HEADS[head](), ModelConfig(**settings))


def batch(seed: int = 0, t: int = T) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(V, (t, B), generator=g), torch.randint(V, (t, B), generator=g)


# --------------------------------------------------------------------------- the body interface


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("body", BODIES)
def test_shapes_and_state(body: str, head: str):
    model = make_model(body, head)
    x, y = batch()
    state = model.init_state(B)
    features, new_state = model.features(x, state)
    assert features.shape == (T, B, D)
    assert model.logits(x, state)[0].shape == (T, B, V)
    assert model(x, y, state)[0].shape == ()
    widths = {"lstm": [(24, 24), (D, D)], "gru": [(24,), (D,)]}.get(body)
    if widths is None:  # the Transformer carries nothing: its context is the window
        assert state is None and new_state is None and model.body.context == T
    else:
        assert [tuple(t.shape[-1] for t in layer) for layer in new_state] == widths
        assert all(t.shape[:2] == (1, B) and t.grad_fn is not None for layer in new_state for t in layer)
        assert all(t.grad_fn is None for layer in model.detach(new_state) for t in layer)
        assert model.body.context is None


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("body", BODIES)
def test_outputs_never_see_later_tokens(body: str, head: str):
    model = make_model(body, head).eval()
    x, _ = batch()
    later = x.clone()
    later[5:] = (later[5:] + 1) % V
    with torch.no_grad():
        before, _ = model.features(x, model.init_state(B))
        after, _ = model.features(later, model.init_state(B))
    assert torch.equal(before[:5], after[:5])
    assert not torch.allclose(before[5:], after[5:])


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("body", BODIES)
def test_only_a_learned_matrix_gets_a_gradient(body: str, head: str):
    model = make_model(body, head, dropouti=0.2, dropouth=0.2, dropout=0.2, dropoute=0.1)
    matrix = model.head.embed(torch.arange(V)).detach().clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    state = model.init_state(B)
    for step in range(3):
        x, y = batch(step)
        loss, state = model(x, y, model.detach(state))
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.body.parameters())
        optimizer.step()
    if head == "learned":
        assert not torch.equal(model.head.embed(torch.arange(V)), matrix)
        return
    assert all(p.requires_grad for p in model.parameters())  # E is no parameter: only alpha, bias and the body
    if head == "dense":
        assert not model.head.weight.requires_grad and model.head.weight.grad is None
    assert torch.equal(model.head.embed(torch.arange(V)), matrix)


@pytest.mark.parametrize("body", BODIES)
def test_parameter_accounting(body: str):
    model = make_model(body, "hadamard")
    body_params = sum(p.numel() for p in model.body.parameters())
    assert model.counts() == ParamCounts(body_params + V + 1, 0, V * D)
    assert not list(model.body.buffers())  # sinusoidal positions are computed, never stored
    if body == "transformer-learned":
        sinusoidal = make_model("transformer", "hadamard").counts().trainable
        assert model.counts().trainable == sinusoidal + T * D


@pytest.mark.parametrize("body", ["gru", "transformer", "transformer-learned"])
def test_bf16_matches_fp32_and_keeps_float32_state(body: str):
    model = make_model(body, "dense")
    x, y = batch()
    reference, _ = model(x, y, model.init_state(B))
    model.set_precision(torch.bfloat16)
    loss, state = model(x, y, model.init_state(B))
    loss.backward()
    assert abs(loss.item() - reference.item()) <= 2e-2 * reference.item()
    assert state is None or all(t.dtype == torch.float32 for layer in state for t in layer)
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
    assert model.logits(x, model.init_state(B))[0].dtype == torch.float32


def test_learned_positions_refuse_a_longer_window():
    model = make_model("transformer-learned", "learned")
    with pytest.raises(ValueError, match="longer than the 9 learned positions"):
        model.features(batch(t=T + 1)[0], None)


# --------------------------------------------------------------------------- sliding-window evaluation


@pytest.mark.parametrize(("bptt", "stride"), [(5, 5), (5, 1), (5, 2), (7, 3), (1, 1), (30, 4)])
def test_sliding_windows_score_every_token_exactly_once(bptt: int, stride: int):
    data = torch.arange(23).view(-1, 1)
    windows = list(sliding_windows(data, bptt, stride))
    assert torch.equal(torch.cat([y for _, y in windows]), data[1:])  # every target once, in order
    for i, (x, y) in enumerate(windows):
        assert 1 <= len(y) <= len(x) <= bptt
        assert torch.equal(y, x[len(x) - len(y):] + 1)  # the targets of x's last positions
        assert i == 0 or len(x) - len(y) == bptt - stride  # context of the first scored token: bptt - stride + 1
    if stride == bptt:
        assert all(torch.equal(a, b) for w, v in zip(windows, BPTTStream(data, bptt), strict=True)
                   for a, b in zip(w, v, strict=True))
    with pytest.raises(ValueError, match="stride"):
        next(sliding_windows(data, bptt, bptt + 1))


def test_sliding_window_loss_is_the_per_token_loss_with_bptt_tokens_of_context():
    model = make_model("transformer", "learned").eval()
    data, bptt = torch.randint(V, (30, 2), generator=torch.Generator().manual_seed(1)), 6
    with torch.no_grad():
        total = sum(model(x, y, None, reduction="sum")[0].item() for x, y in BPTTStream(data, bptt))
        brute = sum(F.cross_entropy(model.logits(data[max(0, i - bptt + 1): i + 1], None)[0][-1], data[i + 1],
                                    reduction="sum").item() for i in range(29))
    side_by_side = corpus_loss(model, data, bptt)
    assert side_by_side == corpus_loss(model, data, bptt, stride=bptt) == (total / 58, 58)
    sliding, tokens = corpus_loss(model, data, bptt, stride=1)
    assert tokens == 58 and sliding == pytest.approx(brute / 58, rel=1e-5) and sliding != side_by_side[0]


# --------------------------------------------------------------------------- runs: train, resume, evaluate, sample


@pytest.mark.parametrize("embed", ["learned", "orthogonal", "hadamard"])
@pytest.mark.parametrize("model", MODELS)
def test_stop_and_resume_equals_one_run(model: str, embed: str, tiny_corpus_dir: Path, tmp_path: Path):
    # lr_decay 1: the validation a stop adds changes no schedule, so the two runs must agree to the bit
    randomness = dict(dropoute=0.1, variable_bptt=True, wdrop=0.0 if model == "transformer" else 0.2)
    config = tiny_config(tiny_corpus_dir, model=model, embed=embed, max_tokens=1000, lr_decay=1.0,
                         checkpoint_interval=100, **randomness)

    def recorder(losses: list[float]):
        return lambda event: losses.append(event.loss) if event.kind == "step" else None

    whole, split = [], []
    train(config, tmp_path / "whole", callback=recorder(whole))
    train(replace(config, max_tokens=400), tmp_path / "split", callback=recorder(split))
    assert len(split) < len(whole)
    train(resume_config(tmp_path / "split", {"max_tokens": 1000}), tmp_path / "split", resume=True,
          callback=recorder(split))
    assert split == whole
    weights = [checkpoint.load(tmp_path / run / checkpoint.LAST)["model"] for run in ("whole", "split")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize("model", ["gru", "transformer"])
def test_sigkill_then_resume_matches_an_uninterrupted_run(model: str, tiny_corpus_dir: Path, tmp_path: Path, capsys):
    hard = {**HARD, "wdrop": 0.0, "lr": 5.0} if model == "transformer" else HARD  # lr 30 diverges
    assert_sigkill_then_resume_matches(tiny_config(tiny_corpus_dir, model=model, **hard), tmp_path, capsys)


@pytest.fixture
def transformer_run(tiny_corpus_dir: Path, tmp_path: Path) -> Path:
    train(tiny_config(tiny_corpus_dir, model="transformer", embed="hadamard", max_tokens=600), tmp_path / "run")
    return tmp_path / "run"


def test_transformer_run_evaluates_with_a_sliding_window_and_samples(transformer_run: Path, capsys):
    assert TrainConfig.load(transformer_run).nhead == 2  # unset resolves, and is saved resolved
    side_by_side = evaluate_run(transformer_run, "test")
    same = evaluate_run(transformer_run, "test", stride=10)
    sliding = evaluate_run(transformer_run, "test", stride=3)
    assert side_by_side["stride"] == same["stride"] == 10 and sliding["stride"] == 3
    assert same["loss"] == side_by_side["loss"] and sliding["tokens"] == side_by_side["tokens"]
    assert sliding["loss"] != side_by_side["loss"]
    assert json.loads((transformer_run / checkpoint.EVAL).read_text())["test"]["stride"] == 3

    code, out, _ = run_cli(["evaluate", str(transformer_run), "--split", "valid", "--stride", "4"], capsys)
    assert code == 0 and "stride 4" in out
    prompt = " ".join(f"w{i}" for i in range(15))  # longer than the 10-token context
    text = generate(transformer_run, words=12, seed=2, prompt=prompt)
    assert text == generate(transformer_run, words=12, seed=2, prompt=prompt)
    assert text.startswith(prompt) and len(text.split()) <= 27


def test_gru_run_evaluates_and_samples(tiny_corpus_dir: Path, tmp_path: Path):
    train(tiny_config(tiny_corpus_dir, model="gru", embed="orthogonal", max_tokens=600), tmp_path / "run")
    assert evaluate_run(tmp_path / "run", "valid")["ppl"] < 61  # the tiny vocabulary has 61 words
    assert generate(tmp_path / "run", words=8, seed=1) == generate(tmp_path / "run", words=8, seed=1)


def test_a_recipe_trains_transformers_and_skips_them_when_run_again(tmp_path: Path, tiny_corpus_dir: Path):
    folder = tiny_recipe(tmp_path / "r", tiny_corpus_dir, {
        "learned": '[train]\nembed = "learned"\nmodel = "transformer"\nnhead = 4\n',
        "hadamard": '[train]\nembed = "hadamard"\nmodel = "transformer"\nnhead = 4\n'})
    result = run_recipe(load_recipe(folder), output=tmp_path / "out")
    assert {TrainConfig.load(d).model for d in result.run_dirs} == {"transformer"}
    events = []
    run_recipe(load_recipe(folder), output=tmp_path / "out", on_event=events.append)
    assert [e.kind for e in events] == ["skip"] * 2


@pytest.mark.parametrize("model", MODELS)
def test_bench_train_times_every_body(model: str, tiny_corpus_dir: Path):
    cfg = BenchTrainConfig(corpus=str(tiny_corpus_dir), model=model, emsize=16, nhid=16, nlayers=1, batch_size=2,
                           bptt=5, rounds=1, steps=1, warmup=1, variants=("plain", "learned", "hadamard"))
    result = bench_train(cfg)
    assert set(result["variants"]) == {"plain", "learned", "hadamard"} and result["config"]["model"] == model
    for timed in result["variants"].values():  # one timed step each, of that body: a rate, not a threshold
        assert timed["steps"] == 1 and timed["median_tok_s"] > 0
    assert set(result["ratios"]) == {"learned / plain", "hadamard / learned"}


def test_bench_train_profile_names_the_ops_that_take_the_time(tiny_corpus_dir: Path, capsys):
    args = ["bench", "train", "--corpus", str(tiny_corpus_dir), "--emsize", "16", "--nhid", "16", "--nlayers", "1",
            "--batch-size", "2", "--bptt", "5", "--rounds", "1", "--steps", "1", "--warmup", "1",
            "--variants", "learned", "--profile", "2"]
    code, out, _ = run_cli(args, capsys)
    assert code == 0
    profile = out[out.index("profile of learned (2 steps"):].splitlines()[1:]
    ms = [float(line.split()[0]) for line in profile]
    assert 1 <= len(ms) <= 12 and ms == sorted(ms, reverse=True) and ms[0] > 0
    assert any(line.split()[-1].startswith("aten::") for line in profile)


# --------------------------------------------------------------------------- runs from before the body interface


def test_an_lstm_run_saved_before_bodies_resumes_and_evaluates(tiny_corpus_dir: Path, tmp_path: Path):
    """Old checkpoints name the LSTM ``layers.N.lstm.*`` and hold its state as lists; old configs lack ``model``."""
    config = tiny_config(tiny_corpus_dir, embed="hadamard", max_tokens=400)
    train(config, tmp_path / "new")
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "new", old)
    (old / CONFIG_FILE).write_text(re.sub(r"^(model|nhead|positions) = .*\n", "", config.to_toml(), flags=re.M))
    assert "model" not in (old / CONFIG_FILE).read_text() and TrainConfig.load(old) == config
    for name in (checkpoint.LAST, checkpoint.BEST):
        state = checkpoint.load(old / name)
        state["model"] = {re.sub(r"^body\.layers\.(\d+)\.rnn\.", r"layers.\1.lstm.", k): v
                          for k, v in state["model"].items()}
        assert "layers.0.lstm.weight_hh_l0" in state["model"]
        if name == checkpoint.LAST:
            state["ranks"][0]["hidden"] = [list(layer) for layer in state["ranks"][0]["hidden"]]
        checkpoint.save(old / name, state)

    assert evaluate_run(old, "valid")["loss"] == evaluate_run(tmp_path / "new", "valid")["loss"]
    for run in ("new", "old"):
        train(resume_config(tmp_path / run, {"max_tokens": 800}), tmp_path / run, resume=True)
    weights = [checkpoint.load(tmp_path / run / checkpoint.LAST)["model"] for run in ("new", "old")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# --------------------------------------------------------------------------- settings a body does not have


@pytest.mark.parametrize(("flags", "needle"), [
    (["--model", "rnn"], "unknown --model 'rnn'; choose one of lstm, gru, transformer"),
    (["--nhead", "2"], "--nhead is for --model transformer; drop it for --model lstm"),
    (["--model", "gru", "--positions", "learned"], "--positions is for --model transformer"),
    (["--model", "transformer", "--nhead", "3"], "--nhead 3 must divide --emsize 16"),
    (["--model", "transformer", "--nhead", "-2"], "pick a divisor of 16"),
    (["--model", "transformer", "--positions", "rotary"], "unknown --positions 'rotary'"),
    (["--model", "transformer", "--wdrop", "0.1"], "--wdrop is DropConnect on recurrent weights"),
    (["--model", "transformer", "--positions", "learned", "--variable-bptt"], "use --positions sinusoidal"),
])
def test_settings_a_body_does_not_have_are_one_line_errors(flags: list[str], needle: str, tiny_corpus_dir: Path,
                                                            tmp_path: Path, capsys):
    code, _, err = run_cli(["train", *tiny_flags(tiny_corpus_dir, tmp_path / "runs"), *flags], capsys)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "runs").exists()


def test_recipe_values_of_the_wrong_type_and_bad_strides_are_one_line_errors(transformer_run: Path, tmp_path: Path,
                                                                             tiny_corpus_dir: Path, capsys):
    with pytest.raises(ConfigError, match="model = 2 should be str"):
        TrainConfig.from_dict({"model": 2})
    code, _, err = run_cli(["evaluate", str(transformer_run), "--stride", "11"], capsys)
    assert_one_line_error(code, err, "--stride must be between 1 and the run's bptt (10)")
    train(tiny_config(tiny_corpus_dir, max_tokens=100), tmp_path / "lstm")
    code, _, err = run_cli(["evaluate", str(tmp_path / "lstm"), "--stride", "5"], capsys)
    assert_one_line_error(code, err, "--stride is for a transformer run", "drop --stride")
    code, _, err = run_cli(["bench", "train", "--model", "rnn", "--corpus", str(tiny_corpus_dir)], capsys)
    assert_one_line_error(code, err, "unknown --model 'rnn'")
