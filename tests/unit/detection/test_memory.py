import platform

import numpy as np
import pytest

from services.detection.memory import bound_native_heap


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt limits are glibc's")
def test_bound_native_heap_applies_on_glibc_and_large_blocks_are_returned():
    assert bound_native_heap() is True
    before = _rss()
    blocks = [np.ones(8 << 20, np.uint8) for _ in range(8)]  # 64 MB in blocks above the 4 MB threshold
    assert _rss() - before > 48
    del blocks
    assert _rss() - before < 16  # mmap'd, so handed back at once rather than kept in the heap


def _rss() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
