"""Logits and fused cross entropy for the Hadamard head, without E or full logits.

Logits are ``alpha * x E^T + bias`` with E from a ``HadamardLayout``. Writing
``E' = sqrt(d) E`` (entries +-1), block r of the logits is
``scale * fwht(x * signs[r]) + bias[r]`` with ``scale = alpha / sqrt(d)``.

The loss is an ``autograd.Function``; tokens go in chunks whose (C x V)
logits live only in two reused buffers:

* log-sum-exp per token from each chunk; the target logit straight from the
  target's row (O(d) per token), so the logits are never gathered.
* gradient: softmax ``p`` of the chunk in place, folded back through ``E'^T``
  (transform again, multiply by the block signs, sum over blocks); the one-hot
  part is done per token on the target rows, and
  ``grad_alpha = <x, E'^T dz> / sqrt(d)`` reuses the same product.
* for mean/sum reductions with a backward to come, the gradient for unit
  weights is computed in the forward from the same logits (the backward only
  scales it), saving a second transform and exp per logit; otherwise
  (``none``, or per-token weights) the backward recomputes the chunks.

Periodic layouts (``truncated``: row w depends on w mod D only) take the exact
O(d log d + V) shortcut: one D-point transform per token, and the log-sum-exp
over V groups the biases by ``w mod D`` once per call.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from lmfix.ops.hadamard import HadamardLayout
from lmfix.ops.hadamard_blocks import HeadInputs, TorchBlocks, compute_dtype, pad_columns, padded_bias
from lmfix.ops.precision import host_scalar
from lmfix.ops.transform import fwht

REDUCTIONS = ("mean", "sum", "none")
BACKENDS = ("auto", "torch", "triton")


def _scale(alpha: torch.Tensor, layout: HadamardLayout) -> float | torch.Tensor:
    """``alpha / sqrt(d)``: a float, or a 0-dim tensor where alpha lives on a GPU (see ``host_scalar``)."""
    return host_scalar(alpha) * layout.scale


def _head_inputs(x: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None, layout: HadamardLayout) -> HeadInputs:
    xc = pad_columns(x.detach().to(compute_dtype(x.dtype)), layout.block)
    return HeadInputs(layout, _scale(alpha, layout), padded_bias(layout, bias, xc), xc)


def _reduce(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return losses.mean()
    return losses.sum() if reduction == "sum" else losses


class _BlockCrossEntropy(torch.autograd.Function):
    """Loss ``lse - target logit`` (reduced); ``backend_cls`` computes the O(N V) parts.

    With ``eager`` (mean/sum reduction and a backward to come) the forward also
    computes the softmax terms for unit weights, since the gradient of a
    reduced loss is only scaled by the incoming scalar: one transform pass and
    one exp per logit instead of recomputing everything in the backward.
    """

    @staticmethod
    def forward(ctx, x, alpha, bias, target, layout, backend_cls, chunk_size, reduction, eager):
        inputs = _head_inputs(x, alpha, bias, layout)
        backend = backend_cls(inputs, chunk_size)
        if eager:
            lse, *ctx.unit_terms = backend.lse_and_terms()
        else:
            lse, ctx.unit_terms = backend.logsumexp(), None
        target_rows = layout.signs(target, inputs.x.dtype)
        target_logit = inputs.scale * (inputs.x[:, : layout.dim] * target_rows).sum(1) + inputs.bias[target]
        ctx.save_for_backward(x, alpha, bias, target, lse)
        ctx.layout, ctx.backend_cls, ctx.chunk_size, ctx.reduction = layout, backend_cls, chunk_size, reduction
        return _reduce(lse - target_logit, reduction).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, alpha, bias, target, lse = ctx.saved_tensors
        layout = ctx.layout
        grad = grad.to(lse.dtype)
        if ctx.reduction == "mean":
            grad = grad / x.shape[0]
        weight = grad.expand(x.shape[0])
        if ctx.unit_terms is not None:
            folded, bias_grad = (term * grad for term in ctx.unit_terms)
        else:
            backend = ctx.backend_cls(_head_inputs(x, alpha, bias, layout), ctx.chunk_size)
            folded, bias_grad = backend.softmax_terms(lse, weight)
        grads = _finish_backward(ctx, x, alpha, bias, target, weight, folded[:, : layout.dim], bias_grad)
        return *grads, None, None, None, None, None, None


def _finish_backward(ctx, x, alpha, bias, target, weight, folded, bias_grad):
    """Add the one-hot (target) part and turn ``E'^T dz`` into the input gradients.

    ``folded`` is ``E'^T (w p)`` per token; subtracting ``w E'[target]`` gives
    ``u = E'^T dz`` with dz the gradient of the loss w.r.t. the logits.
    """
    layout = ctx.layout
    dtype = folded.dtype
    u = folded - weight[:, None] * layout.signs(target, dtype)
    grad_x = (_scale(alpha, layout) * u).to(x.dtype) if ctx.needs_input_grad[0] else None
    grad_alpha = None
    if ctx.needs_input_grad[1]:
        grad_alpha = ((x.to(dtype) * u).sum() * layout.scale).to(alpha.dtype).reshape(alpha.shape)
    grad_bias = None
    if ctx.needs_input_grad[2]:
        grad_bias = bias_grad[: layout.vocab_size].index_add(0, target, -weight).to(bias.dtype)
    return grad_x, grad_alpha, grad_bias


class _PeriodicCrossEntropy(torch.autograd.Function):
    """Exact per-token loss when rows repeat every D words: logits[w] = scale * s[w mod D] + b[w]."""

    @staticmethod
    def forward(ctx, x, alpha, bias, target, layout):
        dtype = compute_dtype(x.dtype)
        xc = pad_columns(x.detach().to(dtype), layout.block)
        scale = _scale(alpha, layout)
        bias_pad = padded_bias(layout, bias, xc)
        group_lse = bias_pad.view(layout.num_blocks, layout.block).logsumexp(0)
        scores = fwht(xc)
        lse = (scores * scale + group_lse).logsumexp(1)
        group = target % layout.block
        target_logit = scale * scores.gather(1, group[:, None])[:, 0] + bias_pad[target]
        ctx.save_for_backward(x, alpha, bias, target, scores, lse)
        ctx.layout = layout
        return (lse - target_logit).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, alpha, bias, target, scores, lse = ctx.saved_tensors
        layout = ctx.layout
        weight = grad.to(scores.dtype)
        scale = _scale(alpha, layout)
        bias_pad = padded_bias(layout, bias, scores)
        group_lse = bias_pad.view(layout.num_blocks, layout.block).logsumexp(0)
        # Group probabilities q[t, g] = sum of p[t, w] over w = g mod D.
        group_probs = (scores * scale + group_lse - lse[:, None]).exp_().mul_(weight[:, None])
        # p[t, w] = q[t, g] * exp(b[w] - group_lse[g]): sum over t per group, then spread.
        within_group = (bias_pad.view(layout.num_blocks, layout.block) - group_lse).exp_()
        bias_grad = (within_group * group_probs.sum(0)).view(-1)
        folded = fwht(group_probs)
        grads = _finish_backward(ctx, x, alpha, bias, target, weight, folded[:, : layout.dim], bias_grad)
        return *grads, None, None


def _as_tensor(alpha: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if isinstance(alpha, torch.Tensor):
        if alpha.numel() != 1:
            raise ValueError(f"alpha must be a scalar, got shape {tuple(alpha.shape)}")
        return alpha
    return torch.tensor(float(alpha), dtype=like.dtype, device=like.device)


def _check(x: torch.Tensor, target: torch.Tensor, layout: HadamardLayout, bias: torch.Tensor | None) -> None:
    if x.shape[-1] != layout.dim:
        raise ValueError(f"x has last dim {x.shape[-1]} but the layout has dim={layout.dim}")
    if bias is not None and bias.shape != (layout.vocab_size,):
        raise ValueError(f"bias must have shape ({layout.vocab_size},), got {tuple(bias.shape)}")
    if target.numel() != x[..., 0].numel():
        raise ValueError(f"{x[..., 0].numel()} hidden states but {target.numel()} targets")
    in_range = f"targets must be word ids in [0, {layout.vocab_size})"
    if target.numel() and target.is_cuda:  # int() would wait for the GPU every step: assert on the device
        torch._assert_async((target.min() >= 0) & (target.max() < layout.vocab_size), in_range)
    elif target.numel() and (int(target.min()) < 0 or int(target.max()) >= layout.vocab_size):
        raise ValueError(in_range)


def _triton_loss():
    """The Triton loss kernels' module, or None when triton is not installed (torch path then)."""
    try:
        from lmfix.ops import triton_loss
    except ImportError:
        return None
    return triton_loss


