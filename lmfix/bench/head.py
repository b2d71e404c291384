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
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmfix.bench.memtrack import AllocationTracker
from lmfix.ops.dense_loss import dense_cross_entropy
from lmfix.ops.hadamard import LAYOUTS, HadamardLayout, make_layout
from lmfix.ops.hadamard_loss import hadamard_cross_entropy
from lmfix.ops.precision import DTYPES, resolve_precisions

DENSE_HEADS = ("dense", "dense-fused")
HEADS = (*DENSE_HEADS, *LAYOUTS)
_MB = 1 << 20


@dataclass
class HeadBatch:
    """What the model hands the head: hidden states, targets, learned bias and scale."""

    x: torch.Tensor
    target: torch.Tensor
    bias: torch.Tensor
    alpha: torch.Tensor

    @classmethod
    def random(cls, vocab: int, dim: int, tokens: int, seed: int) -> HeadBatch:
        gen = torch.Generator().manual_seed(seed)
        return cls(
            x=torch.randn(tokens, dim, generator=gen).requires_grad_(),
            target=torch.randint(0, vocab, (tokens,), generator=gen),
            bias=torch.zeros(vocab).requires_grad_(),
            alpha=torch.tensor(1.0, requires_grad=True),
        )

    def step(self, loss_fn: Callable[[HeadBatch], torch.Tensor]) -> None:
        """One forward + backward; grads are dropped first so every step allocates them anew."""
        for tensor in (self.x, self.bias, self.alpha):
            tensor.grad = None
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


def _random_sign_matrix(vocab: int, dim: int, seed: int) -> torch.Tensor:
    """A +-1/sqrt(d) V x d matrix for the dense baseline (its values do not change the timing)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.empty(vocab, dim).bernoulli_(0.5, generator=gen).mul_(2).sub_(1).div_(dim**0.5)


def _measure(inputs: HeadBatch, loss_fn: Callable[[HeadBatch], torch.Tensor], repeats: int) -> dict:
    inputs.step(loss_fn)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        inputs.step(loss_fn)
        times.append(time.perf_counter() - start)
    with AllocationTracker() as tracker:
        inputs.step(loss_fn)
    return {
        "median_s": statistics.median(times),
        # Other processes on the cores slow BLAS threads a lot: record how busy the machine was.
        "load_1m": os.getloadavg()[0],
        "peak_extra_mb": tracker.peak_bytes / _MB,
        "largest_tensor_mb": tracker.largest_bytes / _MB,
    }


def run_head_bench(
    vocab: int = 33278,
    dim: int = 512,
    tokens: int = 700,
    repeats: int = 5,
    layouts: Sequence[str] = HEADS,
    seed: int = 0,
    max_matrix_gb: float = 4.0,
    precisions: Sequence[str] = ("fp32",),
) -> list[dict]:
    """Time and memory of each head in ``layouts`` (names from ``HEADS``), on CPU.

    The dense head is skipped (``skipped`` says why) when its V x d matrix would
    exceed ``max_matrix_gb``. ``speedup_vs_dense`` and ``mem_vs_dense`` compare
    with the dense row of the same run when there is one.
    """
    unknown = [name for name in layouts if name not in HEADS]
    if unknown:
        raise ValueError(f"unknown heads {unknown}; choose from {', '.join(HEADS)}")
    inputs = HeadBatch.random(vocab, dim, tokens, seed)
    results = []
    for precision in resolve_precisions(precisions, torch.device("cpu")):
        dtype = DTYPES[precision]
        rows = []
        for name in layouts:
            row = {"head": name, "precision": precision, "vocab": vocab, "dim": dim, "tokens": tokens,
                   "matrix_mb": 0.0}
            if name in DENSE_HEADS:
                matrix_bytes = vocab * dim * torch.finfo(dtype).bits // 8
                if matrix_bytes > max_matrix_gb * 2**30:
                    row["skipped"] = (f"V x d matrix needs {matrix_bytes / 2**30:.1f} GiB > "
                                      f"max_matrix_gb={max_matrix_gb}")
                    rows.append(row)
                    continue
                matrix = _random_sign_matrix(vocab, dim, seed).to(dtype)
                row["matrix_mb"] = matrix.numel() * matrix.element_size() / _MB  # measured: bf16 halves it
                row.update(_measure(inputs, _dense_loss(matrix, fused=name == "dense-fused"), repeats))
                del matrix
            else:
                layout = make_layout(vocab, dim, name, seed)
                row["distinct_rows"] = layout.distinct_rows()
                row.update(_measure(inputs, _hadamard_loss(layout), repeats))
            rows.append(row)
        _compare_with_dense(rows)
        results += rows
    return results


def _compare_with_dense(rows: list[dict]) -> None:
    dense = next((r for r in rows if r["head"] == "dense" and "median_s" in r), None)
    if dense is None:
        return
    for row in rows:
        if "median_s" in row:
            row["speedup_vs_dense"] = dense["median_s"] / row["median_s"]
            row["mem_vs_dense"] = row["peak_extra_mb"] / dense["peak_extra_mb"]


_COLUMNS = (
    ("head", "head", "{}"),
    ("precision", "precision", "{}"),
    ("vocab", "V", "{}"),
    ("dim", "d", "{}"),
    ("tokens", "tokens", "{}"),
    ("median_s", "median s", "{:.4f}"),
    ("speedup_vs_dense", "speedup vs dense", "{:.1f}x"),
    ("peak_extra_mb", "peak extra MiB", "{:.1f}"),
    ("mem_vs_dense", "mem vs dense", "{:.1%}"),
    ("largest_tensor_mb", "largest tensor MiB", "{:.1f}"),
    ("matrix_mb", "V x d matrix MiB", "{:.1f}"),
    ("distinct_rows", "distinct rows", "{}"),
    ("load_1m", "load avg", "{:.1f}"),
)


def format_head_table(results: list[dict]) -> str:
    """Markdown table of ``run_head_bench`` results (skipped heads say why)."""
    lines = [
        "| " + " | ".join(title for _, title, _ in _COLUMNS) + " |",
        "|" + "---|" * len(_COLUMNS),
    ]
    for row in results:
        cells = [fmt.format(row[key]) if key in row else "-" for key, _, fmt in _COLUMNS]
        if "skipped" in row:
            cells[5] = f"skipped: {row['skipped']}"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
