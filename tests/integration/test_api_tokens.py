"""shared/db/api_tokens.py against PostgreSQL: the rate-limit state per (token id, resource)
that every worker shares: leases bounded per token, the most remaining first, a spent token
skipped until its reset, a pause, a 304 spending nothing, a newer window replacing the budget,
expiring leases, and takers racing on one row."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import asyncpg
import pytest

from shared.db import api_tokens
from shared.db.api_tokens import Taken

T1, T2 = "t-000000000001", "t-000000000002"


@pytest.fixture
async def conn(db: asyncpg.Connection) -> asyncpg.Connection:
    await api_tokens.register(db, [T1, T2], ["core", "search"])
    return db


async def take(conn: asyncpg.Connection, ids: list[str] | None = None, resource: str = "core",
               max_inflight: int = 4, lease: float = 30.0) -> Taken | datetime:
    return (await api_tokens.take(conn, ids or [T1, T2], resource, max_inflight, lease))[1]


async def state(conn: asyncpg.Connection, tid: str,
                resource: str = "core") -> api_tokens.TokenState:
    return next(s for s in await api_tokens.states(conn)
                if s.token_id == tid and s.resource == resource)


async def test_register_is_idempotent_and_stores_ids_only(conn: asyncpg.Connection) -> None:
    await api_tokens.register(conn, [T1], ["core"])
    rows = await api_tokens.states(conn)
    assert [(s.token_id, s.resource) for s in rows] == [
        (T1, "core"), (T1, "search"), (T2, "core"), (T2, "search")]
    assert all(s.remaining is None and s.in_flight == 0 for s in rows)


async def test_in_flight_bounded_per_token(conn: asyncpg.Connection) -> None:
    got = [await take(conn, max_inflight=2) for _ in range(5)]
    taken = [g for g in got if isinstance(g, Taken)]
    assert len(taken) == 4 and isinstance(got[4], datetime)
    assert sorted(t.token_id for t in taken) == [T1, T1, T2, T2]
    assert (await state(conn, T1)).in_flight == 2
    await api_tokens.give_back(conn, taken[0], "core")
    again = await take(conn, max_inflight=2)
    assert isinstance(again, Taken) and again.token_id == taken[0].token_id
    # Another resource is another budget and another bound.
    assert isinstance(await take(conn, resource="search", max_inflight=2), Taken)


async def test_most_remaining_first_and_a_spent_token_waits_for_its_reset(
        conn: asyncpg.Connection) -> None:
    now = (await api_tokens.take(conn, [], "core", 1, 1.0))[0]
    reset = now + timedelta(hours=1)
    for tid, left in ((T1, 10), (T2, 3)):
        t = Taken(tid, now)  # a lease long gone
        await api_tokens.give_back(conn, t, "core", remaining=left, limit=5000, reset_at=reset)
    first = await take(conn)
    assert isinstance(first, Taken) and first.token_id == T1
    assert (await state(conn, T1)).remaining == 9  # spent ahead
    # T1 spent (Remaining 0 in its answer): only T2, three times, then nothing till the reset.
    await api_tokens.give_back(conn, first, "core", remaining=0, limit=5000, reset_at=reset)
    got = [await take(conn, max_inflight=10) for _ in range(4)]
    assert [g.token_id for g in got[:3] if isinstance(g, Taken)] == [T2, T2, T2]
    assert isinstance(got[3], datetime)
    assert abs((got[3] - reset).total_seconds() - api_tokens.RESET_SKEW) < 1
    s1 = await state(conn, T1)
    assert (s1.remaining, s1.limit, s1.reset_at) == (0, 5000, reset)


async def test_a_passed_reset_frees_the_token_after_a_skew(conn: asyncpg.Connection) -> None:
    now = (await api_tokens.take(conn, [], "core", 1, 1.0))[0]
    await api_tokens.give_back(conn, Taken(T1, now), "core", remaining=0, limit=60,
                               reset_at=now - timedelta(seconds=api_tokens.RESET_SKEW + 1))
    got = await take(conn, [T1])
    assert isinstance(got, Taken)
    s = await state(conn, T1)
    assert s.remaining is None and s.reset_at is None  # the next answer says the new budget
    # Just past its reset: GitHub's clock may not be there yet, so not before the skew.
    reset = now - timedelta(seconds=0.5)
    await api_tokens.give_back(conn, Taken(T2, now), "core", remaining=0, limit=60,
                               reset_at=reset)
    got = await take(conn, [T2])
    assert isinstance(got, datetime)
    assert abs((got - reset).total_seconds() - api_tokens.RESET_SKEW) < 0.01
    assert (await state(conn, T2)).remaining == 0


async def test_same_window_keeps_the_lower_remaining_newer_window_replaces(
        conn: asyncpg.Connection) -> None:
    now = (await api_tokens.take(conn, [], "core", 1, 1.0))[0]
    reset = now + timedelta(minutes=30)
    await api_tokens.give_back(conn, Taken(T1, now), "core", remaining=100, limit=5000,
                               reset_at=reset)
    a, b = await take(conn, [T1]), await take(conn, [T1])
    assert isinstance(a, Taken) and isinstance(b, Taken)
    assert (await state(conn, T1)).remaining == 98
    # a's answer was counted before b's request reached the server: 99 by its headers.
    await api_tokens.give_back(conn, a, "core", remaining=99, limit=5000, reset_at=reset)
    assert (await state(conn, T1)).remaining == 98
    # A stale answer (an older window) changes nothing; a newer window replaces the budget.
    await api_tokens.give_back(conn, b, "core", remaining=4000, limit=5000,
                               reset_at=reset - timedelta(hours=1))
    assert (await state(conn, T1)).remaining == 98
    later = reset + timedelta(hours=1)
    await api_tokens.give_back(conn, Taken(T1, now), "core", remaining=4999, limit=5000,
                               reset_at=later)
    s = await state(conn, T1)
    assert (s.remaining, s.reset_at, s.in_flight) == (4999, later, 0)


async def test_a_304_spends_nothing(conn: asyncpg.Connection) -> None:
    now = (await api_tokens.take(conn, [], "core", 1, 1.0))[0]
    reset = now + timedelta(minutes=30)
    await api_tokens.give_back(conn, Taken(T1, now), "core", remaining=50, limit=5000,
                               reset_at=reset)
    t = await take(conn, [T1])
    assert isinstance(t, Taken) and (await state(conn, T1)).remaining == 49
    await api_tokens.give_back(conn, t, "core", remaining=50, limit=5000, reset_at=reset,
                               spent=False)
    assert (await state(conn, T1)).remaining == 50
    t = await take(conn, [T1])  # no headers at all (a 304 without them): given back too
    assert isinstance(t, Taken)
    await api_tokens.give_back(conn, t, "core", spent=False)
    assert (await state(conn, T1)).remaining == 50


async def test_a_pause_skips_the_token_and_says_until_when(conn: asyncpg.Connection) -> None:
    t = await take(conn, [T1])
    assert isinstance(t, Taken)
    await api_tokens.give_back(conn, t, "core", pause=120.0)
    now, got = await api_tokens.take(conn, [T1], "core", 4, 30.0)
    assert isinstance(got, datetime) and 119 < (got - now).total_seconds() <= 120
    assert (await state(conn, T1)).paused_until == got
    await api_tokens.give_back(conn, Taken(T1, now), "core", pause=1.0)  # never shortened
    assert (await state(conn, T1)).paused_until == got
    other = await take(conn)
    assert isinstance(other, Taken) and other.token_id == T2


async def test_leases_expire_on_their_own(conn: asyncpg.Connection) -> None:
    first = await take(conn, [T1], max_inflight=1, lease=0.3)
    assert isinstance(first, Taken)
    now, blocked = await api_tokens.take(conn, [T1], "core", 1, 0.3)
    assert isinstance(blocked, datetime) and blocked > now  # soon: a request ends long before
    deadline = asyncio.get_running_loop().time() + 10
    while not isinstance(await take(conn, [T1], max_inflight=1, lease=0.3), Taken):
        assert asyncio.get_running_loop().time() < deadline, "the lease never expired"
        await asyncio.sleep(0.05)


async def test_racing_takers_never_exceed_the_bound(database_url: str,
                                                    conn: asyncpg.Connection) -> None:
    conns = [await asyncpg.connect(database_url) for _ in range(12)]
    try:
        got = await asyncio.gather(*(take(c, max_inflight=2) for c in conns))
    finally:
        for c in conns:
            await c.close()
    taken = [g for g in got if isinstance(g, Taken)]
    assert len(taken) <= 4
    assert all(s.in_flight <= 2 for s in await api_tokens.states(conn))
    assert sum(s.in_flight for s in await api_tokens.states(conn) if s.resource == "core") \
        == len(taken)


async def test_a_token_locked_this_instant_is_not_waited_for_like_a_paused_one(
        database_url: str, conn: asyncpg.Connection) -> None:
    t = await take(conn, [T1])
    assert isinstance(t, Taken)
    await api_tokens.give_back(conn, t, "core", pause=120.0)
    other = await asyncpg.connect(database_url)
    try:
        async with other.transaction():  # another taker holds T2's row
            await other.execute("SELECT 1 FROM api_token WHERE token_id = $1 AND resource = "
                                "'core' FOR UPDATE", T2)
            now, got = await api_tokens.take(conn, [T1, T2], "core", 4, 30.0)
    finally:
        await other.close()
    assert isinstance(got, datetime) and (got - now).total_seconds() < 1  # not T1's 120 s


async def test_every_token_refused_is_told_apart_from_a_pause(conn: asyncpg.Connection) -> None:
    """A 401 (``refused``) marks the token (limit 0, paused): with every token of a take so
    marked, ``take`` says ``Refused``; one merely paused is waited for; an answer with a limit
    clears the mark."""
    now = (await api_tokens.take(conn, [], "core", 1, 1.0))[0]
    await api_tokens.give_back(conn, Taken(T1, now), "core", pause=3600.0, refused=True)
    got = await take(conn, [T1])
    assert isinstance(got, api_tokens.Refused) and got.until > now
    assert (await state(conn, T1)).limit == 0
    await api_tokens.give_back(conn, Taken(T2, now), "core", pause=60.0)
    assert isinstance(await take(conn), datetime)  # T2 only paused: wait for it
    await api_tokens.give_back(conn, Taken(T1, now), "core", remaining=10, limit=5000,
                               reset_at=now + timedelta(hours=1))
    assert (await state(conn, T1)).limit == 5000
