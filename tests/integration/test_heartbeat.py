"""The live worker registry: worker/heartbeat.py beating into worker_process through
shared/db/workers.py, against a real PostgreSQL. Time passes by setting seen_on back in SQL."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import asyncpg
import pytest

from shared.config import Settings
from shared.db import workers
from shared.db.pool import open_pool
from worker.heartbeat import heartbeat

T = TypeVar("T")


async def _eventually(op: Callable[[], Awaitable[T]], ok: Callable[[T], bool],
                      timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        answer = await op()
        if ok(answer) or time.monotonic() > deadline:
            assert ok(answer), f"still {answer!r} after {timeout}s"
            return answer
        await asyncio.sleep(0.02)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with open_pool(database_url, min_size=1, max_size=4) as p:
        yield p


async def _beats(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM worker_process"))


async def test_a_beating_worker_is_live_for_its_kinds_only(
        settings: Settings, pool: asyncpg.Pool, db: asyncpg.Connection) -> None:
    stop = asyncio.Event()
    counts: list[int] = []
    task = asyncio.create_task(heartbeat(settings, pool, ["http", "static"], stop,
                                         live=counts.append))
    try:
        await _eventually(lambda: workers.live(db, "static", settings.worker_timeout),
                          lambda n: n == 1)
        async def told() -> list[int]:
            return counts

        # told after each beat (a moment after it shows): itself alone
        assert set(await _eventually(told, bool)) == {1}
        assert await workers.live(db, "http", settings.worker_timeout) == 1
        assert await workers.live(db, "browser", settings.worker_timeout) == 0
        (row,) = await workers.live_workers(db, settings.worker_timeout)
        assert (row.kinds, row.hostname, row.pid) == (["http", "static"], socket.gethostname(),
                                                      os.getpid())
        assert row.version
    finally:
        stop.set()
        await task


async def test_a_worker_that_stops_beating_drops_out_after_the_timeout(
        settings: Settings, db: asyncpg.Connection) -> None:
    me, other = uuid.uuid4(), uuid.uuid4()
    await workers.beat(db, me, ["http"], "h", 1, "dev")
    await workers.beat(db, other, ["http"], "h", 2, "dev")
    assert await workers.live(db, "http", 15.0) == 2
    await db.execute("UPDATE worker_process SET seen_on = now() - interval '16 seconds' "
                     "WHERE id = $1", other)
    assert await workers.live(db, "http", 15.0) == 1
    assert [w.id for w in await workers.live_workers(db, 15.0)] == [me]
    assert await workers.live(db, "http", 20.0) == 2, "within a longer timeout it still counts"
    await workers.beat(db, other, ["http"], "h", 2, "dev")  # beating again: live again
    assert await workers.live(db, "http", 15.0) == 2


async def test_a_beat_counts_the_live_workers_serving_its_kinds(db: asyncpg.Connection) -> None:
    me, other, browser, sick, gone = (uuid.uuid4() for _ in range(5))
    assert await workers.beat(db, me, ["http"], "h", 1, "dev") == 1  # itself
    assert await workers.beat(db, other, ["http", "static"], "h", 2, "dev") == 2
    assert await workers.beat(db, browser, ["browser"], "h", 3, "dev") == 1  # no kind shared
    assert await workers.beat(db, sick, [], "h", 4, "dev", health="init failed") == 0
    await workers.beat(db, gone, ["http"], "h", 5, "dev")
    await db.execute("UPDATE worker_process SET seen_on = now() - interval '16 seconds' "
                     "WHERE id = $1", gone)
    assert await workers.beat(db, me, ["http"], "h", 1, "dev", timeout=15.0) == 2
    assert await workers.beat(db, me, ["http"], "h", 1, "dev", timeout=20.0) == 3


async def test_a_row_unseen_for_a_day_is_pruned_by_the_next_beat(db: asyncpg.Connection) -> None:
    me, gone = uuid.uuid4(), uuid.uuid4()
    await workers.beat(db, gone, ["http"], "h", 1, "dev")
    await db.execute("UPDATE worker_process SET seen_on = now() - interval '25 hours'")
    await workers.beat(db, me, ["http"], "h", 2, "dev")
    assert await db.fetchval("SELECT array_agg(id) FROM worker_process") == [me]


async def test_a_clean_stop_forgets_the_worker(
        settings: Settings, pool: asyncpg.Pool, db: asyncpg.Connection) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(heartbeat(settings, pool, ["http"], stop))
    await _eventually(lambda: _beats(db), lambda n: n == 1)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert await _beats(db) == 0
    assert await workers.live(db, "http", settings.worker_timeout) == 0


async def test_the_heartbeat_survives_a_postgresql_error(
        settings: Settings, pool: asyncpg.Pool, db: asyncpg.Connection,
        caplog: pytest.LogCaptureFixture) -> None:
    """The table is gone for a while (a PostgreSQL error on every beat): the heartbeat logs it,
    keeps going, and beats again once the table is back."""
    caplog.set_level(logging.INFO, logger="worker.heartbeat")
    fast = settings.model_copy(update={"heartbeat_interval": 0.05})
    await db.execute("ALTER TABLE worker_process RENAME TO worker_process_away")
    stop = asyncio.Event()
    task = asyncio.create_task(heartbeat(fast, pool, ["http"], stop))
    try:
        await _eventually(lambda: _logged(caplog, logging.WARNING), bool)
        assert not task.done()
        await db.execute("ALTER TABLE worker_process_away RENAME TO worker_process")
        await _eventually(lambda: workers.live(db, "http", 15.0), lambda n: n == 1)
        assert any("again" in m for m in await _logged(caplog, logging.INFO))
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    (warning,) = await _logged(caplog, logging.WARNING)
    assert "worker_process" in warning, "the error is named once, not once per beat"


async def _logged(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "worker.heartbeat" and r.levelno == level]


async def test_each_beat_stores_the_workers_stats(
        settings: Settings, pool: asyncpg.Pool, db: asyncpg.Connection) -> None:
    """The stats callable is read at each beat: /workers shows the last one; a worker without
    stats (an unhealthy one) has none."""
    fast = settings.model_copy(update={"heartbeat_interval": 0.05})
    fetched = [0]

    def stats() -> dict[str, object]:
        fetched[0] += 1
        return {"inFlight": 2, "fetched": fetched[0], "fetchedByKind": {"github": fetched[0]},
                "latencyP50": 0.25, "latencyP95": None}

    stop = asyncio.Event()
    task = asyncio.create_task(heartbeat(fast, pool, ["http", "github"], stop, stats=stats))
    try:
        (row,) = await _eventually(lambda: workers.live_workers(db, 15.0),
                                   lambda rows: bool(rows) and rows[0].stats is not None
                                   and rows[0].stats["fetched"] >= 3)
        assert row.stats is not None
        assert row.stats["inFlight"] == 2 and row.stats["latencyP95"] is None
        assert row.stats["fetchedByKind"] == {"github": row.stats["fetched"]}
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    me = uuid.uuid4()
    await workers.beat(db, me, [], "h", 1, "dev", health="init failed")
    (row,) = await workers.live_workers(db, 15.0)
    assert row.stats is None and row.health == "init failed"
