"""Retrying with exponential backoff: how every tier waits for PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


async def retrying(op: Callable[[], Awaitable[T]], what: str,
                   retryable: tuple[type[BaseException], ...],
                   retry_for: float | None = None) -> T:
    """Call ``op`` until it succeeds, waiting 0.2 s, 0.4 s ... up to 5 s between tries; give up
    (re-raise) after ``retry_for`` seconds, or never when it is None."""
    delay, waited = 0.2, 0.0
    while True:
        try:
            return await op()
        except retryable as e:
            if retry_for is not None and waited >= retry_for:
                raise
            log.warning("%s not reachable (%s); retrying in %.1fs", what, e, delay)
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 5.0)
