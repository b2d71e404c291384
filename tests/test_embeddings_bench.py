"""The embeddings benchmark as library code: it runs and reports sane numbers (no timing asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmfix.bench.embeddings import TARGET_PEAK_BYTES, bench, compare_svd
from lmfix.data.corpus import load


def test_bench_builds_in_fresh_processes(tiny_corpus_dir: Path):
    (result,) = bench(["orthogonal"], str(tiny_corpus_dir), {}, dim=8, repeat=2)
    assert result.method == "orthogonal" and len(result.runs) == 2
    for run in result.runs:
        assert run.seconds > 0 and run.cpu_seconds > 0 and run.peak_rss_bytes > run.build_rss_bytes >= 0
    assert result.max_peak_bytes <= TARGET_PEAK_BYTES  # memory, not time: how fast it ran is not asserted


def test_compare_svd_scores_randomized_against_arpack(tiny_corpus_dir: Path):
    reference, *randomized = compare_svd(load(str(tiny_corpus_dir)), dim=6, power_iters=(2, 8))
    assert reference.solver == "arpack" and reference.subspace == 1
    assert [r.power_iters for r in randomized] == [2, 8]
    best = randomized[-1]
    assert best.sv_error_max < 1e-3 and best.subspace == pytest.approx(1, abs=1e-3)
