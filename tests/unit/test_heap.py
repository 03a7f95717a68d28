"""shared/heap.py: a process keeps its freed heap between pages instead of giving it back to
the kernel and faulting it in again (glibc ``mallopt``), measured in a fresh interpreter by its
minor page faults over 200 rounds of allocating and freeing 2 MB in 32 KB blocks (each under
glibc's mmap threshold, so they come from the heap, and together over its trim threshold)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared import heap

ROUNDS = """
import resource, sys
from shared.heap import keep_heap
if sys.argv[1] == "keep":
    assert keep_heap()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
blocks = [bytearray(32768) for _ in range(64)]
del blocks
before = faults()
for _ in range(200):
    blocks = [bytearray(32768) for _ in range(64)]
    del blocks
print(faults() - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True,
                         check=True, timeout=60)
    return int(out.stdout)


def test_a_kept_heap_is_not_faulted_in_again_for_every_page() -> None:
    given_back = faults("default")
    kept = faults("keep")
    assert given_back >= 200 * 20  # glibc's defaults: trimmed and faulted in again each round
    assert kept < 200  # kept: nothing new to fault in after the first round


def test_elsewhere_nothing_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap.sys, "platform", "darwin")
    assert heap.keep_heap() is False
