"""``lmfix bench gpu``: everything a GPU session measures, as one command that leaves files and goes on.

A GPU is lent for minutes, so the whole session is one call that cannot stop
early. Steps, each a subprocess of its own (a CUDA fault poisons the process
that hits it; a hung kernel is killed at the step's time limit) whose output
goes to ``DIR/<step>.log``; a failed step is recorded and the next one runs:

1. ``env``: GPU, driver, CUDA, torch, triton, Python, peers -> ``env.json``
2. ``tests``: the Triton kernels compiled for the GPU, fp32 and bf16, against
   float64 references (``tests/test_ops_triton.py -k cuda``), and the CUDA-only
   paths (``tests/test_cuda_paths.py``) -> ``tests.xml``
3. ``head-*``: ``lmfix bench head`` at V=33,278 d=512 and V=256,000 d=4,096
   (700 tokens, and 8,192 at the large size), every row -> ``head-*.json``
4. ``bench-train``: ``lmfix bench train``, 512/512, plain, learned, orthogonal,
   hadamard, fp32 and bf16 -> ``bench-train.json``
5. ``train-*``: 300 steps (210k tokens) of learned, orthogonal and hadamard on
   the corpus, 512/512 -> ``runs/<variant>/metrics.jsonl``

``summary.md`` (rewritten after every step, so a killed call still leaves one)
gives each step's status, time, files and the end of its output; ``steps.json``
the same for programs. ``device="cpu", quick=True`` runs every step on tiny
sizes (the Triton tests under the interpreter), so a GPU session only changes
the device. Nothing here imports torch: the parent never holds a CUDA context.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lmfix import atomic

ROOT = Path(__file__).resolve().parent.parent.parent
# What the steps import; the peers are optional rows of the head benchmark.
REQUIRED = ("torch", "triton", "numpy", "scipy", "pytest", "tqdm")
PEERS = {"liger-kernel": "liger_kernel", "cut-cross-entropy": "cut_cross_entropy",
         "fast-hadamard-transform": "fast_hadamard_transform"}
TRAIN_VARIANTS = ("learned", "orthogonal", "hadamard")
# lmfix.bench.head.ROWS, spelled out since importing it would import torch here (a test holds them equal).
_HEAD_ROWS = "dense,dense-fused,distinct,truncated,fwht,copy,liger,cce,fwht-dao"
_TAIL_LINES = 40


@dataclass(frozen=True)
class Sizes:
    """Everything the plan sizes: the paper's setting, or tiny ones for the CPU rehearsal."""

    heads: tuple[tuple[int, int, int], ...]  # (V, d, tokens)
    head_repeats: int
    model: tuple[str, ...]  # lmfix train / bench train flags shared by both
    bench: tuple[str, ...]
    train: tuple[str, ...]
    tests: str  # pytest -k, after the device


FULL = Sizes(
    heads=((33278, 512, 700), (256000, 4096, 700), (256000, 4096, 8192)), head_repeats=5,
    model=("--emsize", "512", "--nhid", "512"),
    bench=(),
    train=("--max-tokens", "210000", "--log-interval", "50", "--eval-interval", "100", "--eval-tokens", "40000"),
    tests="",
)
QUICK = Sizes(
    heads=((2000, 32, 64), (5000, 256, 64), (5000, 256, 300)), head_repeats=1,
    model=("--emsize", "16", "--nhid", "16", "--batch-size", "4", "--bptt", "8"),
    bench=("--rounds", "1", "--steps", "1", "--warmup", "1"),
    train=("--max-tokens", "1000", "--log-interval", "10", "--eval-interval", "20", "--eval-tokens", "400"),
    tests=" and (offsets or 37-16)",
)


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    timeout_s: float
    files: tuple[str, ...] = ()
    env: dict[str, str | None] = field(default_factory=dict)  # None: remove the variable


def missing_packages() -> list[str]:
    """Required modules that do not import here (found without importing them)."""
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def plan(out: Path, device: str, quick: bool, corpus: str) -> list[Step]:
    """The steps, in order; only the device and the sizes differ between a GPU run and the rehearsal."""
    sizes = QUICK if quick else FULL
    cuda = device != "cpu"
    precisions = "fp32,bf16" if cuda else "fp32"  # this project's CPUs may lack bf16 kernels
    lmfix = (sys.executable, "-m", "lmfix")
    steps = [Step("env", (sys.executable, "-c", f"from lmfix.bench.gpu import write_env; "
                          f"write_env({str(out / 'env.json')!r}, {device!r})"), 60, ("env.json",))]
    select = ("cuda" if cuda else "cpu") + sizes.tests  # the kernels compiled, or interpreted on CPU tensors
    steps.append(Step(
        "tests",
        (sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", select,
         "--junitxml", str(out / "tests.xml"), str(ROOT / "tests" / "test_ops_triton.py"),
         str(ROOT / "tests" / "test_cuda_paths.py")),
        240, ("tests.xml",), env={"TRITON_INTERPRET": None if cuda else "1"},
    ))
    for vocab, dim, tokens in sizes.heads:
        name = f"head-{vocab}x{dim}-n{tokens}"
        steps.append(Step(name, (*lmfix, "bench", "head", "--device", device, "--vocab", str(vocab), "--dim", str(dim),
                                 "--tokens", str(tokens), "--repeats", str(sizes.head_repeats), "--layouts", _HEAD_ROWS,
                                 "--precision", precisions, "--json", str(out / f"{name}.json")),
                          150, (f"{name}.json",)))
    steps.append(Step("bench-train", (*lmfix, "bench", "train", "--corpus", corpus, *sizes.model, *sizes.bench,
                                      "--precision", precisions, "--json", str(out / "bench-train.json"),
                                      "--device", device),
                      180, ("bench-train.json",)))
    for variant in TRAIN_VARIANTS:
        steps.append(Step(f"train-{variant}", (*lmfix, "train", "--corpus", corpus, "--embed", variant, *sizes.model,
                                               *sizes.train, "--device", device, "--precision", "fp32",
                                               "--runs-dir", str(out / "runs"), "--name", variant, "--overwrite",
                                               "--no-progress"),
                          150, (f"runs/{variant}/metrics.jsonl",)))
    return steps


