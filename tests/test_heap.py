"""``lmfix.heap``: the CLI keeps freed memory in the heap (glibc), and ``LMFIX_MALLOC=system`` opts out."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from lmfix.heap import retain_freed_memory

# A fresh interpreter allocates 64 MiB (past glibc's largest mmap threshold) and prints how many bytes
# glibc then holds in mmapped blocks (mallinfo2's hblkhd).
PROBE = """
import ctypes, sys
from lmfix.heap import retain_freed_memory
print(retain_freed_memory(), end=" ")
libc = ctypes.CDLL(None)
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS.split()]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
block = libc.malloc(64 << 20)
print(libc.mallinfo2().hblkhd)
"""


def probe(env: dict[str, str]) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout
    kept, mmapped = out.split()
    return kept, int(mmapped)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_large_blocks_come_from_the_heap_unless_opted_out(monkeypatch):
    monkeypatch.delenv("LMFIX_MALLOC", raising=False)
    kept, mmapped = probe(dict(os.environ))
    assert kept == "True" and mmapped < 64 << 20  # the block is in the heap (mmapped: start-up's, before)
    kept, mmapped = probe({**os.environ, "LMFIX_MALLOC": "system"})
    assert kept == "False" and mmapped >= 64 << 20  # glibc's default: a fresh mmap


def test_opt_out_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setenv("LMFIX_MALLOC", "system")
    assert retain_freed_memory() is False
