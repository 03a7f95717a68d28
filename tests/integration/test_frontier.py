"""The frontier (shared/db/frontier.py) on a real PostgreSQL, as a conformance suite: every
implementation of ``Frontier`` in ``IMPLEMENTATIONS`` must pass each test. Claims take due rows
in rank order and skip rows another transaction holds; unclaimed and deferred rows come back (a
deferred one only when due); a counted attempt keeps its visit published; the watchdog's
``requeue_stale`` and ``abandoned`` split stale rows at ``max_requeues``, each bounded; the
statements that put rows back lock them in key order (no deadlock between two of them)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import asyncpg
import pytest

from shared.config import Settings
from shared.db import jobs, visits
from shared.db.frontier import DueFrontier, Frontier
from tests.polling import until

Key = tuple[int, int]


def uncapped() -> Frontier:
    """Hosts without a cap (no delay): the caps are test_frontier_fair.py's."""
    return DueFrontier(Settings(host_delay=0))


IMPLEMENTATIONS: list[Callable[[], Frontier]] = [uncapped]


@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda make: getattr(make, "__name__", str(make)))
def frontier(request: pytest.FixtureRequest) -> Frontier:
    make: Callable[[], Frontier] = request.param
    return make()


async def new_job(db: asyncpg.Connection, n: int) -> list[Key]:
    """A job of ``n`` URLs, all pending and unpublished; its keys in URL order."""
    async with db.transaction():
        job, _ = await jobs.create_job(db, [f"http://h.example/{i}" for i in range(n)], 2, False)
    return [(job, r["url_id"]) for r in await db.fetch(
        "SELECT url_id FROM job_pending WHERE job_id = $1 ORDER BY url_id", job)]


async def set_due(db: asyncpg.Connection, due: dict[Key, timedelta]) -> None:
    """Make these rows due at now() + offset."""
    for (job, url), offset in due.items():
        await db.execute("UPDATE job_pending SET due = now() + $3::interval "
                         "WHERE job_id = $1 AND url_id = $2", job, url, offset)


async def published(db: asyncpg.Connection, job: int) -> set[Key]:
    return {(job, r["url_id"]) for r in await db.fetch(
        "SELECT url_id FROM job_pending WHERE job_id = $1 AND published_on IS NOT NULL", job)}


async def claim(frontier: Frontier, db: asyncpg.Connection, limit: int = 100) -> list[Key]:
    async with db.transaction():
        return await frontier.claim(db, limit)


async def make_stale(db: asyncpg.Connection, keys: list[Key], requeues: int) -> None:
    """Published an hour ago, after ``requeues`` requeues, and never processed."""
    await db.execute("""
        UPDATE job_pending p SET published_on = now() - interval '1 hour', requeues = $3
        FROM unnest($1::bigint[], $2::bigint[]) AS k(job_id, url_id)
        WHERE p.job_id = k.job_id AND p.url_id = k.url_id""",
        [k[0] for k in keys], [k[1] for k in keys], requeues)


async def test_claim_takes_due_rows_in_rank_order_and_marks_them(
        frontier: Frontier, db: asyncpg.Connection) -> None:
    # Rank (the job's queue order: bfs, the URLs' order at level 0), not due, orders the claim:
    # a row deferred a while ago keeps its place; a row not due yet waits.
    a, b, c, d, later = await new_job(db, 5)
    job = a[0]
    await set_due(db, {a: timedelta(seconds=-10), b: timedelta(seconds=-40),
                       c: timedelta(seconds=-30), d: timedelta(seconds=-20),
                       later: timedelta(hours=1)})
    assert await claim(frontier, db, limit=2) == [a, b]
    assert await published(db, job) == {a, b}
    assert await claim(frontier, db, limit=1) == [c]
    assert await claim(frontier, db) == [d]  # the last that is due
    assert await published(db, job) == {a, b, c, d}
    assert await claim(frontier, db) == []  # published rows and rows not yet due stay put


async def test_claim_skips_rows_another_transaction_holds(
        frontier: Frontier, db: asyncpg.Connection, database_url: str) -> None:
    keys = await new_job(db, 4)
    other = await asyncpg.connect(database_url)
    try:
        async with other.transaction():
            held = await visits.lock_pending(other, keys[:2])  # a commit in progress
            assert len(held) == 2
            got = await asyncio.wait_for(claim(frontier, db), 5)  # skipped, not waited for
            assert sorted(got) == keys[2:]
    finally:
        await other.close()
    assert sorted(await claim(frontier, db)) == keys[:2]  # free again: claimed now


async def test_unclaim_makes_rows_claimable_again(frontier: Frontier,
                                                  db: asyncpg.Connection) -> None:
    keys = await new_job(db, 4)
    async with db.transaction():
        assert sorted(await frontier.claim(db, 10)) == keys
        await frontier.unclaim(db, keys[1:3])  # their publish failed
    assert await published(db, keys[0][0]) == {keys[0], keys[3]}
    assert sorted(await claim(frontier, db)) == keys[1:3]
    assert await claim(frontier, db) == []


