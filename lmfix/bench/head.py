"""Benchmark the output layer alone: forward + backward of the head loss.

Heads: ``dense`` (a frozen V x d matrix through F.linear + F.cross_entropy, the
baseline every other head is compared with in the same run), ``dense-fused``
(the same matrix through lmfix's fused ``dense_cross_entropy``, what
``--embed orthogonal|word2vec|pmi`` train with) and one entry per Hadamard
layout (the fused ``hadamard_cross_entropy``). All heads learn x,
alpha and a bias. Time is the median of ``repeats`` steps after one warm-up;
memory is measured in a separate step with ``AllocationTracker``: the peak of
bytes the head allocates beyond its inputs (gradients included; the dense
matrix is an input, reported apart as ``matrix_mb``) and its largest tensor.
Timings are only comparable within a run on an otherwise idle machine: the
1-minute load average is recorded with each row.

Each head runs in each of ``precisions``: in bf16 the dense matrix is stored in
bf16 (``dense``: F.linear in bf16, the loss on float32 logits, i.e. plain AMP;
``dense-fused``: bf16 operands, float32 softmax and gradients); the Hadamard
heads compute in float32 in every precision (their sums would lose bits in bf16).
Speed-ups compare with the dense head of the same precision.

On a GPU (``device="cuda"``) steps are timed with CUDA events and the peak
memory is ``torch.cuda.max_memory_allocated`` above what was allocated before
the step (reset for each head). Rows beyond the heads, by name: ``fwht`` (the
N x D transform alone, forward) and ``copy`` (a device copy of the same N x D
elements: the memory-bandwidth floor, since the transform reads and writes N x D
once), both with ``gb_s``; and the peers a GPU user would pick instead, each
only where its package imports (else the row says so): ``liger``
(liger-kernel's fused linear cross entropy), ``cce`` (cut-cross-entropy), both
on the same frozen dense matrix, and ``fwht-dao`` (Dao's fast-hadamard-transform
on the same N x D). A row that fails records why and the others still run.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmfix.bench.memtrack import AllocationTracker
from lmfix.embeddings.base import require_memory
from lmfix.ops.bits import next_pow2
from lmfix.ops.dense_loss import dense_cross_entropy
from lmfix.ops.hadamard import LAYOUTS, HadamardLayout, make_layout
from lmfix.ops.hadamard_loss import hadamard_cross_entropy
from lmfix.ops.precision import DTYPES, resolve_precisions
from lmfix.ops.transform import fwht

DENSE_HEADS = ("dense", "dense-fused")
HEADS = (*DENSE_HEADS, *LAYOUTS)
TRANSFORMS = ("fwht", "copy")
# Peer rows and the module each needs (carried as wheels to a GPU machine: README, GPU).
PEERS = {"liger": "liger_kernel", "cce": "cut_cross_entropy", "fwht-dao": "fast_hadamard_transform"}
ROWS = (*HEADS, *TRANSFORMS, *PEERS)
# Rows that need the frozen V x d matrix; rows that time one pass over N x D (no loss, no speed-up vs dense).
_MATRIX_ROWS = (*DENSE_HEADS, "liger", "cce")
_PASS_ROWS = (*TRANSFORMS, "fwht-dao")
_MB = 1 << 20


@dataclass
class HeadBatch:
    """What the model hands the head: hidden states, targets, learned bias and scale."""

    x: torch.Tensor
    target: torch.Tensor
    bias: torch.Tensor
    alpha: torch.Tensor

    @classmethod
    def random(cls, vocab: int, dim: int, tokens: int, seed: int, device: torch.device) -> HeadBatch:
        """Drawn on CPU (the same values on every device), then moved."""
        gen = torch.Generator().manual_seed(seed)
        return cls(
            x=torch.randn(tokens, dim, generator=gen).to(device).requires_grad_(),
            target=torch.randint(0, vocab, (tokens,), generator=gen).to(device),
            bias=torch.zeros(vocab, device=device).requires_grad_(),
            alpha=torch.tensor(1.0, device=device, requires_grad=True),
        )

    def clear(self) -> None:
        """Drop the gradients, so that a step allocates them anew (and is measured doing so)."""
        for tensor in (self.x, self.bias, self.alpha):
            tensor.grad = None

    def step(self, loss_fn: Callable[[HeadBatch], torch.Tensor]) -> None:
        """One forward + backward from cleared gradients."""
        self.clear()
        loss_fn(self).backward()


def _dense_loss(matrix: torch.Tensor, fused: bool) -> Callable[[HeadBatch], torch.Tensor]:
    """The frozen ``matrix``'s loss; in its dtype (bf16: half the bytes) for the products."""
    low = matrix.dtype

    def loss(inputs: HeadBatch) -> torch.Tensor:
        if fused:
            return dense_cross_entropy(inputs.x, inputs.target, matrix, inputs.bias, inputs.alpha, operands=low)
        logits = F.linear((inputs.x * inputs.alpha).to(low), matrix, inputs.bias.to(low))
        return F.cross_entropy(logits.float(), inputs.target)

    return loss


