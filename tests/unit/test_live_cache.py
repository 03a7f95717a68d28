"""web_server/live.py ``LiveHub.cached``: a job's levels and hosts, read for /status, are kept
for ``liveInterval``, or 50 times what the read took when that is longer, so the reads of a
big job (as large as its frontier) stay a small share of the time however often it is polled."""

from __future__ import annotations

import asyncio

from shared.config import Settings
from web_server import live


def hub(interval: float) -> live.LiveHub:
    return live.LiveHub(None, Settings(live_interval=interval), None)  # type: ignore[arg-type]


async def test_a_cheap_read_is_kept_for_the_interval() -> None:
    h, reads = hub(0.02), []

    async def read() -> int:
        reads.append(1)
        return len(reads)

    assert await h.cached("levels", 1, read) == 1
    assert await h.cached("levels", 1, read) == 1  # within the interval: kept
    assert await h.cached("levels", 2, read) == 2  # another job: its own
    await asyncio.sleep(0.05)
    assert await h.cached("levels", 1, read) == 3  # past the interval: read again


async def test_a_slow_read_is_kept_for_50_times_what_it_took() -> None:
    h, reads = hub(0.01), []

    async def slow() -> int:
        await asyncio.sleep(0.02)  # kept at least 1 s (50 x 20 ms), far past the interval
        reads.append(1)
        return len(reads)

    assert await h.cached("hosts", 1, slow) == 1
    await asyncio.sleep(0.1)  # ten intervals
    assert await h.cached("hosts", 1, slow) == 1
