"""Atomic writes: complete files under the final name, with the usual permissions."""

import os

import pytest

from lmfix import atomic
from lmfix.errors import LmfixError


def test_atomic_writes_get_normal_permissions(tmp_path):
    atomic.write_text(tmp_path / "f.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    try:
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    except RuntimeError:
        pass
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_a_directory_whose_final_rename_fails_is_put_back(tmp_path, monkeypatch):
    target = tmp_path / "record"
    target.mkdir()
    (target / "eval.json").write_text("old")
    replace, calls = os.replace, []

    def failing_second_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_second_rename)
    with pytest.raises(LmfixError, match="cannot write .*record: No space left"):
        with atomic.atomic_dir(target) as tmp:
            (tmp / "eval.json").write_text("new")
    assert len(calls) == 3 and (target / "eval.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["record"]