def _hadamard_loss(layout: HadamardLayout) -> Callable[[HeadBatch], torch.Tensor]:
    def loss(inputs: HeadBatch) -> torch.Tensor:
        return hadamard_cross_entropy(inputs.x, inputs.target, layout, inputs.bias, inputs.alpha)

    return loss


def _peer_loss(name: str, matrix: torch.Tensor) -> Callable[[HeadBatch], torch.Tensor]:
    """A peer's fused linear cross entropy on the frozen ``matrix``, operands in its dtype."""
    low = matrix.dtype
    if name == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss()
        return lambda inputs: liger(matrix, (inputs.x * inputs.alpha).to(low), inputs.target, inputs.bias.to(low))
    from cut_cross_entropy import linear_cross_entropy

    # cut-cross-entropy 25.1 (PyPI) takes no bias: its row scores x E^T alone.
    return lambda inputs: linear_cross_entropy((inputs.x * inputs.alpha).to(low), matrix, inputs.target)


def _transform_step(name: str, x: torch.Tensor) -> Callable[[], object]:
    """One pass over (N, D) ``x``: lmfix's transform, a plain copy (the floor), or Dao's transform."""
    if name == "copy":
        out = torch.empty_like(x)
        return lambda: out.copy_(x)
    if name == "fwht":
        return lambda: fwht(x)
    from fast_hadamard_transform import hadamard_transform

    return lambda: hadamard_transform(x)


