"""Triton kernels against float64 references: compiled on a GPU, interpreted on CPU tensors elsewhere.

Triton picks the interpreter when a kernel is *decorated*, from TRITON_INTERPRET,
so the kernels must be imported with it set. Setting it in this process would
leak into every other test, so the tests seen by a normal run re-run this file in
a subprocess with TRITON_INTERPRET=1, where the checks run on CPU tensors. On a
CUDA machine the same checks also run compiled, on the GPU, in fp32 and bf16
(``pytest tests/test_ops_triton.py -k cuda`` selects them), with two more that
need a large GPU: element offsets past 2^31. The interpreter ignores register
limits and tl.dot precision, but it wraps int32 arithmetic as a GPU does, so the
offset test below means the same in both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[gpu]')")

import scipy.linalg  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = not INTERPRETED and torch.cuda.is_available()
ROOT = Path(__file__).resolve().parent.parent


def reference_fwht(x: torch.Tensor) -> torch.Tensor:
    """``x @ H_n`` in float64 on CPU, as ``H_a X H_b`` on each row viewed as a x b (H_n = H_a kron H_b)."""
    n = x.shape[-1]
    a = max(1, n // 64)
    h_a, h_b = (torch.tensor(scipy.linalg.hadamard(k), dtype=torch.float64) for k in (a, n // a))
    return (h_a @ x.double().cpu().reshape(-1, a, n // a) @ h_b).reshape(x.shape)


if not INTERPRETED:

    def test_kernels_under_interpreter():
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        assert " passed" in proc.stdout and "skipped" not in proc.stdout

    def test_compiled_kernels_refuse_cpu_tensors():
        from lmfix.ops import hadamard_cross_entropy, make_layout, triton_fwht

        assert not triton_fwht.INTERPRETED
        with pytest.raises(ValueError, match="run on CUDA tensors"):
            triton_fwht.fwht(torch.randn(4, 16))
        layout = make_layout(100, 16, "distinct")
        with pytest.raises(ValueError, match="run on CUDA tensors"):
            hadamard_cross_entropy(torch.randn(4, 16), torch.zeros(4, dtype=torch.long), layout, backend="triton")


if INTERPRETED or CUDA:
    import triton
    import triton.language as tl

    from lmfix.ops import hadamard_cross_entropy, make_layout, triton_fwht
    from lmfix.ops.triton_fwht import _row_offsets

    DEVICE = "cuda" if CUDA else "cpu"
    # rtol, atol of the outputs, per input dtype: fp32 inside, so bf16 only adds its output rounding.
    TOLERANCE = {torch.float64: (1e-5, 1e-4), torch.float32: (1e-5, 1e-4), torch.bfloat16: (1 / 128, 1e-3)}

    @pytest.mark.parametrize("device", [DEVICE])
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
    @pytest.mark.parametrize(("rows", "n"), [(37, 16), (5, 128), (19, 256), (3, 512), (3, 4096), (2, 8192)])
    def test_fwht_kernel_matches_reference(rows, n, dtype, device):
        # Row counts are not multiples of the kernel's tile rows (partial tiles are masked); 4096 and
        # 8192 take one row per tile (ROWS = 1), the largest tiles.
        x = torch.randn(rows, n, dtype=torch.float64).to(device=device, dtype=dtype)
        out = triton_fwht.fwht(x)
        assert out.dtype == dtype and out.device == x.device
        rtol, atol = TOLERANCE[dtype]
        torch.testing.assert_close(out.cpu().double(), reference_fwht(x), rtol=rtol, atol=atol)

    @triton.jit
    def _offsets_kernel(out_ptr, first, ROWS: tl.constexpr, WIDTH: tl.constexpr):
        _, offsets = _row_offsets(first, ROWS, WIDTH)
        tl.store(out_ptr + tl.arange(0, ROWS)[:, None] * WIDTH + tl.arange(0, WIDTH)[None, :], offsets)

    @pytest.mark.parametrize("device", [DEVICE])
    def test_element_offsets_are_int64_past_2_31(device):
        # Row 2^19 + 3 of a 4096-wide tensor starts past 2^31 (e.g. 2^19 tokens at d = 4096): int32
        # offsets would wrap negative, which the interpreter reproduces.
        first, rows, width = 2**31 // 4096 + 3, 2, 4096
        out = torch.empty(rows, width, dtype=torch.int64, device=device)
        _offsets_kernel[(1,)](out, first, ROWS=rows, WIDTH=width)
        want = (torch.arange(rows) + first)[:, None] * width + torch.arange(width)
        assert int(want.max()) > 2**31
        torch.testing.assert_close(out.cpu(), want, rtol=0, atol=0)

    def _dense_reference(layout, x, bias, alpha, target, weights, reduction):
        """Loss and gradients in float64 through the dense V x d matrix, on CPU."""
        x64, bias64, alpha64 = (t.detach().cpu().double().requires_grad_() for t in (x, bias, alpha))
        logits = alpha64 * x64 @ layout.dense(torch.float64).T + bias64
        ref = F.cross_entropy(logits, target.cpu(), reduction=reduction)
        grads = torch.autograd.grad((ref * weights.cpu().double()).sum(), (x64, alpha64, bias64))
        return ref.detach(), grads

    @pytest.mark.parametrize("device", [DEVICE])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
    @pytest.mark.parametrize(("vocab", "dim", "tokens"), [(1000, 16, 21), (700, 200, 9), (4500, 2100, 3)])
    @pytest.mark.parametrize("reduction", ["mean", "none"])
    def test_loss_kernels_match_dense(vocab, dim, tokens, reduction, dtype, device):
        # (1000, 16): one H_16 tile, 63 blocks, the last one partial; (700, 200): d padded to
        # D = 256 = 16 x 16, three blocks; (4500, 2100): D = 4096, one token per tile. "mean"
        # runs both kernels in the forward (gradient computed eagerly), "none" the backward
        # kernel with per-token weights. bf16 hidden states are computed in fp32 inside.
        layout = make_layout(vocab, dim, "distinct", seed=4)
        assert not layout.periodic
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(tokens, dim, generator=gen).to(device=device, dtype=dtype).requires_grad_()
        bias = torch.randn(vocab, generator=gen).to(device).requires_grad_()
        alpha = torch.tensor(1.3, device=device, requires_grad=True)
        target = torch.randint(0, vocab, (tokens,), generator=gen).to(device)
        weights = torch.linspace(0.5, 1.5, tokens) if reduction == "none" else torch.tensor(1.0)

        ours = hadamard_cross_entropy(x, target, layout, bias, alpha, reduction=reduction, backend="triton")
        assert ours.dtype == dtype
        got = torch.autograd.grad((ours * weights.to(device)).sum(), (x, alpha, bias))

        ref, want = _dense_reference(layout, x, bias, alpha, target, weights, reduction)
        rtol, atol = (1e-5, 1e-5) if dtype == torch.float32 else (1e-2, 1e-3)
        torch.testing.assert_close(ours.cpu().double(), ref, rtol=rtol, atol=atol)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g.cpu().double(), w, rtol=max(rtol, 1e-4), atol=atol)

    def test_triton_backend_refuses_blocks_it_cannot_tile():
        layout = make_layout(100, 8, "distinct")
        with pytest.raises(ValueError, match="16 <= block <= 4096"):
            hadamard_cross_entropy(torch.randn(4, 8), torch.zeros(4, dtype=torch.long), layout, backend="triton")
        assert not triton_fwht.supports_fwht(8) and triton_fwht.supports_fwht(8192)
        with pytest.raises(ValueError, match="power of two in"):
            triton_fwht.fwht(torch.randn(2, 48))


if CUDA:
    _BIG = torch.cuda.get_device_properties(0).total_memory >= 64 * 2**30
    big_gpu = pytest.mark.skipif(not _BIG, reason="needs a GPU with >= 64 GiB (tensors of 2^31+ elements)")

    @big_gpu
    def test_fwht_past_2_31_elements_cuda():
        rows, n = 2**31 // 512 + 40, 512  # 8.6 GB in, 8.6 GB out
        x = torch.randn(rows, n, device="cuda")
        out = triton_fwht.fwht(x)
        for part in (slice(0, 8), slice(rows - 64, rows)):
            torch.testing.assert_close(out[part].cpu().double(), reference_fwht(x[part]), rtol=1e-5, atol=1e-4)

    @big_gpu
    def test_loss_past_2_31_elements_cuda():
        # 2^19 + 8 tokens at d = D = 4096: x, the folded gradient and grad_x each pass 2^31 elements.
        tokens, dim, vocab, tail = 2**31 // 4096 + 8, 4096, 8192, 8
        layout = make_layout(vocab, dim, "distinct", seed=1)
        x = torch.randn(tokens, dim, device="cuda", requires_grad=True)
        bias = torch.randn(vocab, device="cuda", requires_grad=True)
        alpha = torch.tensor(0.7, device="cuda", requires_grad=True)
        target = torch.randint(0, vocab, (tokens,), device="cuda")
        losses = hadamard_cross_entropy(x, target, layout, bias, alpha, reduction="none")
        (grad_x,) = torch.autograd.grad(losses.sum(), (x,))
        last = slice(tokens - tail, tokens)
        ref, want = _dense_reference(layout, x[last], bias, alpha, target[last], torch.ones(tail), "none")
        torch.testing.assert_close(losses[last].cpu().double(), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad_x[last].cpu().double(), want[0], rtol=1e-4, atol=1e-5)
