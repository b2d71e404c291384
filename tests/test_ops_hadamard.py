"""HadamardLayout: the matrix it stands for, distinct rows, serialisation, validation."""

from __future__ import annotations

import json
import math

import pytest
import scipy.linalg
import torch

from lmfix.ops import HadamardLayout, make_layout


def sylvester(layout: HadamardLayout) -> torch.Tensor:
    """Reference E from scipy: H_n[:V, columns] / sqrt(d), float64."""
    h = torch.tensor(scipy.linalg.hadamard(layout.n), dtype=torch.float64)
    return h[: layout.vocab_size][:, list(layout.columns)] / math.sqrt(layout.dim)


@pytest.mark.parametrize("layout_name", ["distinct", "truncated"])
@pytest.mark.parametrize(("vocab", "dim"), [(1000, 32), (300, 24), (5, 8), (70, 64), (40, 100)])
def test_rows_match_scipy_hadamard(layout_name, vocab, dim):
    layout = make_layout(vocab, dim, layout_name, seed=3)
    assert layout.n >= max(vocab, dim) and layout.n & (layout.n - 1) == 0
    torch.testing.assert_close(layout.dense(torch.float64), sylvester(layout), rtol=0, atol=1e-15)
    ids = torch.tensor([[0, vocab - 1], [vocab // 2, 1]])
    rows = layout.rows(ids, torch.float64)
    assert rows.shape == (2, 2, dim)
    torch.testing.assert_close(rows[1, 0], sylvester(layout)[vocab // 2])


def test_truncated_is_the_papers_matrix_and_repeats_every_d():
    layout = make_layout(1000, 32, "truncated")
    assert layout.columns == tuple(range(32))
    e = layout.dense()
    torch.testing.assert_close(e[40], e[8])
    assert layout.periodic
    assert layout.distinct_rows() == 32 == torch.unique(e, dim=0).shape[0]


@pytest.mark.parametrize(("vocab", "dim"), [(1000, 32), (3000, 16), (300, 24)])
def test_distinct_rows_are_all_different(vocab, dim):
    layout = make_layout(vocab, dim, "distinct", seed=1)
    assert not layout.periodic
    assert layout.distinct_rows() == vocab == torch.unique(layout.dense(), dim=0).shape[0]
    block = layout.block
    assert all(c % block == k for k, c in enumerate(layout.columns))


def test_distinct_layout_is_seeded_and_incoherent():
    a, b = make_layout(2000, 64, seed=0), make_layout(2000, 64, seed=0)
    assert a == b and a.columns != make_layout(2000, 64, seed=1).columns
    e = a.dense(torch.float64)
    gram = (e @ e.T).abs() - torch.eye(2000, dtype=torch.float64)
    # Truncated rows coincide (coherence 1); the distinct layout keeps all pairs well apart.
    assert gram.max() < 0.5


def test_to_dict_round_trips_through_json():
    layout = make_layout(500, 48, "distinct", seed=7)
    again = HadamardLayout.from_dict(json.loads(json.dumps(layout.to_dict())))
    assert again == layout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 8), "vocab_size must be positive"),
        ((10, 0), "dim must be positive"),
        ((10, 8, "sparse"), "use one of distinct, truncated"),
        ((100000, 4), "use layout='truncated'"),
    ],
)
def test_make_layout_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        make_layout(*args)


def test_constructor_validates_columns():
    good = make_layout(100, 8).to_dict()
    for change, message in [
        ({"n": 96}, "power of two"),
        ({"columns": good["columns"][:-1]}, "distinct indices"),
        ({"columns": [0] * 8}, "distinct indices"),
        ({"columns": [c + 1 for c in good["columns"]]}, "mod 8 must equal k"),
        ({"columns": [*good["columns"][:-1], 1000]}, r"lie in \[0, 128\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            HadamardLayout.from_dict({**good, **change})
