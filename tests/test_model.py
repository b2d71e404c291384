"""Heads and the LSTM body: frozen E stays frozen, fused losses are exact, parameters are counted right."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmfix.model.config import ModelConfig
from lmfix.model.heads import DenseFixedHead, HadamardHead, LearnedHead, ParamCounts
from lmfix.model.language_model import LanguageModel
from lmfix.ops import dense_loss, make_layout
from lmfix.ops.dense_loss import chunk_rows
from lmfix.ops.gemm import GemmError, onednn_available
from lmfix.ops.gemm import use as gemm_backend

V, D = 50, 16
NO_DROPOUT = ModelConfig(emsize=D, nhid=24, nlayers=2, dropout=0, dropouth=0, dropouti=0)


def unit_rows(v: int = V, d: int = D, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(v, d, generator=g), dim=1)


def batch(seed: int = 0, t: int = 7, b: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(V, (t, b), generator=g), torch.randint(V, (t, b), generator=g)


def sgd_steps(model: LanguageModel, steps: int = 5, lr: float = 0.5) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    hidden = model.init_state(3)
    for i in range(steps):
        x, y = batch(i)
        loss, hidden = model(x, y, model.detach(hidden))
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("make_head", [
    lambda: DenseFixedHead(unit_rows()),
    lambda: HadamardHead(make_layout(V, D)),
], ids=["dense", "hadamard"])
def test_fixed_matrix_gets_no_gradient_and_stays_bit_identical(make_head):
    model = LanguageModel(make_head(), NO_DROPOUT)
    before = model.head.embed(torch.arange(V)).clone()
    alpha0, bias0 = model.head.alpha.item(), model.head.bias.detach().clone()
    assert all(p.requires_grad for p in model.parameters())  # E is not a parameter at all
    assert "weight" not in model.state_dict() and "head.weight" not in model.state_dict()
    sgd_steps(model)
    assert torch.equal(model.head.embed(torch.arange(V)), before)
    assert model.head.alpha.item() != alpha0  # alpha and bias learn
    assert not torch.equal(model.head.bias.detach(), bias0)


def test_fix_alpha_keeps_alpha():
    model = LanguageModel(DenseFixedHead(unit_rows(), alpha=7.0, learn_alpha=False), NO_DROPOUT)
    sgd_steps(model)
    assert model.head.alpha.item() == 7.0


@pytest.mark.parametrize("gemm", ["torch", "onednn"])
@pytest.mark.parametrize("make_head", [
    lambda: DenseFixedHead(unit_rows(), alpha=3.0),
    lambda: DenseFixedHead(unit_rows(), alpha=3.0, normalize=False),
    lambda: LearnedHead(V, D),
    lambda: LearnedHead(V, D, tied=False),
], ids=["fixed", "fixed-unnormalized", "learned", "learned-untied"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fused_dense_loss_matches_autograd(make_head, reduction: str, gemm: str, monkeypatch):
    if gemm == "onednn" and not onednn_available():
        pytest.skip("no oneDNN GEMM in this PyTorch build")
    monkeypatch.setattr("lmfix.ops.dense_loss._CHUNK_ELEMENTS", 7 * V)  # several chunks
    head = make_head()
    with torch.no_grad():
        head.bias.normal_()
    params = [p for p in head.parameters() if p.requires_grad]
    x = torch.randn(40, D, dtype=torch.float32, requires_grad=True)
    target = torch.randint(V, (40,))
    with gemm_backend(gemm):
        fused = head.loss(x, target, reduction)
        grads = torch.autograd.grad(fused, [x, *params], allow_unused=True)  # untied: input E unused
    reference = F.cross_entropy(head.logits(x), target, reduction=reduction)  # plain autograd through F.linear
    expected = torch.autograd.grad(reference, [x, *params], allow_unused=True)
    torch.testing.assert_close(fused, reference)
    for got, want in zip(grads, expected, strict=True):
        assert (got is None) == (want is None)
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_fused_dense_loss_with_a_trained_weight_and_scale(monkeypatch):
    """Every gradient at once (x, scale, bias and W), which no head combines: the general op's contract
    (in float32; test_precision holds the bf16 path to float64 the same way)."""
    operands = torch.float32
    monkeypatch.setattr("lmfix.ops.dense_loss._CHUNK_ELEMENTS", 7 * V)
    g = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(40, D, generator=g), unit_rows(), torch.randn(V, generator=g)
    scale, target = torch.tensor(2.5), torch.randint(V, (40,), generator=g)
    inputs = [t.clone().requires_grad_(True) for t in (x, scale, b, w)]
    fused = dense_loss.dense_cross_entropy(inputs[0], target, inputs[3], inputs[2], inputs[1], operands=operands)
    got = torch.autograd.grad(fused, inputs)
    wide = [t.double().requires_grad_(True) for t in (x, scale, b, w)]
    reference = F.cross_entropy(wide[1] * wide[0] @ wide[3].T + wide[2], target)
    want = torch.autograd.grad(reference, wide)
    tol = {"rtol": 1e-4, "atol": 1e-6} if operands == torch.float32 else {"rtol": 0.02, "atol": 2e-3}
    torch.testing.assert_close(fused.double(), reference, **tol)
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a.double(), e, **tol)


def _tied_reference_grad(head: LearnedHead, steps) -> torch.Tensor:
    """E's gradient from plain autograd (F.embedding + F.linear), summed over ``steps`` of (ids, transform, y)."""
    w = head.weight.detach().clone().requires_grad_(True)
    for ids, m, y in steps:
        x = torch.tanh(F.embedding(ids, w) @ m)
        F.cross_entropy(F.linear(x, w, head.bias.detach()), y).backward()
    return w.grad


