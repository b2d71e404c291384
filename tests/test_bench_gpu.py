"""``lmfix bench gpu``: the GPU plan as built here, and its CPU rehearsal end to end on tiny sizes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lmfix.bench import gpu
from lmfix.bench.gpu import Step, plan, run_gpu_bench
from lmfix.bench.head import PEERS, ROWS

pytest.importorskip("triton", reason="the tests step needs triton (pip install -e '.[gpu]')")


def test_the_gpu_plan_runs_the_cuda_tests_and_the_papers_sizes_on_the_gpu(tmp_path):
    steps = {step.name: step for step in plan(tmp_path, "cuda", quick=False, corpus="wikitext-2")}
    assert list(steps) == ["env", "tests", "head-33278x512-n700", "head-256000x4096-n700",
                           "head-256000x4096-n8192", "bench-train", "train-learned", "train-orthogonal",
                           "train-hadamard"]
    tests = steps["tests"]
    assert tests.argv[tests.argv.index("-k") + 1] == "cuda" and tests.env == {"TRITON_INTERPRET": None}
    head = steps["head-256000x4096-n700"].argv
    assert head[head.index("--device") + 1] == "cuda" and head[head.index("--precision") + 1] == "fp32,bf16"
    assert head[head.index("--layouts") + 1].split(",") == list(ROWS)
    for name in ("bench-train", "train-hadamard"):
        argv = steps[name].argv
        assert argv[argv.index("--device") + 1] == "cuda" and argv[argv.index("--emsize") + 1] == "512"
    assert "210000" in steps["train-learned"].argv


def test_a_step_past_its_time_limit_is_killed_and_recorded(tmp_path):
    sleeper = Step("sleep", (sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"), 1)
    result = gpu._run_step(sleeper, tmp_path, timeout_s=5)  # time for Python to start and print, even loaded
    assert result["status"] == "timeout after 5 s" and result["seconds"] < 60  # killed, not slept out
    assert (tmp_path / "sleep.log").read_text().strip() == "started"


def test_missing_packages_are_named_in_one_line_and_late_steps_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, "REQUIRED", (*gpu.REQUIRED, "no_such_module_xyz"))
    lines = []
    results = run_gpu_bench(tmp_path, device="cpu", quick=True, deadline_s=0, only=["env", "tests"],
                            progress=lines.append)
    assert lines == ["missing packages: no_such_module_xyz (carry their wheels: README, GPU)"]
    assert [r["status"] for r in results] == ["skipped: past the 0 s deadline"] * 2
    assert "missing packages: no_such_module_xyz" in (tmp_path / "summary.md").read_text()
    with pytest.raises(ValueError, match="unknown steps"):
        run_gpu_bench(tmp_path, device="cpu", only=["head"])


@pytest.mark.slow
def test_cpu_rehearsal_runs_every_step_and_writes_its_files(tmp_path, tiny_corpus_dir):
    out = tmp_path / "gpu"
    results = run_gpu_bench(out, device="cpu", quick=True, corpus=str(tiny_corpus_dir))
    summary = (out / "summary.md").read_text()
    assert [r["step"] for r in results] == [step.name for step in plan(out, "cpu", True, "")]
    assert all(r["status"] == "ok" for r in results), summary
    for result, step in zip(results, plan(out, "cpu", True, ""), strict=True):
        assert result["files"] == list(step.files) and (out / f"{step.name}.log").is_file()
        assert f"| {step.name} | ok |" in summary
    assert json.loads((out / "env.json").read_text())["missing"] == []
    assert 'testsuite name="pytest"' in (out / "tests.xml").read_text()
    heads = json.loads((out / "head-2000x32-n64.json").read_text())
    assert [row["head"] for row in heads] == list(ROWS)
    assert all(("skipped" if row["head"] in PEERS else "median_s") in row for row in heads)
    assert set(json.loads((out / "bench-train.json").read_text())["variants"]) == {
        "plain", "learned", "orthogonal", "hadamard"}
    for variant in gpu.TRAIN_VARIANTS:
        assert Path(out / "runs" / variant / "metrics.jsonl").read_text().strip()
