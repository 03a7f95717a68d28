"""``harvester_acquire`` set-based (migration 0020) against the per-host loop it replaces (0002,
kept here as the reference): the same grants and host rows for random batches, the cluster-wide
cap and delay under concurrent callers, and the migration both ways."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from harvester_ops import migrate
from shared.db import hosts
from tests.integration.test_migrations import run

# 0002's function, as it was (0020's downgrade restores it), under another name: the reference.
_spec = importlib.util.spec_from_file_location(
    "migration_0020", Path(migrate.__file__).resolve().parents[1]
    / "migrations" / "versions" / "0020_host_gate_setbased.py")
assert _spec is not None and _spec.loader is not None
_m0020 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_m0020)
OLD_ACQUIRE = _m0020.DOWNGRADE.replace("CREATE OR REPLACE FUNCTION harvester_acquire(",
                                       "CREATE FUNCTION harvester_acquire_old(")
assert "harvester_acquire_old(" in OLD_ACQUIRE

# A clock the test sets: both functions call clock_timestamp(), found first in this schema.
FIXED_CLOCK = """
CREATE SCHEMA fixed_clock;
CREATE FUNCTION fixed_clock.clock_timestamp() RETURNS timestamptz LANGUAGE sql
    AS $$ SELECT current_setting('harvester_test.now')::timestamptz $$;
