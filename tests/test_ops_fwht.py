"""The Walsh-Hadamard transform against scipy's Hadamard matrix, and its gradient."""

from __future__ import annotations

import pytest
import scipy.linalg
import torch

from lmfix.ops import fwht
from lmfix.ops.bits import factors, parity
from lmfix.ops.transform import swapped_fwht_into


def dense_hadamard(n: int) -> torch.Tensor:
    return torch.tensor(scipy.linalg.hadamard(n), dtype=torch.float64)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 64, 256, 512, 2048])
def test_matches_scipy_matrix(n):
    x = torch.randn(3, 5, n, dtype=torch.float64)
    torch.testing.assert_close(fwht(x), x @ dense_hadamard(n), rtol=0, atol=1e-10)
    x32 = x.float()
    torch.testing.assert_close(fwht(x32), (x @ dense_hadamard(n)).float(), rtol=1e-5, atol=1e-4)


def test_many_rows_span_several_cache_blocks():
    x = torch.randn(1000, 512)
    torch.testing.assert_close(fwht(x).double(), x.double() @ dense_hadamard(512), rtol=1e-5, atol=1e-4)


def test_large_order_recursion():
    # Above 2^14 the transform recurses; check one full row and the involution H H = n I.
    n = 1 << 15
    x = torch.randn(2, n, dtype=torch.float64)
    torch.testing.assert_close(fwht(fwht(x)) / n, x)
    unit = torch.zeros(1, n, dtype=torch.float64)
    unit[0, 12345] = 1.0
    row = 1 - 2 * parity(torch.arange(n) & 12345).double()
    torch.testing.assert_close(fwht(unit)[0], row, rtol=0, atol=0)


def test_gradient_is_the_transform():
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fwht, (x,))
    assert torch.autograd.gradgradcheck(fwht, (x,))
    grad = torch.randn(4, 8, dtype=torch.float64)
    fwht(x).backward(grad)
    torch.testing.assert_close(x.grad, grad @ dense_hadamard(8))


def test_swapped_pair_is_transform_and_adjoint():
    n = 512
    a, b = factors(n)
    x = torch.randn(7, n, dtype=torch.float64)
    swapped = swapped_fwht_into(x, torch.empty_like(x), a)
    natural = x @ dense_hadamard(n)
    torch.testing.assert_close(swapped.view(7, b, a).mT.reshape(7, n), natural)
    y = torch.randn(7, n, dtype=torch.float64)
    back = swapped_fwht_into(y, torch.empty_like(y), b)
    torch.testing.assert_close((swapped * y).sum(), (x * back).sum())


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="power of two"):
        fwht(torch.randn(3, 12))
    with pytest.raises(TypeError, match="floating-point"):
        fwht(torch.ones(4, dtype=torch.int64))
