"""The run directory: who may write it, and what may be created, reused or replaced there.

A run directory is claimed with a lock (``.lock``, holding the writer's PID) for as
long as a process trains into it, so two processes never interleave one run. lmfix
only ever removes the files it writes itself (``RUN_FILES``): ``--overwrite``
replaces a directory only if it is an lmfix run (it has ``config.toml``), and the
old run's files are kept aside (``.previous/``) until the new run has ended or
written its first checkpoint; a new run that fails before that gets them back.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from lmfix.errors import LmfixError
from lmfix.training import checkpoint
from lmfix.training.config import CONFIG_FILE, ConfigError

RUN_FILES = (CONFIG_FILE, checkpoint.LAST, checkpoint.BEST, checkpoint.METRICS, checkpoint.SUMMARY, checkpoint.EVAL)
LOCK = ".lock"
PREVIOUS = ".previous"


def check_run_name(name: str) -> str:
    """``--name`` is one folder name inside ``--runs-dir``, never a path."""
    if not name or name in (".", "..") or "/" in name or os.sep in name or name.startswith("."):
        raise ConfigError(f"--name must be a plain folder name (no '/', not starting with '.'), got {name!r}; "
                          "choose where runs go with --runs-dir")
    return name


def is_run(run_dir: Path) -> bool:
    return (run_dir / CONFIG_FILE).is_file()


def _unwritable(run_dir: Path, exc: OSError) -> LmfixError:
    return LmfixError(f"cannot write to run directory {run_dir}: {exc.strerror}; choose another --runs-dir")


@contextlib.contextmanager
def claimed(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock (creating the directory, which proves it writable); a second writer gets a
    one-line error naming the first."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _unwritable(run_dir, exc) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ConfigError(f"{run_dir} is being written by another lmfix process (PID {holder}); wait for it "
                              "to finish, or pick another --name") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError as exc:  # a full disk while writing the PID
            raise _unwritable(run_dir, exc) from exc
        yield
    finally:
        os.close(fd)  # releases the lock


def check_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to reuse a run name (``overwrite`` replaces only lmfix runs); only looks, writes nothing."""
    used = run_dir.is_dir() and any(p.name not in (LOCK, PREVIOUS) for p in run_dir.iterdir())
    if used and not is_run(run_dir):
        raise ConfigError(f"{run_dir} exists and is not an lmfix run (no {CONFIG_FILE}); lmfix only replaces its "
                          "own runs: pick another --name or --runs-dir")
    if used and not overwrite:
        raise ConfigError(
            f"{run_dir} already exists: continue it with --resume {run_dir}, replace it with --overwrite, "
            f"or pick another --name"
        )


def set_aside(run_dir: Path) -> None:
    """Move an overwritten run's files into ``.previous/`` (the new run starts from an empty directory)."""
    keep = run_dir / PREVIOUS
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir()
    for name in RUN_FILES:
        if (run_dir / name).exists():
            os.replace(run_dir / name, keep / name)


def settle_previous(run_dir: Path, new_run_checkpointed: bool) -> None:
    """Drop the old run's files once the new run has a checkpoint; otherwise put them back."""
    keep = run_dir / PREVIOUS
    if not keep.is_dir():
        return
    if not new_run_checkpointed:
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
            if (keep / name).exists():
                os.replace(keep / name, run_dir / name)
    shutil.rmtree(keep, ignore_errors=True)