def _block_backend(x: torch.Tensor, layout: HadamardLayout, backend: str) -> type:
    """``auto``: Triton for CUDA tensors when it supports the block size, else plain torch."""
    kernels = _triton_loss() if backend == "triton" or x.is_cuda else None
    if backend == "triton" and (kernels is None or not kernels.supports_loss(layout.block)):
        raise ValueError(f"the Triton loss needs triton installed and 16 <= block <= 4096 (block={layout.block})")
    if backend == "torch" or kernels is None or not kernels.supports_loss(layout.block):
        return TorchBlocks
    return kernels.TritonBlocks


def hadamard_cross_entropy(
    x: torch.Tensor,
    target: torch.Tensor,
    layout: HadamardLayout,
    bias: torch.Tensor | None = None,
    alpha: float | torch.Tensor = 1.0,
    reduction: str = "mean",
    chunk_size: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Cross entropy of ``alpha * x E^T + bias`` against ``target``, never storing E or all logits.

    x: (..., d) hidden states taken as given; target: (...) word ids; bias: (V,);
    alpha: scalar (a tensor to learn it). Exact gradients for x, alpha and bias.
    ``chunk_size`` tokens are scored at a time (default: ~512K logits and <= d / 4 tokens).
    ``backend``: ``auto`` (Triton on CUDA, else torch), ``torch`` or ``triton``
    (forces the kernels, e.g. on CPU under TRITON_INTERPRET=1). Periodic
    layouts always take the O(d log d + V) path.
    """
    _check(x, target, layout, bias)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of tokens, got {chunk_size}")
    flat_x = x.reshape(-1, layout.dim)
    flat_target = target.reshape(-1).long()
    alpha_t = _as_tensor(alpha, x)
    if layout.periodic:
        loss = _reduce(_PeriodicCrossEntropy.apply(flat_x, alpha_t, bias, flat_target, layout), reduction)
    else:
        backend_cls = _block_backend(x, layout, backend)
        wants_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, alpha_t, bias))
        eager = wants_grad and reduction != "none"
        loss = _BlockCrossEntropy.apply(
            flat_x, alpha_t, bias, flat_target, layout, backend_cls, chunk_size, reduction, eager
        )
    return loss.view(target.shape) if reduction == "none" else loss


def hadamard_logits(
    x: torch.Tensor, layout: HadamardLayout, alpha: float | torch.Tensor = 1.0, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """All V logits ``alpha * x E^T + bias`` for a few tokens (generation), via the transform.

    Differentiable; memory is (..., V), so use the fused loss for training.
    """
    if x.shape[-1] != layout.dim or (bias is not None and bias.shape != (layout.vocab_size,)):
        raise ValueError(f"x must be (..., {layout.dim}) and bias ({layout.vocab_size},) for this layout")
    xp = pad_columns(x, layout.block)
    if layout.periodic:
        scores = fwht(xp).tile((layout.num_blocks,))
    else:
        signs = layout.block_signs(x.dtype, x.device)
        scores = fwht(xp[..., None, :] * signs).flatten(-2)
    logits = scores[..., : layout.vocab_size] * (_as_tensor(alpha, x) * layout.scale)
    return logits if bias is None else logits + bias
