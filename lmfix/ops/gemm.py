"""``x @ w.T (+ bias)`` for the dense heads: oneDNN on CPU float32, ``F.linear`` otherwise.

Why: PyTorch sends float32 matmuls on the CPU to MKL. On the head's shapes
(N x 512 by 512 x 33k) MKL runs at about 150 GFLOP/s on this project's AMD EPYC
machine, while oneDNN (the library PyTorch already ships, reached through the
``mkldnn::_linear_pointwise`` op that torch.compile uses) runs at about 290. Both
products are exact float32. ``lmfix bench train --gemm torch`` measures the
difference on your hardware.

A frozen matrix can also be *packed* once (``pack``): reordered into oneDNN's
blocked layout, so the per-call reordering of the weight disappears (~6% of the
fixed head's time at V=33278, d=512). Packing costs ~0.1 s and a copy of the
matrix per layout, so it is for frozen matrices only and capped in size.

The backend is ``auto`` (oneDNN where it works, checked once against
``F.linear``), ``onednn`` or ``torch``. Set it with ``$LMFIX_GEMM`` or ``use()``.
The oneDNN op has no autograd, so products that autograd must differentiate
always take ``F.linear``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from lmfix.errors import LmfixError

BACKENDS = ("auto", "onednn", "torch")


class GemmError(LmfixError):
    """An unknown GEMM backend, or oneDNN asked for where it does not work."""


def _checked(name: str) -> str:
    if name not in BACKENDS:
        raise GemmError(f"unknown GEMM backend {name!r} (from $LMFIX_GEMM or --gemm); "
                        f"choose from {', '.join(BACKENDS)}")
    if name == "onednn" and not onednn_available():
        raise GemmError("the oneDNN GEMM is not available in this PyTorch build; use --gemm torch or auto")
    return name


_backend = os.environ.get("LMFIX_GEMM", "auto")


def configured() -> str:
    """The backend as set (``auto`` unresolved), checked."""
    return _checked(_backend)


def resolve(name: str) -> str:
    """``onednn`` or ``torch`` for a backend name (``auto`` resolved), checked."""
    name = _checked(name)
    if name == "auto":
        return "onednn" if onednn_available() else "torch"
    return name


def backend() -> str:
    """The backend in force: ``onednn`` or ``torch``."""
    return resolve(_backend)


@contextlib.contextmanager
def use(name: str) -> Iterator[None]:
    """Run the block with GEMM backend ``name``."""
    global _backend
    previous, _backend = _backend, _checked(name)
    try:
        yield
    finally:
        _backend = previous


@functools.cache
def onednn_available() -> bool:
    """True when the oneDNN op exists and agrees with ``F.linear`` on a small product."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(5, 24, generator=g), torch.randn(40, 24, generator=g), torch.randn(40, generator=g)
    try:
        out = op(x, w.t().contiguous().t(), b, "none", [], "")
    except RuntimeError:
        return False
    return bool(torch.allclose(out, F.linear(x, w, b), rtol=1e-5, atol=1e-5))


# Largest matrix ``pack`` copies (256 MiB in float32): WikiText-2 at d=512 is 65 MiB.
_PACK_MAX_ELEMENTS = 1 << 26


def pack(w: torch.Tensor, rows: int) -> torch.Tensor | None:
    """``w`` (M, K), possibly a transposed view, reordered for ``linear(x, packed)`` with ~``rows`` rows of x.

    None when there is nothing to gain: another backend, device or dtype, or a matrix over the size cap.
    """
    if not _onednn_takes(w) or w.numel() > _PACK_MAX_ELEMENTS:
        return None
    return torch.ops.mkldnn._reorder_linear_weight(w.detach(), rows)


def _onednn_takes(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.bfloat16) and backend() == "onednn"


def uses_onednn(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether ``linear(x, w)`` (outside autograd) runs on oneDNN, which cannot write into ``out``."""
    return w.is_mkldnn or (_onednn_takes(x) and w.dtype == x.dtype)


def linear(
    x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ w.T + bias`` for 2-d ``x`` (N, K) and ``w`` (M, K): dense (a transposed view is fine) or packed.

    ``out`` (N, M), outside autograd: a buffer to reuse where the backend can write into one
    (``torch``; oneDNN always allocates its result). Saves the page faults of a fresh large tensor.
    """
    differentiable = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, w, bias))
    if differentiable and not w.is_mkldnn:
        return F.linear(x, w, bias)
    if uses_onednn(x, w):
        return torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")
    if out is None:
        return F.linear(x, w, bias)
    return torch.mm(x, w.t(), out=out) if bias is None else torch.addmm(bias, x, w.t(), out=out)
