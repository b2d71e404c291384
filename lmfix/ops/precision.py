"""Numeric precision of a run: ``fp32`` or ``bf16`` (``auto``: bf16 where the device has it natively).

bf16 means bf16 *operands* for the large products (the LSTM under autocast, the
dense heads' GEMMs) with float32 accumulation inside the GEMMs; everything that
sums many terms or is trained stays float32: log-sum-exp and softmax, the loss,
alpha and bias, gradient clipping, optimizer state and the master weights.

How support is detected: on CUDA, ``torch.cuda.is_bf16_supported()``. On CPU,
oneDNN must run bf16 kernels at all (``torch.ops.mkldnn._is_mkldnn_bf16_supported``,
AVX-512 or newer); ``auto`` picks bf16 only where the CPU has native bf16
instructions (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo), since without
them bf16 is emulated and slower than float32 (an Ice Lake Xeon trained the learned
512/512 model at 430 tok/s in bf16 against 1,080 in fp32); asked for there, it runs and
warns once.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from lmfix.errors import LmfixError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@functools.lru_cache(maxsize=1)
def _cpu_info() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (none where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _cpu_flags() -> frozenset[str]:
    return frozenset(_cpu_info().get("flags", "").split())


def cpu_name() -> str:
    """The CPU model, as timings must name it (speeds measured on two CPU models do not compare)."""
    import platform

    return _cpu_info().get("model name") or platform.processor() or platform.machine() or "unknown CPU"


def bf16_runs(device: torch.device) -> bool:
    """bf16 kernels exist for ``device`` (natively or emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return bool(check and check())
    return False


def bf16_native(device: torch.device) -> bool:
    """bf16 is faster than float32 here: a GPU with bf16, or a CPU with bf16 instructions."""
    if device.type == "cpu":
        return bf16_runs(device) and bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return bf16_runs(device)


def resolve_precision(name: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for ``name`` on ``device``; a one-line error where bf16 cannot run."""
    if name == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    if name not in DTYPES:
        raise LmfixError(f"unknown --precision {name!r}; choose one of {', '.join(DTYPES)} or auto")
    if name == "bf16" and not bf16_runs(device):
        raise LmfixError(f"--precision bf16: {device} has no bf16 kernels (a CPU needs AVX-512; a GPU "
                         "Ampere or newer); use --precision fp32 (or auto)")
    if name == "bf16" and not bf16_native(device):
        _warn_emulated()
    return name


@functools.lru_cache(maxsize=1)
def _warn_emulated() -> None:
    """Once per process: a run resolves its precision more than once (checks, training, evaluation)."""
    warnings.warn("bf16 is emulated on this CPU (no avx512_bf16 or amx_bf16) and slower than fp32; "
                  "--precision auto picks fp32 here", stacklevel=3)


def resolve_precisions(names: Sequence[str], device: torch.device) -> tuple[str, ...]:
    """Each of ``names`` resolved, duplicates dropped (``fp32,auto`` on a bf16 machine: fp32, bf16)."""
    return tuple(dict.fromkeys(resolve_precision(name, device) for name in names))


def host_scalar(value: torch.Tensor) -> float | torch.Tensor:
    """``float(value)``, except on a GPU: there the detached float32 0-dim tensor, since ``float()`` would wait
    for the device (a host sync per training step for alpha)."""
    return value.detach().float() if value.is_cuda else float(value)
