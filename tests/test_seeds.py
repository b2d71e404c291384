"""Statistics over seeds: grouping by name, mean ± std, paired changes with Student-t intervals."""

from __future__ import annotations

import math

import pytest

from lmfix.analysis.seeds import group_name, mean_interval, paired_change, spread


def test_groups_are_names_without_the_seed_suffix():
    assert group_name("pmi-seed12") == "pmi" and group_name("hadamard-truncated-seed1") == "hadamard-truncated"
    assert group_name("pmi") == "pmi" and group_name("pmi-seedless") == "pmi-seedless"


def test_spread_and_interval_on_known_values():
    s = spread([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0) and str(s) == "2.00 ± 1.00"
    assert str(spread([5.0])) == "5.00"
    interval = mean_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2 degrees of freedom) * sd / sqrt(n)
    assert interval.low == pytest.approx(2 - half) and interval.high == pytest.approx(2 + half)
    assert str(interval) == f"+2.0% [{2 - half:+.1f}, {2 + half:+.1f}] (3 seeds)"
    with pytest.raises(ValueError):
        spread([])


def test_paired_change_uses_only_the_shared_seeds():
    change = paired_change({1: 110.0, 2: 90.0, 7: 1.0}, {1: 100.0, 2: 100.0, 3: 50.0})
    assert change.n == 2 and change.mean == pytest.approx(0.0)
    half = 12.706204736174698 * math.sqrt(200) / math.sqrt(2)  # t(0.975, 1) * sd / sqrt(n), sd of (10, -10)
    assert change.high == pytest.approx(half)
    one = paired_change({1: 105.0}, {1: 100.0})
    assert one.low is None and str(one) == "+5.0% (1 seed)"
    assert str(paired_change({1: 100.006}, {1: 100.0})) == "+0.01% (1 seed)"  # small changes keep two decimals
    small = paired_change({1: 100.1, 2: 100.2, 3: 100.3}, {1: 100.0, 2: 100.0, 3: 100.0})
    assert str(small) == f"+0.20% [{small.low:+.2f}, {small.high:+.2f}] (3 seeds)" and small.high < 1
    assert paired_change({1: 1.0}, {2: 1.0}) is None
