"""The C heap of a Harvester process kept between pages (glibc ``mallopt``).

A page's body, its parse tree and its links are allocated and freed again for every page.
With glibc's defaults, freeing them leaves more than 128 KiB free at the heap's top, which is
given back to the kernel (``brk``), and the next page takes it again: six ``brk`` calls and
hundreds of page faults (each a fresh zeroed page) per page. Measured on an HTML lane
(``worker.extractors.lanes``) parsing the bench's 15–22 KB pages: 0.27–0.31 CPU ms a page,
0.06–0.13 of it in the kernel; with the heap kept, 0.20–0.22 ms and 0.02–0.03.

So each malloc arena keeps up to ``TOP_PAD`` free at its top (trimming still happens above
it; a process with threads has a few arenas, and free memory inside the heap is never given
back either way), and blocks up to ``MMAP_THRESHOLD`` come from the heap rather than each
being mapped and unmapped (setting either option freezes glibc's adaptive threshold, which
would have climbed to the largest block freed: so it is set about where a 10 MiB body, the
default ``maxBodyBytes``, would have taken it).

An operator's own malloc tuning wins: with a ``MALLOC_*`` variable or ``GLIBC_TUNABLES`` in the
environment nothing is set. Elsewhere (another C library, no ``mallopt``) nothing changes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

TOP_PAD = 4 << 20  # bytes of free heap kept at an arena's top
MMAP_THRESHOLD = 16 << 20  # blocks below this come from the heap (glibc's limit: 32 MiB)
_M_TOP_PAD = -2  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def keep_heap() -> bool:
    """Set the process's heap options (see the module); whether they were set."""
    if not sys.platform.startswith("linux"):
        return False
    if "GLIBC_TUNABLES" in os.environ or any(k.startswith("MALLOC_") for k in os.environ):
        log.debug("malloc tuned by the environment: the heap options are left as they are")
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = bool(mallopt(_M_TOP_PAD, TOP_PAD)) and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    log.debug("heap kept between pages: %s", done)
    return done
