"""The head benchmark on tiny sizes: rows, comparisons with dense, the markdown table."""

from __future__ import annotations

import pytest
import torch

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


def test_bench_times_the_transform_against_a_copy_and_skips_peers_it_cannot_run():
    results = run_head_bench(vocab=500, dim=48, tokens=16, repeats=1, layouts=("dense", "fwht", "copy", "liger",
                                                                               "fwht-dao"))
    dense, transform, copy, liger, dao = results
    for row in (transform, copy):  # N x D with D = 64: read and written once
        assert row["gb_s"] == pytest.approx(2 * 16 * 64 * 4 / row["median_s"] / 1e9)
        assert "speedup_vs_dense" not in row and row["device"] == "cpu"
    assert liger["skipped"] in ("liger_kernel is not installed", "a CUDA-only peer") and "median_s" not in liger
    assert dao["skipped"] in ("fast_hadamard_transform is not installed", "a CUDA-only peer")
    assert "| liger | fp32 | 500 | 48 | 16 | skipped: " in format_head_table(results)


def test_a_failing_row_is_recorded_and_the_others_still_run(monkeypatch):
    def broken(layout):
        raise RuntimeError("kernel failed\nsecond line")

    monkeypatch.setattr("lmfix.bench.head._hadamard_loss", broken)
    results = run_head_bench(vocab=500, dim=16, tokens=8, repeats=1, layouts=("distinct", "copy"))
    assert results[0]["failed"] == "RuntimeError: kernel failed" and results[1]["median_s"] > 0
    assert "failed: RuntimeError: kernel failed" in format_head_table(results)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where no GPU is visible")
def test_bench_on_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        run_head_bench(vocab=500, dim=16, tokens=8, repeats=1, device="cuda")
