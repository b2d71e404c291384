"""Fused cross entropy of ``scale * x W^T + b`` for a stored V x d matrix W.

One function for both dense heads: the learned one (W a parameter, no scale)
and the frozen one (W a buffer, ``scale = alpha``). Tokens go in chunks of
about ``_CHUNK_ELEMENTS`` logits; per chunk: the logits (one GEMM, bias fused),
the log-sum-exp, then in place ``G = softmax - onehot`` and ``G W`` (a second
GEMM). A frozen W stops there: two GEMMs per step where a learned W needs a
third (``G^T x``, accumulated into its gradient). No N x V tensor outlives a
chunk, for either head.

Gradients are computed in the forward pass from the same chunk (the backward
only scales them), so the logits are never recomputed. Under ``no_grad``
(evaluation) only the loss is computed.

With ``operands=torch.bfloat16`` the three products take bf16 operands (x, W and
G rounded once per chunk; float32 accumulation inside the GEMM) while the
bias, log-sum-exp, softmax, loss and every returned gradient stay float32 (on a
CPU over blocks of rows that stay in cache, so that no N x V float32 tensor exists). A
frozen W can be passed already in bf16 (stored once, half the memory); a
learned float32 W comes with its bf16 copy in ``packed`` (or is rounded here).

Two options serve the nearly-fixed heads (``lmfix.model.nearly_fixed``) without a third full GEMM:
``row_scale`` (a learned factor per word, ``logits = row_scale * (x W^T) + b``) and ``extra``, a
learned matrix P (K x e) whose logits ``x2 P^T`` are added to those of the first K words (the K most
frequent words' learned rows; a low-rank correction ``(x B) A^T``): its products are K/V of the
dense ones, or e/d.
"""

from __future__ import annotations

import torch

from lmfix.ops.gemm import linear, uses_onednn
from lmfix.ops.precision import host_scalar

# Logits of one chunk (32 MiB in float32): ~250 tokens at V = 33k, enough for
# efficient GEMMs; measured as fast as unchunked at V=33278, d=512.
_CHUNK_ELEMENTS = 1 << 23
# bf16 products gain from taller chunks: at V = 33278, d = 512 the two per-chunk products of
# 700 tokens took 128 ms in one chunk against 136 ms in three (oneDNN, this project's CPU).
_LOW_CHUNK_ELEMENTS = 1 << 25
# bf16 on a CPU: the float32 softmax passes run over blocks of this many rows (4.3 MB at V = 33k), which stay in
# cache; over a whole 700 x 33,278 chunk each pass went to memory (19 against 29 ms per chunk, this project's CPU).
_CPU_SOFTMAX_ROWS = 32
_TINY = torch.finfo(torch.float32).tiny


def dense_cross_entropy(
    x: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor | None = None,
    reduction: str = "mean",
    packed: tuple[torch.Tensor, torch.Tensor] | None = None,
    operands: torch.dtype = torch.float32,
    tied: TiedGradient | None = None,
    row_scale: torch.Tensor | None = None,
    extra: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mean or summed cross entropy of ``scale * x @ weight.T + bias`` against ``target`` (N,).

    ``packed``: the operand forms of ``weight`` and ``weight.T`` for the two products: from ``gemm.pack``
    for a frozen weight, or a learned weight's bf16 copy (its gradient still goes to ``weight``).
    ``operands``: dtype of the GEMM operands (float32, or bfloat16 with float32 softmax and gradients).
    ``tied``: the link from ``tied_embedding`` of the same ``weight``, so W's two gradients add in place.
    ``row_scale``: (V,) factors of the logits before the bias (per-word scales), float32.
    ``extra``: ``(x2, P)``, x2 (N, e) and P (K, e) with K <= V: ``x2 @ P.T`` is added to the logits of the first
    K columns (not scaled by ``scale`` or ``row_scale``); both get their gradients.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"dense_cross_entropy: reduction {reduction!r} is not 'mean' or 'sum'")
    if operands not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dense_cross_entropy: operands must be float32 or bfloat16, got {operands}")
    norm = 1.0 / target.numel() if reduction == "mean" else 1.0
    if extra is not None and row_scale is not None:
        raise ValueError("dense_cross_entropy: extra logits and row_scale together are not supported")
    x2, extra_w = extra or (None, None)
    return _DenseCrossEntropy.apply(x, scale, bias, weight, target, norm, torch.is_grad_enabled(), packed, operands,
                                    tied, row_scale, x2, extra_w)


