"""The C heap of a Harvester process kept between pages (glibc ``mallopt``).

A page's body, its parse tree and its links are allocated and freed again for every page.
With glibc's defaults, freeing them leaves more than 128 KiB free at the heap's top, which is
given back to the kernel (``brk``), and the next page takes it again: six ``brk`` calls and
hundreds of page faults (each a fresh zeroed page) per page. Measured on an HTML lane
(``worker.extractors.lanes``) parsing 22 KB pages: 0.31 CPU ms a page, 0.13 of it in the
kernel; with the heap kept, 0.20 ms and 0.02.

So each process keeps ``TOP_PAD`` of free heap at its top (at most that much more than it
uses: trimming still happens above it), and takes blocks up to ``MMAP_THRESHOLD`` from the heap
rather than mapping each (setting either option freezes glibc's own adaptive threshold, so it
is set too, to about where that would have climbed for pages of a few MB). Elsewhere (another C
library, no ``mallopt``) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

TOP_PAD = 4 << 20  # bytes of free heap kept at its top
MMAP_THRESHOLD = 4 << 20  # blocks below this come from the heap
_M_TOP_PAD = -2  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def keep_heap() -> bool:
    """Set the process's heap options (see the module); whether they were set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_TOP_PAD, TOP_PAD)) and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
