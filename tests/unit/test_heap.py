"""shared/heap.py: a process keeps its freed heap between pages instead of giving it back to
the kernel and faulting it in again (glibc ``mallopt``), measured in a fresh interpreter by its
minor page faults over 200 rounds of allocating and freeing 2 MB in 32 KB blocks (each under
glibc's mmap threshold, so they come from the heap, and together over its trim threshold)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared import heap

ROOT = Path(__file__).resolve().parents[2]
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
    # glibc's own defaults: no malloc tuning or other allocator from the environment
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True,
                         check=True, timeout=60, cwd=ROOT, env=env)
    return int(out.stdout)


def test_a_kept_heap_is_not_faulted_in_again_for_every_page() -> None:
    given_back = faults("default")
    kept = faults("keep")
    assert given_back >= 200  # glibc's defaults: trimmed and faulted in again, every round
    assert kept * 20 < given_back  # kept: next to nothing to fault in after the first round


def test_elsewhere_nothing_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap.sys, "platform", "darwin")
    assert heap.keep_heap() is False


def test_a_c_library_without_mallopt_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoMallopt:
        def __init__(self, name: Any) -> None:
            pass

    monkeypatch.setattr(heap.ctypes, "CDLL", NoMallopt)
    assert heap.keep_heap() is False


def test_an_operators_malloc_tuning_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert heap.keep_heap() is False
