"""shared/db/sessions.py against PostgreSQL (SZ-T6's store): put says new or updated and
starts a session afresh; leases go least recently used first, bounded per session, scoped to
the session's host; an empty pool (or none for the host) gives None; max_uses holds with
requests in flight; a bench keeps a session out until it ends and doubles in a row; takers
racing on one pool never share a session past its concurrency."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta

import asyncpg
import pytest

from shared.db import sessions
from shared.db.sessions import Lease, Release

A = "http://127.0.0.1:8001"
B = "http://127.0.0.2:8002"


@pytest.fixture
def conn(db: asyncpg.Connection) -> asyncpg.Connection:
    return db


async def lease(conn: asyncpg.Connection, host: str = A, pool: str = "p",
                concurrency: int = 1, lease_s: float = 30.0) -> Lease | datetime | None:
    return await sessions.lease(conn, pool, host, lease_s, concurrency)


async def now(conn: asyncpg.Connection) -> datetime:
    got: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return got


async def test_put_says_new_then_updated_and_lists_no_values(conn: asyncpg.Connection) -> None:
    assert await sessions.put(conn, "p", "alice", cookies={"sid": "s3cret", "u": "alice"},
                              headers={"X-Tok": "t0k"}, host=A) == "new"
    assert await sessions.put(conn, "p", "alice", cookies={"sid": "n3w"}, host=A,
                              user_agent="UA-1", max_uses=5) == "updated"
    assert await sessions.put(conn, "q", "alice", cookies={}) == "new"  # another pool
    [info] = await sessions.listing(conn, "p")
    assert (info.name, info.host, info.cookie_names, info.header_names, info.user_agent,
            info.max_uses, info.version) == ("alice", A, ("sid",), (), "UA-1", 5, 2)
    shown = repr(info.as_json()) + repr(await sessions.listing(conn))
    assert "n3w" not in shown and "s3cret" not in shown and "t0k" not in shown
    got = await lease(conn)
    assert isinstance(got, Lease) and got.cookies == {"sid": "n3w"} and got.version == 2
    assert await sessions.delete(conn, "p", "alice") and not await sessions.delete(conn, "p", "alice")
    assert await lease(conn) is None


async def test_empty_pool_and_other_hosts_give_none(conn: asyncpg.Connection) -> None:
    assert await lease(conn) is None
    await sessions.put(conn, "p", "a-only", cookies={"k": "v"}, host=A)
    assert await lease(conn, B) is None  # scoped: never sent to another host
    assert isinstance(await lease(conn, A), Lease)
    await sessions.put(conn, "p", "anywhere", cookies={"k": "w"})  # host NULL: any host
    got = await lease(conn, B)
    assert isinstance(got, Lease) and got.name == "anywhere"


async def test_least_recently_used_first_and_bounded(conn: asyncpg.Connection) -> None:
    for name in ("a", "b", "c"):
        await sessions.put(conn, "p", name, cookies={"u": name}, host=A)
    got = [await lease(conn, concurrency=1) for _ in range(4)]
    leases = [g for g in got if isinstance(g, Lease)]
    assert sorted(g.name for g in leases) == ["a", "b", "c"]
    before = await now(conn)
    assert isinstance(got[3], datetime)  # all busy: soon
    assert before < got[3] < before + timedelta(seconds=2)
    await sessions.release(conn, [Release(leases[1])])
    again = await lease(conn, concurrency=1)
    assert isinstance(again, Lease) and again.name == leases[1].name
    # Two at a time per session: three more.
    more = [await lease(conn, concurrency=2) for _ in range(4)]
    assert sorted(m.name for m in more if isinstance(m, Lease)) == ["a", "b", "c"]
    assert isinstance(more[3], datetime)
    assert {i.name: i.in_flight for i in await sessions.listing(conn, "p")} == {
        "a": 2, "b": 2, "c": 2}
    # Released, they go in turn: the least recently used first.
    await sessions.release(conn, [Release(m) for m in more if isinstance(m, Lease)]
                           + [Release(g) for g in leases if g.name != leases[1].name]
                           + [Release(again)])
    order = []
    for _ in range(6):
        g = await lease(conn, concurrency=10)
        assert isinstance(g, Lease)
        order.append(g.name)
        await sessions.release(conn, [Release(g)])
    assert sorted(order[:3]) == ["a", "b", "c"] and order[3:] == order[:3]


async def test_expired_leases_stop_counting(conn: asyncpg.Connection) -> None:
    await sessions.put(conn, "p", "a", cookies={"u": "a"})
    assert isinstance(await lease(conn, lease_s=0.2), Lease)
    assert isinstance(await lease(conn), datetime)  # a killed worker's lease, still live
    deadline = time.monotonic() + 10
    while not isinstance(got := await lease(conn), Lease):
        assert time.monotonic() < deadline, "an expired lease still counts"
        await asyncio.sleep(0.05)
    assert got.name == "a"


async def test_max_uses_holds_and_put_renews(conn: asyncpg.Connection) -> None:
    await sessions.put(conn, "p", "a", cookies={"u": "a"}, max_uses=3)
    taken = []
    for _ in range(3):
        g = await lease(conn, concurrency=10)
        assert isinstance(g, Lease)
        taken.append(g)
    spent = await lease(conn, concurrency=10)  # counted at the lease: 3 in flight is 3 uses
    before = await now(conn)
    assert isinstance(spent, datetime) and spent > before + timedelta(seconds=30)
    await sessions.release(conn, [Release(taken[0], used=False)])  # never sent: use given back
    last = await lease(conn, concurrency=10)
    assert isinstance(last, Lease)
    assert isinstance(await lease(conn, concurrency=10), datetime)
    assert (await sessions.listing(conn, "p"))[0].uses == 3
    assert await sessions.put(conn, "p", "a", cookies={"u": "a2"}, max_uses=3) == "updated"
    renewed = await lease(conn, concurrency=10)
    assert isinstance(renewed, Lease) and renewed.cookies == {"u": "a2"}


async def test_a_bench_ends_and_doubles_in_a_row(conn: asyncpg.Connection) -> None:
    await sessions.put(conn, "p", "a", cookies={"u": "a"})
    first = await lease(conn)
    assert isinstance(first, Lease)
    await sessions.release(conn, [Release(first, bench=0.3, reason="HTTP 403")])
    [info] = await sessions.listing(conn, "p")
    assert (info.benches, info.bench_reason, info.in_flight) == (1, "HTTP 403", 0)
    until = await lease(conn)
    assert isinstance(until, datetime) and info.benched_until == until
    deadline = time.monotonic() + 10
    while not isinstance(second := await lease(conn), Lease):
        assert time.monotonic() < deadline, "the bench never ended"
        await asyncio.sleep(0.05)
    t0 = await now(conn)
    await sessions.release(conn, [Release(second, bench=100, reason="unusual traffic")])
    [info] = await sessions.listing(conn, "p")
    assert info.benches == 2 and info.benched_until is not None
    assert t0 + timedelta(seconds=190) < info.benched_until < t0 + timedelta(seconds=210)  # 2×
    await sessions.release(conn, [Release(second, bench=10**6)])  # capped at MAX_BENCH
    [info] = await sessions.listing(conn, "p")
    assert info.benched_until is not None
    assert info.benched_until < t0 + timedelta(seconds=sessions.MAX_BENCH + 60)
    # Refreshed (a login): no bench; a bench met by the old version is not the new one's.
    await sessions.put(conn, "p", "a", cookies={"u": "fresh"})
    third = await lease(conn)
    assert isinstance(third, Lease) and third.version == 2
    await sessions.release(conn, [Release(second, bench=100, reason="stale")])
    [info] = await sessions.listing(conn, "p")
    assert (info.benches, info.benched_until, info.in_flight) == (0, None, 1)
    # A good use ends a row of benches.
    await sessions.release(conn, [Release(third, bench=0.01, reason="HTTP 429")])
    deadline = time.monotonic() + 10
    while not isinstance(fourth := await lease(conn), Lease):
        assert time.monotonic() < deadline, "the bench never ended"
        await asyncio.sleep(0.02)
    await sessions.release(conn, [Release(fourth)])
    [info] = await sessions.listing(conn, "p")
    assert (info.benches, info.bench_reason) == (0, None)


async def test_one_batch_releases_many_leases_of_one_session(conn: asyncpg.Connection) -> None:
    await sessions.put(conn, "p", "a", cookies={"u": "a"})
    got = [await lease(conn, concurrency=3) for _ in range(3)]
    assert all(isinstance(g, Lease) for g in got)
    await sessions.release(conn, [Release(g, used=i == 0) for i, g in enumerate(got)
                                  if isinstance(g, Lease)])
    [info] = await sessions.listing(conn, "p")
    assert (info.in_flight, info.uses) == (0, 1)


async def test_racing_takers_share_no_session(database_url: str,
                                              conn: asyncpg.Connection) -> None:
    for name in ("a", "b", "c"):
        await sessions.put(conn, "p", name, cookies={"u": name})
    conns = [await asyncpg.connect(database_url) for _ in range(8)]
    try:
        got = await asyncio.gather(*(lease(c) for c in conns))
    finally:
        for c in conns:
            await c.close()
    names = [g.name for g in got if isinstance(g, Lease)]
    assert sorted(names) == sorted(set(names)) and len(names) <= 3
    assert all(isinstance(g, (Lease, datetime)) for g in got)
