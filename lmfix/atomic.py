"""Atomic writes: a file or directory appears complete or not at all.

Everything lmfix writes (prepared corpora, artifacts, checkpoints, reports) goes
through here, so an interrupted run or a full disk never leaves a half-written
file under the final name. What already stands at the target is respected: a
symlink is followed to the file it names (the link stays), and a device, FIFO or
socket (``-o /dev/stdout``) is written straight through, never renamed over.
Which names can be written at all (``name_problem``, ``path_problem``) is the file
system's NAME_MAX, less the room the temporary names take.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lmfix.errors import LmfixError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _os_error(path: Path, exc: OSError) -> LmfixError:
    why = exc.strerror or str(exc)
    return LmfixError(f"cannot write {path}: {why} (check free disk space and permissions)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    The temporary sits in the same directory so the final ``os.replace`` is atomic.
    On any exception the temporary is removed and the old ``path`` is untouched.
    A symlink is replaced by its target; a non-regular file (device, FIFO) is yielded as it is.
    """
    if os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
        try:  # /dev/stdout, a pipe (through a link or not): write through, nothing to rename
            yield Path(path)
        except BrokenPipeError:  # the reader left (`| head`): the CLI ends quietly, as Unix tools do
            raise
        except OSError as exc:  # /dev/full
            raise _os_error(Path(path), exc) from exc
        return
    path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide shared caches from other users
    except OSError as exc:
        raise _os_error(path, exc) from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise _os_error(path, exc) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def sync(f) -> None:
    """Flush ``f`` to disk before its rename; a device or pipe (``/dev/stdout``) has nothing to sync."""
    f.flush()
    if os.path.isfile(f.name):
        os.fsync(f.fileno())


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            sync(f)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory; it replaces ``path`` when the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700, like mkstemp's 0600, would hide shared caches
    except OSError as exc:
        raise _os_error(path, exc) from exc
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except OSError:
                os.replace(old, path)  # put the previous version back under its name: nothing lost
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _os_error(path, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# What a temporary name adds to the name it stands for: "." + NAME + "." + 8 random characters + ".tmp".
_TEMP_EXTRA = len("..") + 8 + len(".tmp")
# NAME_MAX where the file system cannot be asked (ext4, xfs, btrfs, tmpfs all have 255).
_NAME_MAX = 255


def _name_max(folder: Path) -> int:
    """The file system's NAME_MAX in ``folder``, asked of it or of its nearest existing ancestor."""
    for place in (folder, *folder.parents):
        try:
            return os.pathconf(place, "PC_NAME_MAX")
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (OSError, ValueError):
            break
    return _NAME_MAX


def _shown(name: str) -> str:
    return repr(name) if len(name) <= 40 else repr(name[:37]) + "..."


def _too_long(name: str, folder: Path, room: int) -> str | None:
    size = len(os.fsencode(name))
    return f"{_shown(name)} is {size} bytes long; at most {room} fit in {folder}" if size > room else None


def name_problem(name: str, folder: Path) -> str | None:
    """Why ``name`` cannot be one file or folder name that lmfix writes inside ``folder`` (None: it can): it must
    leave room for lmfix's temporary names, and hold no line break (names appear in one-line messages and in
    tables). Names starting with '.' are lmfix's own (locks, temporaries, a replaced run's files)."""
    if not name:
        return "the name is empty"
    if name.startswith("."):
        return f"{_shown(name)} starts with '.'"
    if "/" in name or os.sep in name:
        return f"{_shown(name)} holds a '/'"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"{_shown(name)} holds a control character (a line break, a tab, a NUL)"
    return _too_long(name, folder, _name_max(folder) - _TEMP_EXTRA)


def path_problem(path: Path) -> str | None:
    """Why ``path`` cannot be on its file system (None: it can): a part longer than NAME_MAX."""
    for place in (path, *path.parents):
        problem = place.name and _too_long(place.name, place.parent, _name_max(place.parent))
        if problem:
            return problem
    return None
