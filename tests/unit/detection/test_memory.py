import platform

import numpy as np
import pytest

from services.detection.memory import bound_native_heap, trim_native_heap

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt / malloc_trim are glibc's")


@glibc
def test_freed_heap_memory_goes_back_when_trimmed():
    assert bound_native_heap() is True
    before = _rss()
    # many mid-sized blocks (under glibc's mmap threshold, so they live in the heap and stay after free)
    blocks = [np.ones(64 << 10, np.uint8) for _ in range(1500)]
    keep = blocks[-1]  # the heap top stays in use: free() alone cannot shrink the heap
    assert _rss() - before > 64
    del blocks
    held = _rss() - before
    assert trim_native_heap() is True
    assert _rss() - before < held - 48
    del keep


def _rss() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
