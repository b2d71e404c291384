"""Nearly-fixed heads: counts, the fixed head's loss at step 0, losses and gradients against a float64
reference that forms E explicitly, frozen parts unchanged by training, resume, torchrun, bad input."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from lmfix.embeddings import get_or_build
from lmfix.model import nearly_fixed as nf
from lmfix.model.heads import DenseFixedHead
from lmfix.training import checkpoint
from lmfix.training.config import ConfigError, TrainConfig
from lmfix.training.setup import load_corpus
from lmfix.training.trainer import train
from tests.test_ddp import SETTINGS, torchrun
from tests.test_train import assert_one_line_error, one_thread, run_cli, tiny_config, tiny_flags  # noqa: F401
from tests.test_train_resume import HARD, assert_sigkill_then_resume_matches

V, D, N, ALPHA = 50, 8, 37, 3.0
HEADS = {
    "context-scale": lambda m: nf.ContextScaleHead(m, alpha=ALPHA),
    "scales": lambda m: nf.ScalesHead(m, alpha=ALPHA),
    "top-k": lambda m: nf.TopRowsHead(m, 6, alpha=ALPHA),
    "low-rank": lambda m: nf.LowRankHead(m, 3, alpha=ALPHA),
    "unfreeze": lambda m: nf.UnfreezeHead(m, alpha=ALPHA),
}


def matrix(seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(V, D, generator=torch.Generator().manual_seed(seed)), dim=1)


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, D, generator=g), torch.randint(0, V, (N,), generator=g), torch.randint(0, V, (5, 3),
                                                                                                  generator=g)


def test_parameter_counts():
    r, k = 3, 6
    trained = {"context-scale": D, "scales": V + D, "top-k": k * D, "low-rank": V * r + D * r, "unfreeze": 0}
    for name, make in HEADS.items():
        counts = make(matrix()).counts()
        assert counts.trainable == trained[name] + 1 + V, name  # + alpha + bias
        assert counts.fixed == V * D and counts.generated == 0, name  # E0 is stored whole
    head = nf.UnfreezeHead(matrix(), alpha=ALPHA)
    head.unfreeze()
    assert (head.counts().trainable, head.counts().fixed) == (V * D + 1 + V, V * D)
    welch = nf.FrozenInputHead(matrix()).counts()
    assert (welch.trainable, welch.fixed) == (V * D + V, V * D)


def test_the_memory_estimate_counts_what_each_head_trains():
    from lmfix.training.memory import head_elements

    options = {"top-k": {"head_k": 6}, "low-rank": {"head_rank": 3}, "unfreeze": {"unfreeze_at": 0.5}}
    for name, make in {**HEADS, "frozen-input": lambda m: nf.FrozenInputHead(m)}.items():
        head = make(matrix())
        if name == "unfreeze":
            head.unfreeze()  # its largest: all of E trained
        config = TrainConfig(embed="orthogonal", emsize=D, head=name, **options.get(name, {}))
        alpha = 1 if hasattr(head, "alpha") else 0
        assert head_elements(config, V) == (head.counts().trainable - alpha, V * D), name


@pytest.mark.parametrize("operands", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(HEADS))
def test_at_initialisation_each_head_is_the_fixed_head(name, operands):
    x, y, ids = batch()
    fixed, head = DenseFixedHead(matrix(), alpha=ALPHA), HEADS[name](matrix())
    for h in (fixed, head):
        h.use_operands(operands)
    assert head.loss(x, y).item() == pytest.approx(fixed.loss(x, y).item(), rel=1e-6)
    # learned rows are float32 parameters, the frozen ones bf16 under bf16 operands: equal up to that rounding
    rounding = 0 if operands == torch.float32 else 2**-8
    assert torch.allclose(head.embed(ids).float(), fixed.embed(ids).float(), rtol=rounding, atol=0)


def perturb(head: torch.nn.Module) -> None:
    """Trained parts away from their start, so that every gradient term is exercised."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in head.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=g))