"""

NOW = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)
DELAYS = [0.0, 0.0, 0.1, 0.25, 1 / 3, 0.5000004, 1.2]
NAMES = [f"http://h{i:02d}.example" for i in range(30)]
Batch = tuple[datetime, list[str], list[int], list[int], list[float], float, float]


def us(rng: random.Random, seconds: float) -> timedelta:
    return timedelta(microseconds=rng.randint(0, int(seconds * 1e6)))


def random_state(rng: random.Random) -> list[tuple[str, datetime | None, list[datetime], int,
                                                   datetime | None]]:
    """Host rows (some hosts have none yet): next_start (None: -infinity), leases (expired,
    expiring exactly now, live), failures, backoff_until (None, over, running)."""
    rows = []
    for name in NAMES:
        if rng.random() < 0.3:
            continue
        next_start = rng.choice([None, NOW - us(rng, 2), NOW + us(rng, 3), NOW])
        leases = [rng.choice([NOW - us(rng, 5), NOW, NOW + us(rng, 5)])
                  for _ in range(rng.choice([0, 0, 1, 2, 3, 4]))]
        backoff = rng.choice([None, None, NOW - us(rng, 3), NOW + us(rng, 3)])
        rows.append((name, next_start, leases, rng.randint(0, 3), backoff))
    return rows


def random_batches(rng: random.Random) -> list[Batch]:
    """Three batches one after another on the clock, each over distinct hosts (a third of them
    over one host: the function's path for one host is its own)."""
    out, clock = [], NOW
    for _ in range(3):
        names = rng.sample(NAMES, 1 if rng.random() < 0.3 else rng.randint(2, 20))
        out.append((clock, names,
                    [rng.choice([0, 1, 1, 1, 2, 3, 5]) for _ in names],
                    [rng.randint(1, 4) for _ in names],
                    [rng.choice(DELAYS) for _ in names],
                    rng.choice([60.0, 0.5, 1e-6]), rng.choice([0.0, 0.5, 2.0])))
        clock += us(rng, 1.5)
    return out


async def run_chain(conn: asyncpg.Connection, function: str, state: list,
                    batches: list[Batch]) -> tuple[list[list[tuple]], list[tuple]]:
    """The grants of each batch and the host rows after them, from ``state``; rolled back."""
    tr = conn.transaction()
    await tr.start()
    try:
        await conn.execute("DELETE FROM host")
        await conn.executemany("""
            INSERT INTO host (host, next_start, leases, failures, backoff_until)
            VALUES ($1, coalesce($2::timestamptz, '-infinity'), $3, $4, $5)""", state)
        grants = []
        for clock, names, wants, caps, delays, lease, horizon in batches:
            await conn.execute("SELECT set_config('harvester_test.now', $1, true)",
                               clock.isoformat())
            grants.append([tuple(r) for r in await conn.fetch(f"""
                SELECT host, starts::text, tokens::text, next_free::text
                FROM {function}($1, $2, $3, $4, $5, $6) ORDER BY host""",
                names, wants, caps, delays, lease, horizon)])
        rows = [tuple(r) for r in await conn.fetch("""
            SELECT host, next_start::text, leases::text, failures, backoff_until::text
            FROM host ORDER BY host""")]
        return grants, rows
    finally:
        await tr.rollback()


async def test_grants_and_host_rows_are_those_of_the_per_host_loop(
        db: asyncpg.Connection) -> None:
    await db.execute(OLD_ACQUIRE + FIXED_CLOCK)
    await db.execute("SET search_path = fixed_clock, pg_catalog, public")
    rng = random.Random(14)
    granted = 0
    for _ in range(150):
        state, batches = random_state(rng), random_batches(rng)
        old = await run_chain(db, "harvester_acquire_old", state, batches)
        new = await run_chain(db, "harvester_acquire", state, batches)
        assert new == old, (state, batches)
        granted += sum(r[1] != "{}" for g in old[0] for r in g)
    assert granted > 500  # the batches did grant, not only refuse


@pytest.mark.parametrize("others", [0, 3])
async def test_a_host_granted_nothing_with_no_lease_expired_is_not_rewritten(
        db: asyncpg.Connection, others: int) -> None:
    """Alone in its call or with other hosts (granted something), a host at its cap keeps its
    row version."""
    host = "http://a.example"
    _, grants = await hosts.acquire(db, {host: 2}, {host: 2}, {host: 0.0}, 60, 2)
    assert len(grants[0].tokens) == 2
    version = "SELECT xmin::text, ctid::text FROM host WHERE host = $1"
    before = await db.fetchrow(version, host)
    names = [host] + [f"http://o{i}.example" for i in range(others)]
    _, grants = await hosts.acquire(db, dict.fromkeys(names, 1), dict.fromkeys(names, 2),
                                    dict.fromkeys(names, 0.0), 60, 2)
    assert {g.host: len(g.tokens) for g in grants} == {host: 0} | dict.fromkeys(names[1:], 1)
    assert await db.fetchrow(version, host) == before


async def test_a_host_given_twice_in_one_call_is_refused(db: asyncpg.Connection) -> None:
    """Two entries for one host would be granted as two hosts: over its cap."""
    with pytest.raises(asyncpg.RaiseError, match="more than once"):
        await db.fetch("SELECT * FROM harvester_acquire($1, $2, $3, $4, 60, 2)",
                       ["http://a.example", "http://a.example"], [1, 1], [1, 1], [0.0, 0.0])
    assert await db.fetchval("SELECT count(*) FROM host") == 0


async def test_concurrent_callers_keep_every_hosts_cap_and_delay(database_url: str) -> None:
    """Four connections lease the same hosts over and over, giving back about half of their
    slots at once: at no time are more than ``cap`` leases of a host live (a lease lives from
    its start until its token, or until it was given back), and the starts of a host are at
    least its delay apart, counted over all callers."""
    names = [f"http://c{i:02d}.example" for i in range(12)]
    cap, delay, lease = 2, 0.02, 0.3
    conns = [await asyncpg.connect(database_url) for _ in range(4)]
    spans: dict[str, list[tuple[datetime, datetime]]] = {n: [] for n in names}
    try:
        async def churn(conn: asyncpg.Connection, seed: int) -> None:
            rng = random.Random(seed)
            stop = time.monotonic() + 2.5
            while time.monotonic() < stop:
                wants = {n: rng.randint(1, 3) for n in rng.sample(names, rng.randint(1, 12))}
                _, grants = await hosts.acquire(conn, wants, dict.fromkeys(wants, cap),
                                                dict.fromkeys(wants, delay), lease, 0.1)
                back = [(g.host, s, t) for g in grants for s, t in zip(g.starts, g.tokens,
                                                                         strict=True)
                        if rng.random() < 0.5]
                given = {(h, t) for h, _, t in back}
                for g in grants:
                    for s, t in zip(g.starts, g.tokens, strict=True):
                        if (g.host, t) not in given:
                            spans[g.host].append((s, t))
                if back:
                    freed = await conn.fetchval("SELECT clock_timestamp()")  # before the release
                    for h, s, _ in back:
                        spans[h].append((s, min(freed, s + timedelta(seconds=lease))))
                    await hosts.release(conn, [hosts.Release(h, t, used=False)
                                               for h, _, t in back], 0.0, 0.0)

        await asyncio.gather(*(churn(c, i) for i, c in enumerate(conns)))
    finally:
        for c in conns:
            await c.close()
    for name, host_spans in spans.items():
        assert len(host_spans) > 2 * cap, name  # slots were freed and taken again
        starts = sorted(s for s, _ in host_spans)
        assert all(b - a >= timedelta(seconds=delay) for a, b in itertools.pairwise(starts)), name
        for s, _ in host_spans:
            live = sum(1 for a, b in host_spans if a <= s < b)
            assert live <= cap, (name, s)


async def test_0020_keeps_the_leases_both_ways(scratch_dsn: str) -> None:
    """Leases granted by either function count for the other, across upgrade and downgrade."""
    await run(migrate.upgrade, scratch_dsn, "0019")
    conn = await asyncpg.connect(scratch_dsn)
    acquire = "SELECT cardinality(tokens) FROM harvester_acquire($1, $2, '{2}', '{0}', 60, 2)"
    try:
        assert await conn.fetchval(acquire, ["http://a.example"], [1]) == 1
        await run(migrate.upgrade, scratch_dsn, "0020")
        assert await conn.fetchval(acquire, ["http://a.example"], [2]) == 1  # one was held
        assert await conn.fetchval(acquire, ["http://b.example"], [1]) == 1
        await run(migrate.downgrade, scratch_dsn, "0019")
        assert await conn.fetchval(acquire, ["http://a.example"], [1]) == 0  # at its cap
        assert await conn.fetchval(acquire, ["http://b.example"], [2]) == 1
        assert "LOOP" in await conn.fetchval(
            "SELECT prosrc FROM pg_proc WHERE proname = 'harvester_acquire'")
    finally:
        await conn.close()