def write_env(path: str, device: str) -> None:
    """Record the machine: the ``env`` step (run in a subprocess, so the parent never initialises CUDA)."""
    import platform
    import shutil
    from importlib import metadata

    import torch

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    env: dict = {
        "device": device, "python": sys.version.split()[0], "platform": platform.platform(),
        "cpus": os.cpu_count(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": version("triton"), "missing": missing_packages(),
        "peers": {dist: version(dist) for dist in PEERS}, "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device if device != "cpu" else "cuda"))
        env["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                      "memory_gib": props.total_memory / 2**30, "multiprocessors": props.multi_processor_count,
                      "count": torch.cuda.device_count()}
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem",
                 "--format=csv,noheader"]
        env["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip()
    atomic.write_text(path, json.dumps(env, indent=2))
    print(json.dumps(env, indent=2))


def _run_step(step: Step, out: Path, timeout_s: float) -> dict:
    """Run one step into ``out/<name>.log``; the whole process group is killed at the time limit."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for key, value in step.env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    start = time.perf_counter()
    with open(out / f"{step.name}.log", "w", encoding="utf-8") as log:
        proc = subprocess.Popen(step.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
            status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"timeout after {timeout_s:.0f} s"
    return {"step": step.name, "status": status, "seconds": round(time.perf_counter() - start, 1),
            "command": shlex.join(step.argv), "files": [f for f in step.files if (out / f).is_file()]}


def run_gpu_bench(
    out: str | os.PathLike,
    device: str = "cuda",
    quick: bool = False,
    corpus: str = "wikitext-2",
    deadline_s: float = 480.0,
    only: Sequence[str] | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> list[dict]:
    """Run the plan (or the steps named in ``only``) into ``out``; none runs past ``deadline_s`` from now."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    steps = plan(out, device, quick, corpus)
    unknown = sorted(set(only or ()) - {step.name for step in steps})
    if unknown:
        raise ValueError(f"unknown steps {unknown}; choose from {', '.join(step.name for step in steps)}")
    missing = missing_packages()
    if missing:
        progress(f"missing packages: {' '.join(missing)} (carry their wheels: README, GPU)")
    end = time.perf_counter() + deadline_s
    results: list[dict] = []
    for step in steps:
        left = end - time.perf_counter()
        if only and step.name not in only:
            continue
        if left < 10:
            results.append({"step": step.name, "status": f"skipped: past the {deadline_s:.0f} s deadline",
                            "seconds": 0.0, "command": shlex.join(step.argv), "files": []})
        else:
            progress(f"{step.name} ...")
            results.append(_run_step(step, out, min(step.timeout_s, left)))
            progress(f"{step.name}: {results[-1]['status']} in {results[-1]['seconds']} s")
        atomic.write_text(out / "steps.json", json.dumps(results, indent=2))
        atomic.write_text(out / "summary.md", format_summary(out, results, device, missing))
    return results


def format_summary(out: Path, results: list[dict], device: str, missing: list[str]) -> str:
    """The run at a glance: the machine, then each step's status, files and the end of its output."""
    lines = [f"# lmfix bench gpu ({device})", ""]
    env_file = out / "env.json"
    if env_file.is_file():
        env = json.loads(env_file.read_text(encoding="utf-8"))
        gpu = env.get("gpu", {})
        lines.append(f"GPU {gpu.get('name', 'none')} ({gpu.get('memory_gib', 0):.0f} GiB), "
                     f"nvidia-smi: {env.get('nvidia_smi', 'not found')}; torch {env['torch']} (CUDA "
                     f"{env['torch_cuda']}), triton {env['triton']}, Python {env['python']}; "
                     f"peers: {', '.join(f'{k} {v}' for k, v in env['peers'].items() if v) or 'none'}")
    lines.append(f"missing packages: {' '.join(missing)}" if missing else "required packages: all present")
    lines += ["", "| step | status | seconds | files |", "|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['status']} | {r['seconds']} | {', '.join(r['files']) or '-'} |" for r in results]
    for r in results:
        log = out / f"{r['step']}.log"
        if not log.is_file():
            continue
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-_TAIL_LINES:]
        lines += ["", f"## {r['step']}: {r['status']}", "", f"`{r['command']}`", "", "```", *tail, "```"]
    return "\n".join(lines) + "\n"