async def test_defer_hides_a_row_until_due(frontier: Frontier, db: asyncpg.Connection) -> None:
    a, b = await new_job(db, 2)
    assert sorted(await claim(frontier, db)) == [a, b]
    now = datetime.now().astimezone()
    await frontier.defer(db, {a: now + timedelta(hours=1), b: now - timedelta(seconds=1)})
    assert await published(db, a[0]) == set()
    assert await claim(frontier, db) == [b]  # a is not due yet
    assert await claim(frontier, db) == []
    await frontier.defer(db, {a: now - timedelta(seconds=1)})  # as if the hour had passed
    assert await claim(frontier, db) == [a]
    assert await db.fetchval("SELECT sum(attempts) FROM job_pending WHERE job_id = $1",
                             a[0]) == 0  # a deferral is no attempt


async def test_count_attempt_counts_and_keeps_it_published(
        frontier: Frontier, db: asyncpg.Connection) -> None:
    # Published long ago (its first delivery waited in the worker), then failed attempts: the
    # retry is a fresh claim, so the watchdog does not take it for a stale visit.
    (key,) = await new_job(db, 1)
    assert await claim(frontier, db) == [key]
    await make_stale(db, [key], 0)
    await frontier.count_attempt(db, key)
    await frontier.count_attempt(db, key)
    row = await db.fetchrow("SELECT attempts, published_on > now() - interval '1 minute' AS fresh "
                            "FROM job_pending WHERE job_id = $1 AND url_id = $2", *key)
    assert row is not None and row["attempts"] == 2 and row["fresh"]
    assert await claim(frontier, db) == []  # still published
    assert await frontier.requeue_stale(db, 60, 3) == 0
    assert await frontier.abandoned(db, 60, 0) == []


async def test_requeue_stale_and_abandoned_split_at_max_requeues_and_are_bounded(
        frontier: Frontier, db: asyncpg.Connection) -> None:
    stale = await new_job(db, 5)  # requeued fewer than max_requeues times: published again
    spent = await new_job(db, 4)  # requeued max_requeues times: abandoned
    fresh = await new_job(db, 3)  # published a moment ago: neither
    await make_stale(db, stale, 1)
    await make_stale(db, spent, 2)
    assert sorted(await claim(frontier, db)) == fresh

    assert await frontier.abandoned(db, 60, 2, limit=3) == [(k, 2) for k in spent[:3]]
    assert await frontier.abandoned(db, 60, 2) == [(k, 2) for k in spent]
    assert [await frontier.requeue_stale(db, 60, 2, limit=2) for _ in range(4)] == [2, 2, 1, 0]
    assert await db.fetchval("""
        SELECT bool_and(requeues = 2 AND published_on IS NULL AND due <= now())
        FROM job_pending WHERE job_id = $1""", stale[0][0])
    assert sorted(await claim(frontier, db)) == stale  # claimable again, at once
    assert await published(db, spent[0][0]) == set(spent)  # left to be recorded as failed
    assert await frontier.abandoned(db, 60, 2) == [(k, 2) for k in spent]
    assert await frontier.abandoned(db, 60, 3) == []  # one requeue left: not abandoned yet


async def _holds(conn: asyncpg.Connection, key: Key) -> bool:
    """Whether another transaction holds the pending row ``key`` locked."""
    async with conn.transaction():
        try:
            await conn.fetchval("SELECT 1 FROM job_pending WHERE job_id = $1 AND url_id = $2 "
                                "FOR NO KEY UPDATE NOWAIT", *key)
        except asyncpg.LockNotAvailableError:
            return True
    return False


PUT_BACK: dict[str, Callable[[Frontier, asyncpg.Connection, list[Key]], Awaitable[None]]] = {
    "unclaim": lambda f, conn, keys: f.unclaim(conn, keys),
    "hold": lambda f, conn, keys: f.hold(conn, keys),
    "defer": lambda f, conn, keys: f.defer(
        conn, dict.fromkeys(keys, datetime.now().astimezone() + timedelta(hours=1))),
}


@pytest.mark.parametrize("put_back", list(PUT_BACK))
async def test_putting_rows_back_locks_them_in_key_order(
        put_back: str, frontier: Frontier, db: asyncpg.Connection, database_url: str) -> None:
    # Two transactions that lock the same rows in one order (the key's) wait for each other,
    # never in a cycle (a deadlock). A puts back k1 < k2 < k3, given in reverse, while another
    # holds k2: it must have locked k1 and wait at k2, with k3 not yet locked. The heap is made
    # to disagree with the keys (k1's row rewritten last), so a scan order would not do either.
    k1, k2, k3 = await new_job(db, 3)
    assert sorted(await claim(frontier, db)) == [k1, k2, k3]
    await db.execute("UPDATE job_pending SET attempts = 0 WHERE job_id = $1 AND url_id = $2",
                     *k1)
    holder, putter = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM job_pending WHERE job_id = $1 AND url_id = $2 "
                                 "FOR NO KEY UPDATE", *k2)
            pid = putter.get_server_pid()

            async def put() -> None:
                async with putter.transaction():
                    await PUT_BACK[put_back](frontier, putter, [k3, k2, k1])
            task = asyncio.create_task(put())

            async def waiting() -> bool:
                return bool(await db.fetchval(
                    "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid))
            await until(waiting, what="the put-back waiting for k2")
            assert await _holds(db, k1), "k1 (the lowest key) locked first"
            assert not await _holds(db, k3), "k3 not locked before k2"
        await asyncio.wait_for(task, 10)
    finally:
        await holder.close()
        await putter.close()
    assert await published(db, k1[0]) == set()  # all three put back