def _random_sign_matrix(vocab: int, dim: int, seed: int, device: torch.device) -> torch.Tensor:
    """A +-1/sqrt(d) V x d matrix for the dense baseline (its values do not change the timing), drawn on
    ``device`` (a 4 GiB matrix would take seconds on CPU)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.empty(vocab, dim, device=device).bernoulli_(0.5, generator=gen).mul_(2).sub_(1).div_(dim**0.5)


def _seconds(step: Callable[[], object], device: torch.device) -> float:
    """Wall time of one step; on a GPU between CUDA events, waiting for the work it queued."""
    if device.type != "cuda":
        start = time.perf_counter()
        step()
        return time.perf_counter() - start
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    stream = torch.cuda.current_stream(device)  # the stream of the work's device, not of device 0
    start.record(stream)
    step()
    end.record(stream)
    end.synchronize()
    return start.elapsed_time(end) / 1000


def _measure(step: Callable[[], object], repeats: int, device: torch.device,
             clear: Callable[[], None] = lambda: None) -> dict:
    """Median time of ``repeats`` steps after a warm-up (which compiles kernels on a GPU), then one step's
    memory: the tracker's peak (CPU) or CUDA's peak allocation (GPU) above what ``clear`` leaves."""
    step()
    times = [_seconds(step, device) for _ in range(repeats)]
    cuda = device.type == "cuda"
    clear()
    before = 0
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    with AllocationTracker() as tracker:
        step()
    peak = torch.cuda.max_memory_allocated(device) - before if cuda else tracker.peak_bytes
    return {
        "median_s": statistics.median(times),
        # Other processes on the cores slow BLAS threads a lot: record how busy the machine was.
        "load_1m": os.getloadavg()[0],
        "peak_extra_mb": peak / _MB,
        "largest_tensor_mb": tracker.largest_bytes / _MB,
    }


def _run_row(name: str, row: dict, inputs: HeadBatch, dtype: torch.dtype, repeats: int, seed: int,
             device: torch.device) -> None:
    """Measure one row into ``row`` (the V x d matrix, if any, is already known to fit)."""
    vocab, dim = inputs.bias.numel(), inputs.x.shape[1]
    if name in PEERS and importlib.util.find_spec(PEERS[name]) is None:
        row["skipped"] = f"{PEERS[name]} is not installed"
        return
    if name in PEERS and device.type != "cuda":
        row["skipped"] = "a CUDA-only peer"
        return
    if name in _PASS_ROWS:
        x = torch.randn(inputs.x.shape[0], next_pow2(dim), device=device).to(dtype)
        row.update(_measure(_transform_step(name, x), repeats, device))
        row["gb_s"] = 2 * x.numel() * x.element_size() / row["median_s"] / 1e9  # read + write N x D once
    elif name in _MATRIX_ROWS:
        matrix = _random_sign_matrix(vocab, dim, seed, device).to(dtype)
        row["matrix_mb"] = matrix.numel() * matrix.element_size() / _MB  # measured: bf16 halves it
        loss_fn = _peer_loss(name, matrix) if name in PEERS else _dense_loss(matrix, fused=name == "dense-fused")
        row.update(_measure(lambda: inputs.step(loss_fn), repeats, device, inputs.clear))
    else:
        layout = make_layout(vocab, dim, name, seed)
        row["distinct_rows"] = layout.distinct_rows()
        loss_fn = _hadamard_loss(layout)
        row.update(_measure(lambda: inputs.step(loss_fn), repeats, device, inputs.clear))


def run_head_bench(
    vocab: int = 33278,
    dim: int = 512,
    tokens: int = 700,
    repeats: int = 5,
    layouts: Sequence[str] = HEADS,
    seed: int = 0,
    max_matrix_gb: float = 4.0,
    precisions: Sequence[str] = ("fp32",),
    device: str = "cpu",
) -> list[dict]:
    """Time and memory of each row in ``layouts`` (names from ``ROWS``) on ``device``.

    Rows that need the V x d matrix are skipped (``skipped`` says why) when it
    would exceed ``max_matrix_gb``; a row that raises gets ``failed``.
    ``speedup_vs_dense`` and ``mem_vs_dense`` compare each loss with the dense
    row of the same run when there is one.
    """
    unknown = [name for name in layouts if name not in ROWS]
    if unknown:
        raise ValueError(f"unknown heads {unknown}; choose from {', '.join(ROWS)}")
    where = torch.device(device)
    if where.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: no CUDA GPU is visible to torch here")
    # the batch and its gradients, drawn on the host and held through every row: refused, not swapped, when too big
    require_memory(2 * 4 * (tokens * dim + vocab), f"a batch of {tokens:,} x {dim:,} with its gradients",
                   "lower --tokens or --dim")
    inputs = HeadBatch.random(vocab, dim, tokens, seed, where)
    results = []
    for precision in resolve_precisions(precisions, where):
        dtype = DTYPES[precision]
        rows = []
        for name in layouts:
            row = {"head": name, "precision": precision, "vocab": vocab, "dim": dim, "tokens": tokens,
                   "matrix_mb": 0.0, "device": str(where)}
            matrix_bytes = vocab * dim * torch.finfo(dtype).bits // 8
            if name in _MATRIX_ROWS and matrix_bytes > max_matrix_gb * 2**30:
                row["skipped"] = f"V x d matrix needs {matrix_bytes / 2**30:.1f} GiB > max_matrix_gb={max_matrix_gb}"
            else:
                try:
                    _run_row(name, row, inputs, dtype, repeats, seed, where)
                except Exception as exc:  # one row's failure (a peer, a kernel) must not end the run
                    row["failed"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            rows.append(row)
        _compare_with_dense(rows)
        results += rows
    return results


def _compare_with_dense(rows: list[dict]) -> None:
    dense = next((r for r in rows if r["head"] == "dense" and "median_s" in r), None)
    if dense is None:
        return
    for row in rows:
        if "median_s" in row and row["head"] not in _PASS_ROWS:
            row["speedup_vs_dense"] = dense["median_s"] / row["median_s"]
            row["mem_vs_dense"] = row["peak_extra_mb"] / dense["peak_extra_mb"]


_COLUMNS = (
    ("head", "head", "{}"),
    ("precision", "precision", "{}"),
    ("vocab", "V", "{}"),
    ("dim", "d", "{}"),
    ("tokens", "tokens", "{}"),
    ("median_s", "median s", "{:.4g}"),
    ("speedup_vs_dense", "speedup vs dense", "{:.1f}x"),
    ("peak_extra_mb", "peak extra MiB", "{:.1f}"),
    ("mem_vs_dense", "mem vs dense", "{:.1%}"),
    ("largest_tensor_mb", "largest tensor MiB", "{:.1f}"),
    ("matrix_mb", "V x d matrix MiB", "{:.1f}"),
    ("distinct_rows", "distinct rows", "{}"),
    ("gb_s", "GB/s", "{:.1f}"),
    ("load_1m", "load avg", "{:.1f}"),
    ("device", "device", "{}"),
)


def format_head_table(results: list[dict]) -> str:
    """Markdown table of ``run_head_bench`` results (skipped heads say why)."""
    lines = [
        "| " + " | ".join(title for _, title, _ in _COLUMNS) + " |",
        "|" + "---|" * len(_COLUMNS),
    ]
    for row in results:
        cells = [fmt.format(row[key]) if key in row else "-" for key, _, fmt in _COLUMNS]
        for outcome in ("skipped", "failed"):
            if outcome in row:
                cells[5] = f"{outcome}: {row[outcome]}"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