@pytest.mark.parametrize("precision", [torch.float32, torch.bfloat16])
def test_tied_gradient_adds_both_uses_of_e(precision):
    """The lookup's rows go into the loss's gradient of E in place (TiedGradient): still the sum of both
    uses, also over two accumulated backward passes (gradient accumulation)."""
    head = LearnedHead(V, D)
    head.use_operands(precision)
    g = torch.Generator().manual_seed(1)
    steps = [(torch.randint(V, (30,), generator=g), torch.randn(D, D, generator=g) / 4,
              torch.randint(V, (30,), generator=g)) for _ in range(2)]
    for ids, m, y in steps:
        head.loss(torch.tanh(head.embed(ids) @ m), y).backward()
    tol = {"rtol": 1e-4, "atol": 1e-6} if precision == torch.float32 else {"rtol": 0.05, "atol": 2e-3}
    torch.testing.assert_close(head.weight.grad, _tied_reference_grad(head, steps), **tol)


def test_tied_gradient_without_the_fused_loss_in_the_same_pass():
    """A lookup whose backward has no fused loss of E in its pass (per-token losses, or the loss
    ran in an earlier pass) sends its own gradient: nothing is dropped or added twice."""
    head = LearnedHead(V, D)
    ids, y = torch.randint(V, (12,)), torch.randint(V, (12,))
    m = torch.eye(D)
    head.loss(torch.tanh(head.embed(ids) @ m), y, reduction="none").mean().backward()
    torch.testing.assert_close(head.weight.grad, _tied_reference_grad(head, [(ids, m, y)]))
    head.weight.grad = None
    rows = head.embed(ids)
    loss = head.loss(torch.randn(12, D), y)  # takes the lookup's link, but the rows are not in its graph
    loss.backward()
    first = head.weight.grad.clone()
    rows.sum().backward()  # a later pass: the rows' gradient (ones) is added, not lost
    expected = first.index_add(0, ids, torch.ones(12, D))
    torch.testing.assert_close(head.weight.grad, expected)


def test_chunks_are_even_and_bounded():
    assert chunk_rows(700, 33278) == 234  # 3 chunks of <= 252 rows, not 252 + 252 + 196
    assert chunk_rows(5, 33278) == 5
    assert chunk_rows(1, 10**9) == 1 and chunk_rows(0, 50) == 1
    assert chunk_rows(700, 33278, torch.bfloat16) == 700  # bf16 products: one tall chunk (<= 1008 rows)
    assert chunk_rows(2100, 33278, torch.bfloat16) == 700


