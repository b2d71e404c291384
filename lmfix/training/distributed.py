"""Processes and devices: the device a run uses and the process group ``torchrun`` describes.

Under ``torchrun`` (gloo on CPU, nccl on GPU) rank 0 alone writes files and
makes decisions that touch the disk; the others wait for it (``rank0_first``)
or take its verdict (``rank0_verdict``), so no rank races another at start-up.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lmfix.errors import LmfixError
from lmfix.training.config import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown --device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is visible to torch here; use --device cpu (or auto)")
    return device


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def init_distributed(device_name: str) -> tuple[Dist, torch.device, bool]:
    """Join the process group ``torchrun`` describes (gloo on CPU, nccl on GPU); True if we created it."""
    device = resolve_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), device, False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size()), device, created


def rank0_first(ddp: Dist, make):
    """Run ``make`` on rank 0 first (it may write caches), then on the others."""
    if not ddp.main:
        ddp.barrier()
    value = make()
    if ddp.main:
        ddp.barrier()
    return value


def rank0_verdict(ddp: Dist, check: Callable[[], None]) -> None:
    """Run ``check`` on rank 0 only and raise its error on every rank.

    Checks that create files (the new run directory) must not run on every
    rank: one rank's files would make another's check refuse at random.
    """
    refusal: LmfixError | None = None
    if ddp.main:
        try:
            check()
        except LmfixError as exc:
            refusal = exc
    if ddp.active:
        verdict = [None if refusal is None else (type(refusal), str(refusal))]
        dist.broadcast_object_list(verdict, 0)
        if verdict[0] is not None and refusal is None:
            kind, message = verdict[0]
            refusal = kind(message)
    if refusal is not None:
        raise refusal


class SyncCounter:
    """Bytes all-reduced so far: the state of the DDP communication hook.

    The hook and its state are held by DDP's C++ reducer, where Python's garbage
    collector cannot see them: a hook reaching back to the trainer (a bound method)
    made a cycle that kept the trainer, its DDP wrapper and the process group alive
    until interpreter exit, where gloo's teardown aborted a worker at random
    ("terminate called without an active exception", a failed torchrun).
    """

    def __init__(self) -> None:
        self.bytes = 0


def _counting_allreduce(counter: SyncCounter, bucket):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    counter.bytes += bucket.buffer().numel() * bucket.buffer().element_size()
    return allreduce_hook(None, bucket)  # None: the default process group


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> tuple[torch.nn.Module, SyncCounter]:
    """DDP over the trainable parameters only (buffers such as E are ignored: never broadcast or
    synchronized), and the counter of the bytes its all-reduces send."""
    from torch.nn.parallel import DistributedDataParallel

    frozen = [name for name, _ in model.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
    ids = [device.index] if device.type == "cuda" else None
    net = DistributedDataParallel(model, device_ids=ids)
    counter = SyncCounter()
    net.register_comm_hook(counter, _counting_allreduce)
    return net, counter


def release_process_group() -> None:
    """Destroy the process group we created, after collecting what may still use it (a DDP wrapper in a
    reference cycle), so nothing of it is left for interpreter exit to tear down."""
    gc.collect()
    dist.destroy_process_group()


class StopSignals:
    """While entered, Ctrl-C (SIGINT) or SIGTERM sets ``requested``: the loop finishes its step and stops.

    Single process (``repeat_raises``): a second Ctrl-C stops at once. Under torchrun each
    worker gets Ctrl-C twice (from the terminal and forwarded by torchrun), so there a
    repeat only keeps the request; torchrun's own timeout is the hard stop. Handlers can
    only be installed from the main thread; elsewhere this does nothing.
    """

    def __init__(self, repeat_raises: bool) -> None:
        self.repeat_raises = repeat_raises
        self.requested = False
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT and self.repeat_raises:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
