"""BPTT batching: coverage of the stream and exact resume of its position and randomness."""

from __future__ import annotations

import pytest
import torch

from lmfix.data.batching import BPTTStream, batchify


def test_batchify_columns_are_contiguous_streams():
    data = batchify(torch.arange(103), 4)
    assert data.shape == (25, 4)
    assert data[:, 1].tolist() == list(range(25, 50))
    with pytest.raises(ValueError, match="too few"):
        batchify(torch.arange(5), 4)


@pytest.mark.parametrize("variable", [False, True])
def test_windows_cover_the_epoch_with_shifted_targets(variable: bool):
    data = batchify(torch.arange(2000), 5)
    stream = BPTTStream(data, bptt=35, variable=variable, seed=1)
    xs, ys = zip(*stream, strict=True)
    assert torch.equal(torch.cat(xs), data[:-1])
    assert torch.equal(torch.cat(ys), data[1:])
    if variable:
        assert len({x.size(0) for x in xs}) > 3
    else:
        assert {x.size(0) for x in xs[:-1]} == {35}
    assert stream.position == 0  # rewound for the next epoch


def test_state_dict_resumes_exactly():
    data = batchify(torch.arange(5000), 4)
    full = BPTTStream(data, bptt=20, variable=True, seed=7)
    it = iter(full)
    for _ in range(10):
        next(it)
    state = full.state_dict()
    rest = [x.clone() for x, _ in it]

    resumed = BPTTStream(data, bptt=20, variable=True, seed=999)
    resumed.load_state_dict(state)
    again = [x for x, _ in resumed]
    assert len(again) == len(rest)
    assert all(torch.equal(a, b) for a, b in zip(again, rest, strict=True))

