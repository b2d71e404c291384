"""Triton kernels on CPU tensors under the interpreter, against float64 references.

Triton picks the interpreter when a kernel is *decorated*, from TRITON_INTERPRET,
so the kernels must be imported with it set. Setting it in this process would
leak into every other test, so the one test seen by a normal run re-runs this
file in a subprocess with TRITON_INTERPRET=1, where the real checks (defined
only there) run. The interpreter ignores register limits and tl.dot
precision: these tests check the arithmetic and masking, not GPU performance.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[gpu]')")

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
ROOT = Path(__file__).resolve().parent.parent

if not INTERPRETED:

    def test_kernels_under_interpreter():
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        assert " passed" in proc.stdout and "skipped" not in proc.stdout

else:
    import scipy.linalg
    import torch
    import torch.nn.functional as F

    from lmfix.ops import hadamard_cross_entropy, make_layout, triton_fwht

    @pytest.mark.parametrize(("rows", "n"), [(37, 16), (5, 128), (19, 256), (3, 512)])
    def test_fwht_kernel_matches_scipy(rows, n):
        # Row counts are not multiples of the kernel's tile rows (partial tiles are masked).
        x = torch.randn(rows, n, dtype=torch.float64)
        ref = x @ torch.tensor(scipy.linalg.hadamard(n), dtype=torch.float64)
        out = triton_fwht.fwht(x)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)

    @pytest.mark.parametrize(("vocab", "dim", "tokens"), [(1000, 16, 21), (700, 200, 9)])
    @pytest.mark.parametrize("reduction", ["mean", "none"])
    def test_loss_kernels_match_dense(vocab, dim, tokens, reduction):
        # (1000, 16): one H_16 tile, 63 blocks, the last one partial; (700, 200): d padded to
        # D = 256 = 16 x 16, three blocks. "mean" runs both kernels in the forward (gradient
        # computed eagerly), "none" the backward kernel with per-token weights.
        layout = make_layout(vocab, dim, "distinct", seed=4)
        assert not layout.periodic
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(tokens, dim, generator=gen).requires_grad_()
        bias = torch.randn(vocab, generator=gen).requires_grad_()
        alpha = torch.tensor(1.3, requires_grad=True)
        target = torch.randint(0, vocab, (tokens,), generator=gen)
        weights = torch.linspace(0.5, 1.5, tokens) if reduction == "none" else torch.tensor(1.0)

        ours = hadamard_cross_entropy(x, target, layout, bias, alpha, reduction=reduction, backend="triton")
        got = torch.autograd.grad((ours * weights).sum(), (x, alpha, bias))

        x64, bias64, alpha64 = (t.detach().double().requires_grad_() for t in (x, bias, alpha))
        logits = alpha64 * x64 @ layout.dense(torch.float64).T + bias64
        ref = F.cross_entropy(logits, target, reduction=reduction)
        want = torch.autograd.grad((ref * weights.double()).sum(), (x64, alpha64, bias64))
        torch.testing.assert_close(ours.double(), ref.detach(), rtol=1e-5, atol=1e-5)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-5)

    def test_triton_backend_refuses_blocks_it_cannot_tile():
        layout = make_layout(100, 8, "distinct")
        with pytest.raises(ValueError, match="16 <= block <= 4096"):
            hadamard_cross_entropy(torch.randn(4, 8), torch.zeros(4, dtype=torch.long), layout, backend="triton")
        assert not triton_fwht.supports_fwht(8) and triton_fwht.supports_fwht(8192)
