"""Runs of one variant over several seeds: grouping, mean and spread, and paired differences with intervals.

Runs named ``NAME-seedN`` (what a recipe with ``seeds = [...]`` writes) form the
group ``NAME``. A variant is compared with the learned tied baseline seed by
seed (the same run seed and embedding seed), so the spread that both share
cancels: the change ``100 (ppl_variant / ppl_learned - 1)`` is computed per
seed, and its mean gets a Student-t 95% confidence interval over the seeds.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass

_SEED_SUFFIX = re.compile(r"-seed\d+$")


def group_name(run_name: str) -> str:
    """``pmi-seed3`` -> ``pmi``; a name without the suffix is its own group."""
    return _SEED_SUFFIX.sub("", run_name)


@dataclass(frozen=True)
class Spread:
    n: int
    mean: float
    std: float  # sample standard deviation (n - 1); 0 for one value

    def __str__(self) -> str:
        return f"{self.mean:.2f}" if self.n == 1 else f"{self.mean:.2f} ± {self.std:.2f}"


def spread(values: list[float]) -> Spread:
    if not values:
        raise ValueError("spread of no values")
    return Spread(len(values), statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


@dataclass(frozen=True)
class Interval:
    n: int
    mean: float
    low: float | None  # None with one pair: no interval
    high: float | None

    def __str__(self) -> str:
        # Changes all within +-1% (bf16 against fp32 in a stable regime) get two decimals, not a row of +0.0%.
        places = 2 if all(abs(v) < 1 for v in (self.mean, self.low, self.high) if v is not None) else 1
        if self.low is None:
            return f"{self.mean:+.{places}f}% (1 seed)"
        return f"{self.mean:+.{places}f}% [{self.low:+.{places}f}, {self.high:+.{places}f}] ({self.n} seeds)"


def mean_interval(values: list[float], level: float = 0.95) -> Interval:
    """Mean with a two-sided Student-t interval at ``level`` (the values are paired differences)."""
    s = spread(values)
    if s.n == 1:
        return Interval(1, s.mean, None, None)
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, s.n - 1)) * s.std / math.sqrt(s.n)
    return Interval(s.n, s.mean, s.mean - half, s.mean + half)


def paired_change(values: dict[int, float], base: dict[int, float]) -> Interval | None:
    """Per-seed relative change (%) of ``values`` against ``base``, over the seeds both have."""
    seeds = sorted(set(values) & set(base))
    if not seeds:
        return None
    return mean_interval([100 * (values[s] / base[s] - 1) for s in seeds])