class TiedGradient:
    """The link between a tied W's embedding lookup and its dense loss, within one backward pass.

    Why: autograd sums the two gradients of a tied W out of place, a V x d copy per
    step (16 ms of a 350 ms bf16 step at V = 33k, d = 512 here). The loss's backward
    runs first and leaves its dense gradient of W here; the lookup's backward, in the
    same pass (same graph task), adds its rows into it in place and sends none of its own.
    """

    __slots__ = ("grad", "task")

    def __init__(self) -> None:
        self.grad: torch.Tensor | None = None
        self.task = -1


def tied_embedding(ids: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, TiedGradient]:
    """``weight[ids]``, and the link to pass to ``dense_cross_entropy(tied=...)`` of the same weight."""
    link = TiedGradient()
    return _TiedLookup.apply(weight, ids, link), link


class _TiedLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, ids, link):
        ctx.save_for_backward(ids)
        ctx.link, ctx.shape = link, weight.shape
        return weight[ids]

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        link, flat, rows = ctx.link, ids.reshape(-1), grad.reshape(-1, grad.shape[-1])
        if link.grad is not None and link.task == torch._C._current_graph_task_id():
            target, link.grad = link.grad, None  # W's gradient from the loss: it must be the only reference
            target.index_add_(0, flat, rows.to(target.dtype))
            return None, None, None
        # no fused loss of this W in this pass: a sparse gradient of the looked-up rows
        return torch.sparse_coo_tensor(flat.unsqueeze(0), rows, ctx.shape, check_invariants=False), None, None


