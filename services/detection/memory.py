"""Bounding the native heap of the detection process (glibc malloc), so RSS follows what is in use.

Engines allocate and free tens of MB per run (activations sized by the input shape). glibc keeps freed memory
in its heaps, one arena per thread that ever allocated (up to 8 x cores), each holding its own free blocks.
Two arenas bound that fragmentation; trimming the heaps once the service has been idle a moment hands the free
pages back. (Forcing large blocks to mmap instead hands them back at once, but costs a page fault per page on
every run: 2.3x the CPU per image, measured on the 2-core box, so that is left to glibc's own threshold.)
MALLOC_ARENA_MAX set in the environment wins over this."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


@functools.cache
def _libc():
    # once: find_library runs `ldconfig -p` in a child process, and a child forked from a 500 MB process counts
    # that memory again while it lives (the load test once saw a 1.1 GB "peak"), besides the fork's own cost
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def bound_native_heap(arena_max: int = 2) -> bool:
    """At most ``arena_max`` malloc arenas (call before threads start); False where the C library is not glibc."""
    libc = _libc()
    if libc is None:
        return False
    if "MALLOC_ARENA_MAX" in os.environ:
        return True
    return libc.mallopt(M_ARENA_MAX, arena_max) == 1


def trim_native_heap() -> bool:
    """Hand the heaps' free pages back to the system (glibc's malloc_trim); True when some were released."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))