def test_gemm_backend_is_checked():
    with pytest.raises(GemmError, match="choose from"):
        with gemm_backend("mkl"):
            pass


def test_hadamard_head_equals_dense_head_on_the_same_matrix():
    layout = make_layout(V, D, seed=3)
    had, dense = HadamardHead(layout, alpha=4.0), DenseFixedHead(layout.dense(), alpha=4.0)
    ids = torch.randint(V, (5, 2))
    torch.testing.assert_close(had.embed(ids), dense.embed(ids))
    x, target = torch.randn(12, D), torch.randint(V, (12,))
    torch.testing.assert_close(had.logits(x), dense.logits(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(had.loss(x, target), dense.loss(x, target), rtol=1e-5, atol=1e-6)


def test_parameter_accounting():
    lstm = LanguageModel(LearnedHead(V, D), NO_DROPOUT).body
    lstm_params = sum(p.numel() for p in lstm.parameters())
    tied = LanguageModel(LearnedHead(V, D), NO_DROPOUT).counts()
    untied = LanguageModel(LearnedHead(V, D, tied=False), NO_DROPOUT).counts()
    dense = LanguageModel(DenseFixedHead(unit_rows()), NO_DROPOUT).counts()
    fixed_alpha = LanguageModel(DenseFixedHead(unit_rows(), learn_alpha=False), NO_DROPOUT).counts()
    had = LanguageModel(HadamardHead(make_layout(V, D)), NO_DROPOUT).counts()
    assert tied == ParamCounts(lstm_params + V * D + V, 0, 0)
    assert untied.trainable == tied.trainable + V * D
    assert dense == ParamCounts(lstm_params + V + 1, V * D, 0)
    assert fixed_alpha == ParamCounts(lstm_params + V, V * D + 1, 0)
    assert had == ParamCounts(lstm_params + V + 1, 0, V * D)
    assert had.stored == dense.trainable and had.total == dense.total == tied.total + 1


def test_last_layer_outputs_emsize_and_hidden_shapes():
    model = LanguageModel(LearnedHead(V, D), ModelConfig(emsize=D, nhid=40, nlayers=3))
    hidden = model.init_state(4)
    assert [h.shape[-1] for h, _ in hidden] == [40, 40, D]
    x, _ = batch(b=4)
    out, hidden = model.features(x, hidden)
    assert out.shape == (7, 4, D)
    logits, _ = model.logits(x, hidden)
    assert logits.shape == (7, 4, V)


def test_dropouts_are_off_at_zero_and_active_otherwise():
    torch.manual_seed(0)
    model = LanguageModel(LearnedHead(V, D), NO_DROPOUT)
    x, y = batch()
    train_loss = model(x, y, model.init_state(3))[0]
    model.eval()
    assert torch.equal(train_loss, model(x, y, model.init_state(3))[0])

    cfg = ModelConfig(emsize=D, nhid=24, nlayers=2, dropout=0.3, dropouth=0.3, dropouti=0.3, dropoute=0.3, wdrop=0.5)
    model = LanguageModel(LearnedHead(V, D), cfg)
    losses = {model(x, y, model.init_state(3))[0].item() for _ in range(3)}
    assert len(losses) == 3
    loss = model(x, y, model.init_state(3))[0]
    loss.backward()
    assert model.body.layers[0].rnn.weight_hh_l0.grad.abs().sum() > 0  # DropConnect keeps the raw weight learning
    model.eval()
    assert model(x, y, model.init_state(3))[0].item() == model(x, y, model.init_state(3))[0].item()


def test_fused_dense_loss_skips_gradient_work_without_grad(monkeypatch):
    head = DenseFixedHead(unit_rows())
    x, target = torch.randn(20, D), torch.randint(V, (20,))
    calls, linear = [], dense_loss.linear
    monkeypatch.setattr("lmfix.ops.dense_loss.linear", lambda *args, **kw: calls.append(1) or linear(*args, **kw))
    with torch.no_grad():
        loss = head.loss(x, target, "sum")
    assert len(calls) == 1  # only the logits GEMM, no G @ E
    torch.testing.assert_close(loss, F.cross_entropy(head.logits(x), target, reduction="sum"))
