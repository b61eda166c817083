"""How much freed memory the process keeps: glibc's malloc, told to give large buffers back.

A document passes through the receiver and the worker in buffers of 256 KiB to 1 MiB (a
multipart feed, a file chunk, a request body). glibc serves a buffer that large with its own
mmap and unmaps it when freed — until the first one is freed: then it raises its mmap threshold
to that size (up to 32 MiB), and from then on such buffers come from the heap and stay resident
after use. With many threads (the documents' pool, the HTTP server's) each can also get a heap
arena of its own (up to eight per core), each keeping its own freed memory. Eight 25 MiB
uploads at once then leave tens of MB resident that nothing uses.

:func:`keep_little_freed_memory` fixes the threshold at 1 MiB (which also stops the dynamic
raise) and caps the arenas at 2, once at the start of ``engine serve`` and of each worker process,
before their threads start. Elsewhere than glibc it does nothing. Measured with the ``documents``
bench's eight 25 MiB uploads in flight (receiver + worker): peak RSS 263-268 MB with a 128 KiB
threshold, 283-290 MB without any setting (three runs each, alternating, on the same machine),
267 MB with 1 MiB. Not lower than 1 MiB: at 128 KiB every 256 KiB to 1 MiB buffer of an upload
was a fresh mmap whose pages the kernel zeroed and faulted in, and the receiver spent 5.5 ms of
system time per 1 MiB upload instead of 3.3 ms (one pair of runs of the ``documents`` bench's
stored case, 3 December 2026).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["keep_little_freed_memory"]

log = logging.getLogger(__name__)

#: mallopt parameters (glibc malloc.h)
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_MMAP_THRESHOLD = 1024 * 1024
_ARENAS = 2


def keep_little_freed_memory() -> bool:
    """Set glibc's mmap threshold and arena cap (see the module docstring); True when set."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1)
    done = bool(mallopt(_M_ARENA_MAX, _ARENAS) == 1) and done
    if not done:
        log.warning("malloc settings not taken: freed memory may stay resident")
    return done
