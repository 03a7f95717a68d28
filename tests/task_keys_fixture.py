"""Task functions for tests/e2e/test_task_faults.py: follow-ups with keys of their own."""

from __future__ import annotations

from typing import Any


def keyed(ctx: Any, key: str, values: list[int]) -> list[str]:
    """Enqueue ``add(a=v, b=0)`` with the key ``key`` for each of ``values``; the stored keys."""
    return [ctx.enqueue("add", {"a": v, "b": 0}, key=key) for v in values]
