"""Fused Hadamard cross entropy and logits against the explicit matrix, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmfix.bench.memtrack import AllocationTracker
from lmfix.ops import hadamard_cross_entropy, hadamard_logits, make_layout

# (vocab, dim): V not a multiple of the block, d not a power of two, V < d, n == D.
SIZES = [(1000, 32), (300, 24), (70, 64), (5, 8)]


def inputs(vocab: int, dim: int, tokens: int = 13, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, dim, dtype=torch.float64, generator=gen).requires_grad_()
    bias = torch.randn(vocab, dtype=torch.float64, generator=gen).requires_grad_()
    alpha = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, vocab, (tokens,), generator=gen)
    return x, target, bias, alpha


def dense_loss(layout, x, target, bias, alpha, reduction="mean"):
    e = layout.dense(torch.float64)
    logits = alpha * x @ e.T + (0 if bias is None else bias)
    return F.cross_entropy(logits, target, reduction=reduction)


def grads(loss, tensors):
    # Summing with fixed weights also checks the per-token gradients of reduction="none".
    weights = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).view(loss.shape)
    return torch.autograd.grad((loss * weights).sum(), tensors)


@pytest.mark.parametrize("layout_name", ["distinct", "truncated"])
@pytest.mark.parametrize(("vocab", "dim"), SIZES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_and_gradients_match_dense(layout_name, vocab, dim, reduction):
    layout = make_layout(vocab, dim, layout_name, seed=2)
    x, target, bias, alpha = inputs(vocab, dim)
    ours = hadamard_cross_entropy(x, target, layout, bias, alpha, reduction=reduction, chunk_size=4)
    ref = dense_loss(layout, x, target, bias, alpha, reduction)
    torch.testing.assert_close(ours, ref)
    for got, want in zip(grads(ours, (x, alpha, bias)), grads(ref, (x, alpha, bias)), strict=True):
        torch.testing.assert_close(got, want)


def test_no_bias_float_alpha_and_leading_dims():
    layout = make_layout(1000, 32, seed=1)
    x, target, _, _ = inputs(1000, 32, tokens=12)
    x3, t3 = x.view(3, 4, 32), target.view(3, 4)
    ours = hadamard_cross_entropy(x3, t3, layout, None, 0.8, reduction="none")
    assert ours.shape == (3, 4)
    ref = dense_loss(layout, x, target, None, 0.8, "none").view(3, 4)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grads(ours, (x,))[0], grads(ref, (x,))[0])


def test_no_grad_forward_matches():
    layout = make_layout(1000, 32, seed=1)
    x, target, bias, alpha = inputs(1000, 32)
    with torch.no_grad():
        plain = hadamard_cross_entropy(x, target, layout, bias, alpha)
    torch.testing.assert_close(plain, dense_loss(layout, x, target, bias, alpha))


@pytest.mark.parametrize("layout_name", ["distinct", "truncated"])
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_gradcheck(layout_name, reduction):
    layout = make_layout(40, 8, layout_name, seed=0)
    x, target, bias, alpha = inputs(40, 8, tokens=5)

    def loss(x, bias, alpha):
        return hadamard_cross_entropy(x, target, layout, bias, alpha, reduction=reduction, chunk_size=2)

    assert torch.autograd.gradcheck(loss, (x, bias, alpha))


def test_float32_and_bfloat16_inputs():
    layout = make_layout(1000, 32, seed=1)
    x, target, bias, alpha = inputs(1000, 32)
    ref = dense_loss(layout, x, target, bias, alpha)
    loss32 = hadamard_cross_entropy(x.float(), target, layout, bias.float(), alpha.float())
    assert loss32.dtype == torch.float32
    torch.testing.assert_close(loss32.double(), ref, rtol=1e-5, atol=1e-5)
    loss16 = hadamard_cross_entropy(x.bfloat16(), target, layout, bias.float(), alpha.float())
    assert loss16.dtype == torch.bfloat16
    torch.testing.assert_close(loss16.double(), ref, rtol=2e-2, atol=2e-2)


def tracked_step(loss_fn) -> AllocationTracker:
    with AllocationTracker() as tracker:
        loss_fn().backward()
    return tracker


@pytest.mark.parametrize("layout_name", ["distinct", "truncated"])
def test_never_allocates_matrix_or_full_logits(layout_name):
    vocab, dim, tokens = 3000, 64, 128
    layout = make_layout(vocab, dim, layout_name)
    x, target, bias, alpha = inputs(vocab, dim, tokens)
    x, bias, alpha = (t.detach().float().requires_grad_() for t in (x, bias, alpha))
    ours = tracked_step(lambda: hadamard_cross_entropy(x, target, layout, bias, alpha, chunk_size=8))
    assert x.grad is not None and bias.grad is not None and alpha.grad is not None
    matrix = layout.dense()
    dense = tracked_step(lambda: F.cross_entropy(F.linear(x * alpha, matrix, bias), target))
    assert 0 < ours.largest_bytes < matrix.nbytes / 2
    assert dense.largest_bytes >= tokens * vocab * 4
    assert ours.peak_bytes < dense.peak_bytes / 4


@pytest.mark.parametrize("layout_name", ["distinct", "truncated"])
@pytest.mark.parametrize(("vocab", "dim"), SIZES)
def test_logits_match_dense(layout_name, vocab, dim):
    layout = make_layout(vocab, dim, layout_name, seed=2)
    x, _, bias, alpha = inputs(vocab, dim)
    ours = hadamard_logits(x.view(13, 1, dim), layout, alpha, bias)
    ref = alpha * x @ layout.dense(torch.float64).T + bias
    torch.testing.assert_close(ours, ref.view(13, 1, vocab))
    weights = torch.randn(13, vocab, dtype=torch.float64)
    tensors = (x, alpha, bias)
    for got, want in zip(grads(ours.view(13, vocab) * weights, tensors), grads(ref * weights, tensors), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reduction": "max"}, "reduction must be one of"),
        ({"chunk_size": 0}, "chunk_size must be a positive"),
        ({"backend": "cuda"}, "backend must be one of"),
        ({"alpha": torch.ones(2)}, "alpha must be a scalar"),
        ({"bias": torch.zeros(7)}, r"bias must have shape \(1000,\)"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    layout = make_layout(1000, 32)
    x, target, _, _ = inputs(1000, 32)
    with pytest.raises(ValueError, match=message):
        hadamard_cross_entropy(x, target, layout, **kwargs)
    with pytest.raises(ValueError, match="last dim 16"):
        hadamard_cross_entropy(x[:, :16], target, layout)
    with pytest.raises(ValueError, match="13 hidden states but 12 targets"):
        hadamard_cross_entropy(x, target[:12], layout)
    for bad in (-1, 1000):
        with pytest.raises(ValueError, match=r"word ids in \[0, 1000\)"):
            hadamard_cross_entropy(x, torch.full_like(target, bad), layout)
    with pytest.raises(ValueError, match=r"x must be \(\.\.\., 32\)"):
        hadamard_logits(x[:, :16], layout)