def chunk_rows(tokens: int, vocab_size: int, operands: torch.dtype = torch.float32) -> int:
    """Rows per chunk: at most ~_CHUNK_ELEMENTS logits (bf16: _LOW_...), chunks of equal size (no small last one)."""
    elements = _CHUNK_ELEMENTS if operands == torch.float32 else _LOW_CHUNK_ELEMENTS
    most = max(1, min(tokens, elements // vocab_size))
    chunks = max(1, -(-tokens // most))
    return max(1, -(-tokens // chunks))


def _softmax_rows(x: torch.Tensor) -> int | None:
    """Rows per block of the bf16 softmax: cache-sized on a CPU; None on a GPU (the whole chunk at once)."""
    return _CPU_SOFTMAX_ROWS if x.is_cpu else None


def _low_softmax(logits: torch.Tensor, bias: torch.Tensor, target: torch.Tensor, g: torch.Tensor | None,
                 bias_rows: torch.Tensor | None, step: int | None, row_scale: torch.Tensor | None = None,
                 grad_scale_rows: torch.Tensor | None = None) -> torch.Tensor:
    """``-sum log p(target)`` of the float32 softmax of bf16 ``logits`` + ``bias``, ``step`` rows at a time.

    With ``g`` (bf16, like ``logits``): ``softmax - onehot`` rounded into it, and its float32 rows added into
    ``bias_rows`` (a block's height, or one row: then summed first). -log p(target) comes from the softmax:
    exact unless p underflows float32 (a logit gap over 87), where it is capped at 87.3.
    ``row_scale`` multiplies the logits before the bias; ``grad_scale_rows`` (V,) then gathers its gradient,
    and ``g`` holds ``(softmax - onehot) * row_scale``, the gradient of the unscaled product.
    """
    step = step or logits.shape[0]
    block = logits.new_empty((min(step, logits.shape[0]), logits.shape[1]), dtype=torch.float32)
    total = block.new_zeros(())
    for start in range(0, logits.shape[0], step):
        yc = target[start : start + step]
        at = torch.arange(yc.numel(), device=yc.device)
        p = block[: yc.numel()].copy_(logits[start : start + step])  # widened, then scaled and the bias added
        if row_scale is not None:
            p.mul_(row_scale)
        p.add_(bias)
        torch.softmax(p, 1, out=p)
        total -= p[at, yc].clamp_min(_TINY).log().sum()
        if g is None:
            continue
        p[at, yc] -= 1  # d(loss) / d(logits)
        if bias_rows.shape[0] == 1:
            bias_rows += p.sum(0)
        else:
            bias_rows[: yc.numel()] += p
        if grad_scale_rows is not None:
            grad_scale_rows += (p * logits[start : start + step]).sum(0)
        if row_scale is not None:
            p.mul_(row_scale)
        g[start : start + step].copy_(p)
    return total


class _DenseCrossEntropy(torch.autograd.Function):
    """Loss (times ``norm``) in the forward; the gradients of x, scale, bias and a learned W with it."""

    @staticmethod
    def forward(ctx, x, scale, bias, weight, target, norm, grads, packed, operands, tied, row_scale, x2, extra_w):
        needs = [grads and need for need in ctx.needs_input_grad[:4]]
        need_rs = grads and ctx.needs_input_grad[10]
        need_x2, need_extra = (grads and need for need in ctx.needs_input_grad[11:13])
        need_g = any(needs) or need_rs or need_x2 or need_extra
        low = operands != torch.float32  # bf16 operands, float32 everything else
        x = x.float()
        a = 1.0 if scale is None else host_scalar(scale)
        rows = chunk_rows(x.shape[0], weight.shape[0], operands)
        total = x.new_zeros(())
        grad_x = torch.empty_like(x) if need_g else None
        grad_scale = x.new_zeros(()) if needs[1] else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if need_g else None
        # bf16 G: a learned W keeps every chunk's G (N x V in bf16) for one G^T x product at the end
        # (per-chunk bf16 products would each need a float32 pass over the V x d gradient).
        keep_g = low and (needs[3] or need_extra)
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if needs[3] and not keep_g else None
        grad_rs = torch.zeros_like(row_scale, dtype=torch.float32) if need_rs else None
        if x2 is not None:  # the extra logits of the first k words, x2 P^T
            k, x2, low_extra = extra_w.shape[0], x2.float(), extra_w.to(operands)
            grad_x2 = torch.empty_like(x2) if need_x2 else None
            grad_extra = torch.zeros_like(extra_w, dtype=torch.float32) if need_extra and not keep_g else None
        if packed is None:
            w = weight.to(operands)  # no copy when it already is (float32, or a frozen bf16 E)
            packed = w, w.t()
        forward_w, backward_w = packed
        # One float32 logits buffer for all chunks, where the backend writes into it (not oneDNN, not bf16).
        buffer = None if low or uses_onednn(x, forward_w) else x.new_empty(rows * weight.shape[0])
        g_buffer = x.new_empty((x.shape[0] if keep_g else rows) * weight.shape[0], dtype=operands) \
            if low and need_g else None
        # bf16: G's rows are added up elementwise per block (in cache), summed into the bias gradient at the end
        step = _softmax_rows(x)
        bias_rows = x.new_zeros(step or 1, weight.shape[0]) if low and need_g else None
        for start in range(0, x.shape[0], rows):
            xc, yc = x[start : start + rows], target[start : start + rows]
            xs = xc if scale is None else xc * a
            if low:  # bf16 product; bias, softmax, loss and G in float32, G then rounded into the bf16 buffer
                offset = start * weight.shape[0] if keep_g else 0
                g = g_buffer[offset : offset + yc.numel() * weight.shape[0]].view(yc.numel(), -1) if need_g else None
                logits = linear(xs.to(operands), forward_w)
                if x2 is not None:
                    logits[:, :k] += linear(x2[start : start + rows].to(operands), low_extra)
                total += _low_softmax(logits, bias, yc, g, bias_rows, step, row_scale, grad_rs)
                if not need_g:
                    continue
            else:
                at = torch.arange(yc.numel(), device=yc.device)
                out = None if buffer is None else buffer[: yc.numel() * weight.shape[0]].view(yc.numel(), -1)
                logits = linear(xs, forward_w, bias if row_scale is None else None, out=out)
                if x2 is not None:
                    logits[:, :k].addmm_(x2[start : start + rows], extra_w.t())
                raw = logits.clone() if need_rs else None  # the unscaled product, for the scales' gradient
                if row_scale is not None:
                    logits.mul_(row_scale).add_(bias)
                picked = logits[at, yc]
                top = logits.amax(1, keepdim=True)
                probs = logits.sub_(top).exp_()
                sums = probs.sum(1, keepdim=True)
                total += (top.squeeze(1) + sums.squeeze(1).log() - picked).sum()
                if not need_g:
                    continue
                g = probs.div_(sums)
                g[at, yc] -= 1  # g = d(loss) / d(logits)
                grad_bias += g.sum(0)
                if need_rs:
                    grad_rs += raw.mul_(g).sum(0)
                if row_scale is not None:
                    g.mul_(row_scale)  # now d(loss) / d(x W^T)
            g_w = linear(g, backward_w).float()  # G W
            if grad_scale is not None:
                grad_scale += (g_w * xc).sum()
            torch.mul(g_w, a * norm, out=grad_x[start : start + rows])
            if grad_w is not None:
                grad_w.addmm_(g.t(), xs, alpha=norm)
            if x2 is not None and need_x2:
                torch.mul(torch.mm(g[:, :k], low_extra).float(), norm, out=grad_x2[start : start + rows])
            if x2 is not None and grad_extra is not None:
                grad_extra.addmm_(g[:, :k].t(), x2[start : start + rows], alpha=norm)
        if keep_g:  # the scale goes into x: scaling the V x d product on its way to float32 is a slow pass
            g_all = g_buffer.view(x.shape[0], weight.shape[0])
            scaled = (x * (a * norm)).to(operands)
            if needs[3]:
                grad_w = torch.mm(g_all.t(), scaled).float()
            if need_extra:
                grad_extra = torch.mm(g_all[:, :k].t(), (x2 * norm).to(operands)).float()
        if bias_rows is not None:
            grad_bias += bias_rows.sum(0)
        if need_g:
            grad_bias *= norm
            for grad in (grad_scale, grad_rs):
                if grad is not None:
                    grad *= norm
        # Kept on ctx, not saved for backward: the backward scales them in place.
        extras = (grad_x2, grad_extra) if x2 is not None else (None, None)
        ctx.grads, ctx.tied = (grad_x, grad_scale, grad_bias, grad_w, grad_rs, *extras), tied
        return total * norm

    @staticmethod
    def backward(ctx, grad):
        grads, ctx.grads = ctx.grads, None
        if grad.device.type != "cpu" or grad.item() != 1.0:  # loss.backward() passes 1: skip a pass over W
            for g in grads:
                if g is not None:
                    g.mul_(grad)
        if ctx.tied is not None and grads[3] is not None:
            ctx.tied.grad, ctx.tied.task = grads[3], torch._C._current_graph_task_id()
        grad_x, grad_scale, grad_bias, grad_w, grad_rs, grad_x2, grad_extra = grads
        return grad_x, grad_scale, grad_bias, grad_w, None, None, None, None, None, None, grad_rs, grad_x2, grad_extra
