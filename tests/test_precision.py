"""bf16: fused losses against float64, the model's numerics, and --precision through training and evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmfix.analysis.evaluate import evaluate_run
from lmfix.model.config import ModelConfig
from lmfix.model.heads import DenseFixedHead, HadamardHead, LearnedHead
from lmfix.model.language_model import LanguageModel
from lmfix.ops import dense_cross_entropy, hadamard_cross_entropy, make_layout, precision
from lmfix.training import checkpoint
from lmfix.training.trainer import train
from tests.test_train import assert_one_line_error, one_thread, run_cli, tiny_config, tiny_flags  # noqa: F401

# Stated tolerances for bf16 operands (8-bit mantissa, float32 accumulation and softmax):
# the mean loss to 1e-3 relative, each gradient to 2e-2 in relative norm.
LOSS_RTOL, GRAD_RTOL = 1e-3, 2e-2


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("learned", [False, True])
# softmax blocks of rows: 1 (G's rows summed one at a time), 7, 32; None: a GPU's whole chunk at once
@pytest.mark.parametrize("block", [1, 7, 32, None])
def test_dense_loss_bf16_matches_float64(learned, block, monkeypatch):
    monkeypatch.setattr("lmfix.ops.dense_loss._LOW_CHUNK_ELEMENTS", 60 * 3000)  # several chunks of 50 rows
    monkeypatch.setattr("lmfix.ops.dense_loss._softmax_rows", lambda x: block)
    gen = torch.Generator().manual_seed(0)
    n, d, v = 200, 48, 3000
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w = torch.randn(v, d, generator=gen, dtype=torch.float64) / 7
    b = torch.randn(v, generator=gen, dtype=torch.float64)
    a = torch.tensor(2.5, dtype=torch.float64)
    y = torch.randint(0, v, (n,), generator=gen)

    ref_in = [t.clone().requires_grad_() for t in (x, a, b, w)]
    ref = F.cross_entropy(ref_in[1] * ref_in[0] @ ref_in[3].T + ref_in[2], y)
    want = torch.autograd.grad(ref, ref_in if learned else ref_in[:3])

    xs, s, bs = (t.float().requires_grad_() for t in (x, a, b))
    ws = w.float().requires_grad_() if learned else w.to(torch.bfloat16)  # a frozen E is stored in bf16
    loss = dense_cross_entropy(xs, y, ws, bs, s, operands=torch.bfloat16)
    got = torch.autograd.grad(loss, [xs, s, bs, ws] if learned else [xs, s, bs])
    assert loss.dtype == torch.float32 and all(g.dtype == torch.float32 for g in got)
    assert abs(loss.item() - ref.item()) <= LOSS_RTOL * ref.item()
    for g, r in zip(got, want, strict=True):
        assert rel(g, r) <= GRAD_RTOL


def test_hadamard_loss_takes_bf16_input_and_computes_in_float32():
    # The transform sums d terms per logit, so it runs in float32 for bf16 input; the result keeps the
    # input's dtype (as F.cross_entropy does); the model hands the head float32 features anyway.
    layout = make_layout(1000, 64, "distinct", seed=1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 64, generator=gen).bfloat16()
    y = torch.randint(0, 1000, (50,), generator=gen)
    loss = hadamard_cross_entropy(x.float().requires_grad_(), y, layout, alpha=4.0)
    logits = 4.0 * x.double() @ layout.dense(torch.float64).T
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    low = hadamard_cross_entropy(x, y, layout, alpha=4.0)
    assert low.dtype == torch.bfloat16 and low.item() == pytest.approx(loss.item(), rel=2**-8)


@pytest.mark.parametrize("head", ["learned", "dense", "hadamard"])
def test_bf16_model_matches_fp32_and_keeps_float32_state(head):
    v, d = 500, 32
    torch.manual_seed(0)
    heads = {
        "learned": lambda: LearnedHead(v, d),
        "dense": lambda: DenseFixedHead(F.normalize(torch.randn(v, d), dim=1), alpha=8.0),
        "hadamard": lambda: HadamardHead(make_layout(v, d), alpha=8.0),
    }
    model = LanguageModel(heads[head](), ModelConfig(emsize=d, nhid=40, dropout=0, dropouth=0, dropouti=0))
    ids, y = torch.randint(0, v, (12, 3)), torch.randint(0, v, (12, 3))
    ref, _ = model(ids, y, model.init_state(3))
    model.set_precision(torch.bfloat16)
    loss, hidden = model(ids, y, model.init_state(3))
    loss.backward()
    assert abs(loss.item() - ref.item()) <= 2e-2 * ref.item()
    assert all(t.dtype == torch.float32 for h in hidden for t in h)
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
    assert model.logits(ids, model.init_state(3))[0].dtype == torch.float32
    if head == "dense":  # a frozen E is stored once in bf16: half the bytes
        assert model.head.weight.dtype == torch.bfloat16 and model.head.weight.element_size() == 2


def test_bf16_run_trains_evaluates_and_refuses_an_fp32_resume(tiny_corpus_dir: Path, tmp_path: Path, capsys):
    run = tmp_path / "runs" / "bf16"
    result = train(tiny_config(tiny_corpus_dir, embed="orthogonal", max_tokens=600, precision="bf16"), run)
    summary = json.loads((run / checkpoint.SUMMARY).read_text())
    assert summary["precision"] == "bf16" and result.best_valid_ppl < 60  # the tiny vocabulary has 61 words
    assert checkpoint.load(run / checkpoint.LAST)["precision"] == "bf16"

    own, fp32 = evaluate_run(run, "valid"), evaluate_run(run, "valid", precision="fp32")
    assert own["precision"] == "bf16" and fp32["precision"] == "fp32"
    assert own["ppl"] == pytest.approx(fp32["ppl"], rel=2e-2)

    code, _, err = run_cli(["train", "--resume", str(run), "--precision", "fp32", "--no-progress"], capsys)
    assert_one_line_error(code, err, "--precision", "'bf16'")


def test_bf16_where_the_device_cannot_run_it_fails_before_the_run_exists(tiny_corpus_dir, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setattr(precision, "bf16_runs", lambda device: False)
    code, _, err = run_cli(["train", *tiny_flags(tiny_corpus_dir, tmp_path), "--name", "x", "--precision", "bf16"],
                           capsys)
    assert_one_line_error(code, err, "--precision bf16", "use --precision fp32")
    assert not (tmp_path / "x").exists()


def test_auto_picks_bf16_only_where_it_is_native(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "bf16_runs", lambda device: True)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert precision.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512f"}))
    assert precision.resolve_precision("auto", cpu) == "fp32"
    precision._warn_emulated.cache_clear()
    with pytest.warns(UserWarning, match="emulated"):
        assert precision.resolve_precision("bf16", cpu) == "bf16"  # asked for: runs, emulated, and says so
    with pytest.raises(Exception, match="unknown --precision"):
        precision.resolve_precision("fp16", cpu)


def test_bf16_on_a_cpu_without_native_bf16_warns_once(monkeypatch, recwarn):
    # An Ice Lake Xeon: AVX-512, so bf16 runs, but emulated (430 tok/s in bf16 against 1,080 in fp32).
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "bf16_runs", lambda device: True)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512f"}))
    precision._warn_emulated.cache_clear()
    assert [precision.resolve_precision("bf16", cpu) for _ in range(3)] == ["bf16"] * 3
    assert precision.resolve_precisions(["fp32", "bf16"], cpu) == ("fp32", "bf16")
    [warning] = recwarn.list
    assert str(warning.message) == ("bf16 is emulated on this CPU (no avx512_bf16 or amx_bf16) and slower than fp32; "
                                    "--precision auto picks fp32 here")


@pytest.mark.parametrize("flags", [{"avx512f", "avx512_bf16"}, {"avx512f", "amx_bf16"}])
def test_bf16_where_it_is_native_does_not_warn(flags, monkeypatch, recwarn):
    monkeypatch.setattr(precision, "bf16_runs", lambda device: True)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset(flags))
    precision._warn_emulated.cache_clear()
    assert precision.resolve_precision("bf16", torch.device("cpu")) == "bf16" and not recwarn.list


def test_the_emulated_bf16_warning_is_one_line_of_a_training_run(tiny_corpus_dir, tmp_path, capsys, monkeypatch):
    # The trainer resolves the precision twice (the check before the run exists, then the run): one line.
    monkeypatch.setattr(precision, "bf16_runs", lambda device: True)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512f"}))
    precision._warn_emulated.cache_clear()
    code, _, err = run_cli(["train", *tiny_flags(tiny_corpus_dir, tmp_path), "--name", "x", "--precision", "bf16",
                            "--max-tokens", "200"], capsys)
    assert code == 0
    assert [line for line in err.splitlines() if "emulated" in line] == [
        "lmfix: warning: bf16 is emulated on this CPU (no avx512_bf16 or amx_bf16) and slower than fp32; "
        "--precision auto picks fp32 here"]


def test_a_learned_e_is_rounded_to_bf16_once_per_change_not_per_call():
    head = LearnedHead(300, 16)
    head.use_operands(torch.bfloat16)
    x, y = torch.randn(8, 16), torch.randint(0, 300, (8,))
    with torch.no_grad():  # evaluation: many calls, one rounding
        head.loss(x, y)
        first = head.operand_weight()
        head.loss(x, y)
        assert head.operand_weight() is first
    head.loss(x, y).backward()
    torch.optim.SGD(head.parameters(), lr=1.0).step()  # a training step changes E: a fresh copy
    assert head.operand_weight() is not first
    assert torch.equal(head.operand_weight(), head.weight.detach().bfloat16())