def reference_parts(name: str, head: torch.nn.Module, e0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E as the head defines it, formed explicitly (float64, from the same parameters): the part scored as the
    fixed head scores (alpha x_hat) and the learned part scored as a learned head (x); E is their sum."""
    zero = torch.zeros_like(e0)
    if name == "scales":
        g, h = 1 + head.word_scale.double() / ALPHA, 1 + head.dim_scale.double() / ALPHA
        return g[:, None] * e0 * h, zero
    if name in ("top-k", "unfreeze"):
        return e0, torch.cat([head.top.double(), zero[head.k:]])
    if name == "low-rank":
        return e0, head.low.double() @ head.mix.double().t()
    return e0, zero


def reference_loss(name: str, head: torch.nn.Module, e0: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    frozen, learned = reference_parts(name, head, e0)
    x = x.double()
    unit = F.normalize(x, dim=-1)
    if name == "context-scale":
        unit = unit * (x @ head.context.double() / ALPHA).exp().unsqueeze(-1)
    logits = head.alpha.double() * unit @ frozen.t() + x @ learned.t() + head.bias.double()
    return F.cross_entropy(logits, y)


@pytest.mark.parametrize(("operands", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("name", list(HEADS))
def test_loss_and_gradients_match_a_float64_reference_that_forms_e(name, operands, tolerance):
    x, y, ids = batch()
    head = HEADS[name](matrix())
    if name == "unfreeze":
        head.unfreeze()
    perturb(head)
    head.use_operands(operands)
    e0 = matrix().double()
    params = [p for p in head.parameters() if p.requires_grad]

    xa = x.clone().requires_grad_()
    loss = head.loss(xa, y)
    grads = torch.autograd.grad(loss, [xa, *params])
    xr = x.double().requires_grad_()
    ref = reference_loss(name, head, e0, xr, y)
    ref_grads = torch.autograd.grad(ref, [xr, *params])
    assert loss.item() == pytest.approx(ref.item(), rel=tolerance)
    for got, want in zip(grads, ref_grads, strict=True):
        scale = want.abs().max().item() or 1.0
        assert (got.double() - want).abs().max().item() <= tolerance * scale

    # the tied input: rows of the same E, with the same gradients
    upstream = torch.randn(*ids.shape, D, generator=torch.Generator().manual_seed(3))
    rows = head.embed(ids)
    ref_rows = F.embedding(ids, sum(reference_parts(name, head, e0)))
    assert (rows.double() - ref_rows).abs().max().item() <= tolerance
    if name == "context-scale":  # its input rows are E0's: nothing of them is trained
        assert not rows.requires_grad
        return
    got = torch.autograd.grad((rows.float() * upstream).sum(), params, allow_unused=True)
    want = torch.autograd.grad((ref_rows * upstream.double()).sum(), params, allow_unused=True)
    for g, w in zip(got, want, strict=True):
        assert (g is None) == (w is None) or (g is None and not w.any()) or (w is None and not g.any())
        if g is not None and w is not None:
            assert (g.double() - w).abs().max().item() <= tolerance * (w.abs().max().item() or 1.0)


def test_the_low_rank_loss_never_forms_the_v_by_d_sum(monkeypatch):
    x, y, _ = batch()
    head = nf.LowRankHead(matrix(), 3, alpha=ALPHA)
    formed = []
    real_mm = torch.Tensor.__matmul__

    def watch(a, b):
        out = real_mm(a, b)
        formed.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", watch)
    head.loss(x, y).backward()
    assert (V, D) not in formed and formed == [(N, 3)]  # x B only: A B^T is never formed


HEAD_FLAGS = {"context-scale": {}, "scales": {}, "top-k": {"head_k": 10}, "low-rank": {"head_rank": 4},
              "unfreeze": {"unfreeze_at": 0.3}, "frozen-input": {}}


@pytest.mark.parametrize("name", list(HEAD_FLAGS))
def test_training_changes_only_the_trained_part(tiny_corpus_dir, tmp_path, name):
    config = tiny_config(tiny_corpus_dir, embed="orthogonal", head=name, optimizer="adam", lr=1e-2, max_tokens=600,
                         **HEAD_FLAGS[name])
    result = train(config, tmp_path / name)
    e0 = torch.from_numpy(get_or_build("orthogonal", load_corpus(config), 16, seed=0).matrix)
    state = checkpoint.load(tmp_path / name / checkpoint.LAST)
    weights = state["model"]
    # the frozen matrix is never in a checkpoint; what is, is exactly the trained part
    trained = {k: v for k, v in weights.items() if k.startswith("head.")}
    expected = {"context-scale": {"head.context"}, "scales": {"head.word_scale", "head.dim_scale"},
                "top-k": {"head.top"}, "low-rank": {"head.low", "head.mix"}, "unfreeze": {"head.top"},
                "frozen-input": {"head.out_weight"}}[name]
    assert set(trained) - {"head.alpha", "head.bias"} == expected
    # only trained parameters have optimizer state, and each has it
    moments = [s for s in state["optimizer"]["state"].values()]
    assert sum(s["exp_avg"].numel() for s in moments) == result.counts.trainable
    if name == "top-k":
        assert weights["head.top"].abs().sum() > 0  # it learned
    if name == "unfreeze":  # all of E learned after the switch: D (V x d) as many as E0
        assert result.counts.trainable == e0.numel() + 1 + e0.shape[0] + sum(
            v.numel() for k, v in weights.items() if k.startswith("body."))
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    assert summary["params"]["trainable"] == result.counts.trainable
    metrics = checkpoint.MetricsLog(tmp_path / name / checkpoint.METRICS).read()
    if name not in ("frozen-input",):
        assert any(m.get("head") for m in metrics)  # scales and norms are logged


def test_the_frozen_matrix_stays_bit_for_bit(tiny_corpus_dir, tmp_path):
    from lmfix.analysis.evaluate import load_trained

    for name, flags in (("top-k", {"head_k": 10}), ("low-rank", {"head_rank": 4}), ("scales", {})):
        config = tiny_config(tiny_corpus_dir, embed="orthogonal", head=name, max_tokens=600, **flags)
        train(config, tmp_path / name)
        model, *_ = load_trained(tmp_path / name, "cpu")
        e0 = torch.from_numpy(get_or_build("orthogonal", load_corpus(config), 16, seed=0).matrix)
        assert torch.equal(model.head.weight, e0)  # rebuilt from the artifact, and never trained
        trained = [p for n, p in model.head.named_parameters() if n not in ("alpha", "bias")]
        assert all(p.abs().sum() > 0 for p in trained)  # while the trained part moved (each starts at 0 or B)


@pytest.mark.parametrize(("name", "flags"), [("low-rank", {"head_rank": 4}), ("unfreeze", {"unfreeze_at": 0.05}),
                                             ("scales", {})])
def test_sigkill_then_resume_matches(tiny_corpus_dir, tmp_path, capsys, name, flags):
    config = tiny_config(tiny_corpus_dir, **HARD, embed="orthogonal", head=name, **flags)
    assert_sigkill_then_resume_matches(config, tmp_path, capsys)


@pytest.mark.parametrize(("name", "flags"), [("low-rank", {"head_rank": 4}), ("top-k", {"head_k": 10})])
@pytest.mark.parametrize("precision", ["bf16"])
def test_bf16_and_every_body(tiny_corpus_dir, tmp_path, capsys, name, flags, precision):
    for model in ("lstm", "gru", "transformer"):
        config = tiny_config(tiny_corpus_dir, embed="orthogonal", head=name, model=model, precision=precision,
                             max_tokens=300, **flags)
        result = train(config, tmp_path / f"{name}-{model}")
        assert result.precision == "bf16" and result.best_valid_ppl < 200
        code, out, err = run_cli(["evaluate", str(tmp_path / f"{name}-{model}")], capsys)
        assert code == 0, err
        code, out, err = run_cli(["generate", str(tmp_path / f"{name}-{model}"), "--words", "5", "--seed", "1"],
                                 capsys)
        assert code == 0 and len(out.split()) >= 5, err


@pytest.mark.slow
def test_torchrun_synchronises_only_the_trained_part(tiny_corpus_dir, tmp_path):
    two = torchrun(tiny_corpus_dir, tmp_path / "two", embed="orthogonal", head="low-rank", head_rank=4)
    one = train(tiny_config(tiny_corpus_dir, **{**SETTINGS, "batch_size": 4}, embed="orthogonal", head="low-rank",
                            head_rank=4), tmp_path / "one")
    assert two["final_valid_ppl"] == pytest.approx(one.final_valid_ppl, rel=1e-4)
    # every trained parameter (A and B among them) is all-reduced, the frozen E0 (V x d) never
    assert two["sync_bytes_per_step"] == 4 * two["params"]["trainable"] == 4 * one.counts.trainable
    assert two["params"]["fixed"] == 61 * 16 and two["params"]["stored"] == two["params"]["trainable"] + 61 * 16


@pytest.mark.parametrize(("flags", "message"), [
    (["--embed", "orthogonal", "--head", "top-k", "--head-k", "61"], "--head-k 61 must be below the vocabulary"),
    (["--embed", "orthogonal", "--head", "low-rank", "--head-rank", "17"], "--head-rank 17 is above --emsize 16"),
    (["--embed", "learned", "--head", "low-rank", "--head-rank", "4"], "--embed learned learns all of E"),
    (["--embed", "hadamard", "--head", "scales"], "needs a stored matrix"),
    (["--embed", "orthogonal", "--head", "top-k"], "--head top-k needs --head-k"),
    (["--embed", "orthogonal", "--head-rank", "4"], "--head-rank is for --head low-rank"),
    (["--embed", "orthogonal", "--head", "unfreeze", "--unfreeze-at", "1.5"], "below 1"),
    (["--embed", "orthogonal", "--head", "lora"], "unknown --head 'lora'"),
])
def test_bad_head_settings_are_one_line_errors(tiny_corpus_dir, tmp_path, capsys, flags, message):
    code, _, err = run_cli(["train", *tiny_flags(tiny_corpus_dir, tmp_path / "runs"), "--max-tokens", "100", *flags],
                           capsys)
    assert_one_line_error(code, err, message)
    assert not any((tmp_path / "runs").rglob("checkpoint.pt"))


def test_a_head_setting_is_part_of_the_experiment():
    with pytest.raises(ConfigError, match="--head-k is for --head top-k"):
        TrainConfig(embed="pmi", head="scales", head_k=5)
    assert TrainConfig(embed="pmi", head="top-k", head_k=5).to_dict()["head_k"] == 5
