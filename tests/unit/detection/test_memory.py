"""glibc heap bounds (services/detection/memory.py), checked in a fresh process: in the test process, memory that
earlier tests freed would be reused and hide the effect."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

CHECK = """
import numpy as np
from services.detection.memory import bound_native_heap, trim_native_heap

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

assert bound_native_heap() is True
before = rss()
# many mid-sized blocks (under glibc's mmap threshold, so they live in the heap and stay there after free)
blocks = [np.ones(64 << 10, np.uint8) for _ in range(1500)]
keep = blocks[-1]  # the top of the heap stays in use: free() alone cannot shrink it
grown = rss() - before
del blocks
held = rss() - before
assert trim_native_heap() is True
print(round(grown), round(held), round(rss() - before))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt / malloc_trim are glibc's")
def test_freed_heap_memory_goes_back_when_trimmed():
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    grown, held, after_trim = map(int, out.stdout.split())
    assert grown > 64  # ~94 MB allocated
    assert held > 64  # freed, but kept by the heap
    assert after_trim < held - 48  # handed back


def test_trimming_again_starts_no_process(monkeypatch):
    """find_library runs `ldconfig -p` in a child: done once, not on every trim (a child forked from the serving
    process counts its memory again while it lives)."""
    import ctypes.util

    from services.detection import memory

    calls = []
    real = ctypes.util.find_library
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: calls.append(name) or real(name))
    memory._libc.cache_clear()
    for _ in range(5):
        memory.trim_native_heap()
    assert len(calls) <= 1
