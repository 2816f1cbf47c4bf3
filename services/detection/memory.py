"""Bounding the native heap of the detection process (glibc malloc), so RSS follows what is in use.

Engines allocate and free tens of MB per run (activations sized by the input shape). glibc's defaults keep
that memory: one malloc arena per thread that ever allocated (up to 8 x cores) and an mmap threshold that
rises after each large free, after which large blocks come from the heap and stay there. Fixing the arena
count and the threshold makes large blocks mmap'd and handed back when freed: memory no longer grows with the
number of distinct shapes served. Environment variables (MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_) set before
start win over these."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)
M_ARENA_MAX = -8


def bound_native_heap(arena_max: int = 2, mmap_threshold: int = 4 << 20) -> bool:
    """Apply the limits through mallopt; False where the C library is not glibc (nothing to do there)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    applied = True
    if "MALLOC_ARENA_MAX" not in os.environ:
        applied &= mallopt(M_ARENA_MAX, arena_max) == 1
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        applied &= mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
    log.debug("malloc: arena_max=%d mmap_threshold=%d applied=%s", arena_max, mmap_threshold, applied)
    return bool(applied)
