"""The head benchmark on tiny sizes: rows, comparisons with dense, the markdown table."""

from __future__ import annotations

import pytest

from lmfix.bench.head import format_head_table, run_head_bench


def test_bench_rows_and_table(monkeypatch):
    monkeypatch.setattr("lmfix.ops.dense_loss._CHUNK_ELEMENTS", 16 * 2000)  # the fused head in 4 chunks
    results = run_head_bench(vocab=2000, dim=32, tokens=64, repeats=1)
    assert [r["head"] for r in results] == ["dense", "dense-fused", "distinct", "truncated"]
    dense, fused, distinct, truncated = results
    assert dense["speedup_vs_dense"] == 1.0 and dense["matrix_mb"] > 0
    assert fused["matrix_mb"] == dense["matrix_mb"] and fused["largest_tensor_mb"] < dense["largest_tensor_mb"] / 2
    assert distinct["distinct_rows"] == 2000 and truncated["distinct_rows"] == 32
    for row in (distinct, truncated):
        assert row["median_s"] > 0 and row["matrix_mb"] == 0
        assert row["largest_tensor_mb"] < dense["matrix_mb"]
    table = format_head_table(results)
    assert table.count("\n") == 5 and "| distinct | fp32 | 2000 | 32 | 64 |" in table and "load avg" in table


def test_bench_times_each_head_in_each_precision_and_bf16_halves_the_matrix():
    results = run_head_bench(vocab=2000, dim=32, tokens=64, repeats=1, layouts=("dense", "dense-fused", "distinct"),
                             precisions=("fp32", "bf16"))
    assert [(r["head"], r["precision"]) for r in results] == [
        (h, p) for p in ("fp32", "bf16") for h in ("dense", "dense-fused", "distinct")]
    fp32, bf16 = results[:3], results[3:]
    assert bf16[0]["matrix_mb"] == fp32[0]["matrix_mb"] / 2 == bf16[1]["matrix_mb"]
    assert bf16[0]["speedup_vs_dense"] == 1.0  # compared with the dense head of its own precision


def test_bench_skips_a_dense_matrix_that_does_not_fit():
    results = run_head_bench(vocab=500, dim=16, tokens=8, repeats=1, layouts=("dense", "truncated"), max_matrix_gb=1e-6)
    assert "skipped" in results[0] and "speedup_vs_dense" not in results[1]
    assert "skipped: V x d matrix needs" in format_head_table(results)


def test_bench_rejects_unknown_heads():
    with pytest.raises(ValueError, match="choose from dense, dense-fused, distinct, truncated"):
        run_head_bench(layouts=("sparse",))
