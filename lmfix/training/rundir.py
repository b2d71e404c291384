"""The run directory: who may write it, and what may be created, reused or replaced there.

A run directory is claimed with a lock (``.lock``, holding the writer's PID) for as
long as a process trains into it, so two processes never interleave one run. lmfix
only ever removes the files it writes itself (``RUN_FILES``): ``--overwrite``
replaces a directory only if it is an lmfix run (it has ``config.toml``), and the
old run's files are kept aside (``.previous/``) until the new run has written its
first checkpoint. Until then the old run is the run: a new run that fails, or is
killed at any moment (even SIGKILL), gets them back when lmfix next claims the
directory (``recover``), so ``runs/NAME`` is always the whole old run or the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from lmfix import atomic
from lmfix.errors import LmfixError
from lmfix.training import checkpoint
from lmfix.training.config import CONFIG_FILE, ConfigError

RUN_FILES = (CONFIG_FILE, checkpoint.LAST, checkpoint.BEST, checkpoint.METRICS, checkpoint.SUMMARY, checkpoint.EVAL)
LOCK = ".lock"
PREVIOUS = ".previous"
# In .previous/ once every old file is in it: from then on the run files beside it are the new run's.
SET_ASIDE = ".complete"
# .previous/ renamed to this when the new run has won, then deleted: a kill while deleting leaves no old files
# that a later recovery could mistake for the run.
DROPPED = ".previous.drop"


def check_run_name(name: str, runs_dir: Path) -> Path:
    """``--name`` is one folder name inside ``--runs-dir`` that the file system can hold, never a path."""
    problem = atomic.name_problem(name, runs_dir)
    if problem:
        raise ConfigError(f"--name must be a plain folder name: {problem}; choose where runs go with --runs-dir")
    problem = atomic.path_problem(runs_dir)
    if problem:
        raise ConfigError(f"--runs-dir cannot be a folder: {problem}; choose a shorter --runs-dir")
    return runs_dir / name


def is_run(run_dir: Path) -> bool:
    return (run_dir / CONFIG_FILE).is_file()


def _unwritable(run_dir: Path, exc: OSError) -> LmfixError:
    return LmfixError(f"cannot write to run directory {run_dir}: {exc.strerror}; choose another --runs-dir")


@contextlib.contextmanager
def claimed(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock (creating the directory, which proves it writable); a second writer gets a
    one-line error naming the first. A directory this call created and left holding only the lock (a run
    refused before it wrote anything) is removed again."""
    created = not run_dir.exists()
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
        recover(run_dir)
        yield
    finally:
        if created and [p.name for p in run_dir.iterdir()] == [LOCK]:
            (run_dir / LOCK).unlink()  # while still held: no other process can be using it
            run_dir.rmdir()
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
    recover(run_dir)
    keep = run_dir / PREVIOUS
    keep.mkdir()
    for name in RUN_FILES:
        if (run_dir / name).exists():
            os.replace(run_dir / name, keep / name)
    (keep / SET_ASIDE).touch()


def settle_previous(run_dir: Path, new_run_checkpointed: bool) -> None:
    """Drop the old run's files once the new run has a checkpoint; otherwise put them back.

    Each step leaves a state that ``recover`` finishes the same way, so a kill inside this is harmless.
    """
    keep = run_dir / PREVIOUS
    if keep.is_dir() and new_run_checkpointed:
        os.replace(keep, run_dir / DROPPED)
    elif keep.is_dir():
        if (keep / SET_ASIDE).exists():  # the new run's files go first, then the mark that they are the new run's
            for name in RUN_FILES:
                (run_dir / name).unlink(missing_ok=True)
            (keep / SET_ASIDE).unlink()
        for name in RUN_FILES:
            if (keep / name).exists():
                os.replace(keep / name, run_dir / name)
        shutil.rmtree(keep)
    shutil.rmtree(run_dir / DROPPED, ignore_errors=True)


def settled(run_dir: Path) -> Path:
    """``run_dir`` after finishing any ``--overwrite`` that was killed there (under the lock, as every claim);
    before reading a run's config or checkpoint to resume or evaluate it."""
    if (run_dir / PREVIOUS).is_dir() or (run_dir / DROPPED).is_dir():
        with claimed(run_dir):
            pass
    return run_dir


def recover(run_dir: Path) -> None:
    """Finish an ``--overwrite`` that was killed (or failed to settle): the new run stays only if it wrote a
    checkpoint, else the old run's files come back. Called whenever lmfix claims the directory."""
    keep = run_dir / PREVIOUS
    checkpointed = (keep / SET_ASIDE).exists() and (run_dir / checkpoint.LAST).is_file()
    settle_previous(run_dir, checkpointed)
