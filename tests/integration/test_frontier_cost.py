"""What a claim costs PostgreSQL at many hosts (shared/db/frontier.py ``DueFrontier``, issue 14
part 2): on a real PostgreSQL, a claim over 1,000 capped (host, job) pairs, most hosts at their
cap, reads the published rows once (no per-host rescan: work linear in the pairs, not
quadratic), reads no pending row of a full host, and issues no statement for pairs that cannot
take more. The plan's figures (EXPLAIN ANALYZE) are printed (``-s``), never asserted."""

from __future__ import annotations

import json
import re
from typing import Any

import asyncpg
import pytest

from shared.config import Settings
from shared.db import frontier as frontier_module
from shared.db.frontier import DueFrontier
from shared.db.pages import upsert_urls
from tests.integration.test_frontier_fair import UNTIMED, claim, keep_scan, new_job

HOSTS = 1000


class Recorder:
    """The real connection, recording the statements a claim sends; the pair scan and the
    claim are also explained (ANALYZE, in a savepoint rolled back) before they run."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.sent: list[str] = []
        self.plans: list[dict[str, Any]] = []

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        self.sent.append(sql)
        if sql is frontier_module._CLAIM or sql is frontier_module._PAIRS:
            tr = self.conn.transaction()
            await tr.start()
            try:
                raw = await self.conn.fetchval(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, *args)
                self.plans.append(json.loads(raw)[0])
            finally:
                await tr.rollback()
        return list(await self.conn.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        self.sent.append(sql)
        return await self.conn.fetchrow(sql, *args)

    def transaction(self) -> Any:
        return self.conn.transaction()


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of the plan; a partition's table and index named as its parent's
    (``job_visit_r0`` as ``job_visit``, ``job_pending_frontier_r0`` as
    ``job_pending_frontier``: migration 0024's names)."""
    node = {k: _PARTITION.sub("", v) if k in ("Relation Name", "Index Name") else v
            for k, v in plan.items() if k != "Plans"}
    out = [node]
    for sub in plan.get("Plans", []):
        out += nodes(sub)
    return out


_PARTITION = re.compile(r"_r[0-9]+(?=_pkey$|$)")


def touched(plan: dict[str, Any]) -> float:
    """Rows every node produced or filtered out, over all its loops."""
    return sum((n.get("Actual Rows", 0) + n.get("Rows Removed by Filter", 0)
                + n.get("Rows Removed by Join Filter", 0)) * n.get("Actual Loops", 0)
               for n in nodes(plan["Plan"]))


async def busy_hosts(db: asyncpg.Connection) -> tuple[DueFrontier, int, int]:
    """One job of 3 pages on each of 1,000 hosts capped at 2, every host filled (2 in flight),
    then one visit completed on each of 100 of them: (a new frontier, published, hosts with
    room)."""
    frontier = DueFrontier(Settings(**UNTIMED))
    assert frontier.cap("http://h0.example") == 2
    await new_job(db, [f"http://h{i}.example/{j}" for i in range(HOSTS) for j in range(3)])
    while await claim(frontier, db, limit=1000):
        pass
    assert await db.fetchval("SELECT count(*) FROM job_pending WHERE published_on IS NOT NULL") \
        == 2 * HOSTS
    await db.execute("""
        DELETE FROM job_pending p USING (
            SELECT DISTINCT ON (host) job_id, url_id FROM job_pending
            WHERE published_on IS NOT NULL ORDER BY host, url_id LIMIT 100) d
        WHERE p.job_id = d.job_id AND p.url_id = d.url_id""")
    await db.execute("ANALYZE job_pending")
    return DueFrontier(Settings(**UNTIMED)), 2 * HOSTS - 100, 100  # a feeder that scans the pairs first


async def test_a_claim_over_1000_capped_hosts_reads_the_published_rows_once(
        db: asyncpg.Connection) -> None:
    frontier, published, room = await busy_hosts(db)
    rec = Recorder(db)
    async with db.transaction():
        got = await frontier.claim(rec, 1000)  # type: ignore[arg-type]
    assert len(got) == room  # exactly the room the completions made
    pairs, plan = rec.plans
    print(f"\npairs: {pairs['Execution Time']:.1f} ms, {touched(pairs):.0f} rows touched; "
          f"claim over {HOSTS} capped pairs, {published} published, {room} with room: "
          f"{plan['Execution Time']:.1f} ms, {touched(plan):.0f} rows touched, "
          f"shared hits {plan['Plan'].get('Shared Hit Blocks')}")
    # linear: each published row and each pair a few times, not every pair for every host
    assert touched(plan) < 20 * (published + HOSTS), touched(plan)
    lateral = [n for n in nodes(plan["Plan"])
               if n.get("Index Name") == "job_pending_frontier"]
    assert lateral, "the per-pair scan of job_pending_frontier"
    # the pending rows of full hosts are never read: only the pairs with room are scanned
    assert all(n["Actual Loops"] <= room for n in lateral), lateral


async def test_no_refill_of_pairs_whose_host_cap_is_the_share(db: asyncpg.Connection) -> None:
    # 10 live hosts capped at 2 among 990 pairs with nothing due: each live pair takes its
    # share (2 = its cap), the claim falls short of its limit, but a refill could only find
    # the hosts at their cap again: no third statement.
    frontier = DueFrontier(Settings(**UNTIMED))
    later, _ = await new_job(db, [f"http://later{i}.example/" for i in range(990)])
    await db.execute("UPDATE job_pending SET due = now() + interval '1 hour' WHERE job_id = $1",
                     later)
    live, _ = await new_job(db, [f"http://live{i}.example/{j}" for i in range(10)
                                 for j in range(5)])
    rec = Recorder(db)
    async with db.transaction():
        got = await frontier.claim(rec, 1000)  # type: ignore[arg-type]
    assert len(got) == 20 and {k[0] for k in got} == {live}
    assert rec.sent.count(frontier_module._CLAIM) == 1


async def test_a_refill_still_serves_hosts_whose_cap_exceeds_the_share(
        db: asyncpg.Connection) -> None:
    # cap 10 (2 + 4 s of starts at 0.5 s), share 2: the refill fills the live hosts' room
    frontier = DueFrontier(Settings(host_lookahead=4, politeness_horizon=5))
    later, _ = await new_job(db, [f"http://later{i}.example/" for i in range(990)])
    await db.execute("UPDATE job_pending SET due = now() + interval '1 hour' WHERE job_id = $1",
                     later)
    live, _ = await new_job(db, [f"http://live{i}.example/{j}" for i in range(10)
                                 for j in range(20)])
    async with db.transaction():
        got = await frontier.claim(db, 1000)
    assert len(got) == 10 * 10 and {k[0] for k in got} == {live}


async def complete_one_on(db: asyncpg.Connection, hosts: int) -> None:
    """One published visit completes on each of ``hosts`` hosts."""
    await db.execute("""
        DELETE FROM job_pending p USING (
            SELECT DISTINCT ON (host) job_id, url_id FROM job_pending
            WHERE published_on IS NOT NULL ORDER BY host DESC, url_id LIMIT $1) d
        WHERE p.job_id = d.job_id AND p.url_id = d.url_id""", hosts)


async def test_claims_before_the_scan_spacing_reuse_the_pair_scan(
        db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    # a short claim (hosts at their cap) scans again only once SCAN_SPACING times the last
    # scan's cost has passed (PAIRS_TTL at most): here it has not
    keep_scan(monkeypatch)
    frontier, _, _ = await busy_hosts(db)
    first = Recorder(db)
    async with db.transaction():
        assert len(await frontier.claim(first, 1000)) == 100  # type: ignore[arg-type]
    assert frontier_module._PAIRS in first.sent
    await complete_one_on(db, 10)
    again = Recorder(db)
    async with db.transaction():
        assert len(await frontier.claim(again, 1000)) == 10  # type: ignore[arg-type]
    assert frontier_module._PAIRS not in again.sent  # the 1,000 pairs of a moment ago


async def test_a_new_job_is_claimed_at_the_next_claim_whatever_the_pairs_scanned(
        db: asyncpg.Connection) -> None:
    frontier, _, _ = await busy_hosts(db)
    await claim(frontier, db, limit=1000)
    await complete_one_on(db, 10)
    small, ids = await new_job(db, [f"http://small{i}.example/" for i in range(5)])
    got = await claim(frontier, db, limit=1000)
    assert {k for k in got if k[0] == small} == {(small, i) for i in ids}
    assert len(got) == 10 + 5


async def new_host_row(db: asyncpg.Connection, job: int, origin: int) -> int:
    """A pending visit of ``job`` on a host no scan has seen (``http://two.example/``, a link
    of ``origin``'s page, level 1): its URL id."""
    child = (await upsert_urls(db, {"http://two.example/": ""}))["http://two.example/"]
    await db.execute("""
        INSERT INTO job_pending (job_id, url_id, origin_id, host, rank)
        VALUES ($1, $2, $3, 'http://two.example',
                harvester_rank('bfs', 1, 0, nextval('job_pending_seq')))""", job, child, origin)
    return int(child)


async def test_a_new_host_of_a_running_job_is_claimed_when_its_known_pairs_run_dry(
        db: asyncpg.Connection) -> None:
    # the default job's shape: a page on one host, its child on another
    frontier = DueFrontier(Settings())
    job, (root,) = await new_job(db, ["http://one.example/"])
    assert await claim(frontier, db) == [(job, root)]
    async with db.transaction():
        await db.execute("DELETE FROM job_pending WHERE job_id = $1 AND url_id = $2", job, root)
        child = await new_host_row(db, job, root)
    assert await claim(frontier, db) == [(job, child)]


async def test_a_new_host_is_claimed_by_a_short_claim_once_the_scan_spacing_passed(
        db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    # A crawl's start: the known host is at its cap with rows still due (not dry), and a page
    # brought a link to a new host. Before the spacing the claim is served by the scan it has
    # (nothing to claim); once it has passed, a short claim scans again and takes the new host.
    frontier = DueFrontier(Settings(**UNTIMED))
    job, ids = await new_job(db, [f"http://one.example/{i}" for i in range(5)])
    assert len(await claim(frontier, db, limit=10)) == 2  # its cap: 3 rows still due
    child = await new_host_row(db, job, ids[0])
    keep_scan(monkeypatch)
    assert await claim(frontier, db, limit=10) == []
    monkeypatch.setattr(frontier_module, "SCAN_SPACING", 0)
    assert await claim(frontier, db, limit=10) == [(job, child)]


class Clock:
    """``time`` for the frontier: both clocks read ``now``, which the test sets."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def perf_counter(self) -> float:
        return self.now


class SlowScan(Recorder):
    """The real connection; each scan of the pairs takes ``cost`` seconds on ``clock``."""

    def __init__(self, conn: asyncpg.Connection, clock: Clock, cost: float) -> None:
        super().__init__(conn)
        self.clock, self.cost = clock, cost

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        if sql is frontier_module._PAIRS:
            self.clock.now += self.cost
            return list(await self.conn.fetch(sql, *args))
        return await super().fetch(sql, *args)


async def test_a_short_claim_scans_again_once_40_times_the_scan_cost_has_passed(
        db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    # the rule in seconds: a scan that cost 10 ms serves short claims for 0.4 s, then the next
    # short claim scans again (and takes the new host)
    clock = Clock()
    monkeypatch.setattr(frontier_module, "time", clock)
    conn = SlowScan(db, clock, 0.010)
    frontier = DueFrontier(Settings(**UNTIMED))
    job, ids = await new_job(db, [f"http://one.example/{i}" for i in range(5)])

    async def claim_at(t: float) -> list[tuple[int, int]]:
        clock.now = t
        async with db.transaction():
            return await frontier.claim(conn, 10)  # type: ignore[arg-type]

    assert len(await claim_at(0.0)) == 2  # scanned at 0, for 10 ms; one.example at its cap
    child = await new_host_row(db, job, ids[0])
    assert await claim_at(0.39) == []  # 40 x 10 ms not passed: the scan of 0 serves it
    assert await claim_at(0.41) == [(job, child)]  # passed: scanned again


async def test_a_short_claim_of_one_uncapped_pair_with_rows_is_not_dry(
        db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    # One job on one uncapped host (_CLAIM_ONE): a claim that takes fewer rows than asked, but
    # some, did not run dry, so the pairs of a moment ago serve it: no rescan, one claim.
    keep_scan(monkeypatch)
    frontier = DueFrontier(Settings(host_delay=0))
    job, (root,) = await new_job(db, ["http://one.example/"])
    assert await claim(frontier, db, limit=10) == [(job, root)]
    more = await upsert_urls(db, {f"http://one.example/{i}": "" for i in range(3)})
    await db.execute("""
        INSERT INTO job_pending (job_id, url_id, origin_id, host, rank)
        SELECT $1, u, $2, 'http://one.example',
               harvester_rank('bfs', 1, 0, nextval('job_pending_seq'))
        FROM unnest($3::bigint[]) AS u""", job, root, list(more.values()))
    again = Recorder(db)
    async with db.transaction():
        got = await frontier.claim(again, 10)  # type: ignore[arg-type]
    assert sorted(got) == sorted((job, u) for u in more.values())
    assert frontier_module._PAIRS not in again.sent
    assert again.sent.count(frontier_module._CLAIM_ONE) == 1


async def test_a_planned_claim_reads_visits_and_urls_by_primary_key(
        db: asyncpg.Connection) -> None:
    # The planning claim (claim_planned) joins its rows to job_visit and url by primary key,
    # one probe per claimed row, even once the tables are analyzed and big enough that a hash
    # join over a sequential scan looks cheaper to the planner; one job on one host (the
    # one-pair claim) and one job on 50 hosts (the fair claim).
    one, _ = await new_job(db, [f"http://one.example/{i}" for i in range(20000)])
    many, _ = await new_job(db, [f"http://many{i % 50}.example/{i}" for i in range(20000)])
    await db.execute("ANALYZE")
    hosts, jobs, weights, caps, delays, served = frontier_module._Batch(  # as _claim sends them
        [f"http://many{i}.example" for i in range(50)], [many] * 50, [1.0] * 50, [None] * 50,
        [None] * 50, [0.0] * 50, []).columns()
    for sql, args in ((frontier_module._CLAIM_ONE_PLANNED,
                       ("http://one.example", one, 1000, 3600.0, [one])),
                      (frontier_module._CLAIM_PLANNED,
                       (hosts, jobs, weights, 40, caps, 1000, served, 2000, delays, 0.1, 3600.0,
                        [many]))):
        tr = db.transaction()
        await tr.start()
        try:
            raw = await db.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
        finally:
            await tr.rollback()
        plan = json.loads(raw)[0]
        # The scans that ran: a partition pruned at run time (another job's) never does.
        scans = {(n.get("Relation Name"), n["Node Type"], n.get("Index Name"))
                 for n in nodes(plan["Plan"])
                 if n.get("Relation Name") in ("job_visit", "url") and n["Actual Loops"]}
        assert scans == {("job_visit", "Index Scan", "job_visit_pkey"),
                         ("url", "Index Scan", "url_pkey")}, scans
        probes = [n for n in nodes(plan["Plan"]) if n.get("Index Name") == "url_pkey"]
        assert [n["Actual Loops"] for n in probes] == [1000]


async def test_a_short_claim_over_1000_hosts_with_room_reads_a_few_pairs(
        db: asyncpg.Connection) -> None:
    """Every one of 1,000 capped hosts has room: a claim of 10 reads the pending rows of
    LIVE_PER_ROW x 10 pairs (LIVE_MIN at least), the first in the feeder's order, not of all
    1,000 (locking and sorting 2,000 candidate rows for 10)."""
    frontier = DueFrontier(Settings())
    await new_job(db, [f"http://h{i}.example/{j}" for i in range(HOSTS) for j in range(3)])
    await db.execute("ANALYZE job_pending")
    rec = Recorder(db)
    async with db.transaction():
        got = await frontier.claim(rec, 10)  # type: ignore[arg-type]
    assert len(got) == 10
    _, plan = rec.plans
    lateral = [n for n in nodes(plan["Plan"]) if n.get("Index Name") == "job_pending_frontier"]
    read = max(frontier_module.LIVE_PER_ROW * 10, frontier_module.LIVE_MIN)
    assert lateral and all(n["Actual Loops"] == read for n in lateral), lateral


async def test_a_frontier_grown_from_empty_is_claimed_by_index_not_by_a_stale_plan(
        database_url: str) -> None:
    """A crawl's first seconds: the frontier's partition was analyzed empty and grows to
    thousands of rows before autovacuum analyzes it again. A plan cached while it was nearly
    empty (PostgreSQL's generic plan after five runs of a prepared statement: sequential scans
    everywhere) read the whole partition per pair: a pair scan took 4 s on the 1,000-host
    bench, nothing was published meanwhile. The feeder's connections (``FEEDER_SETTINGS``, as
    the foreman opens them) plan each claim for its parameters and the table's size now: the
    pair scan and the feeder's (planned) claim run on the frontier's index, as
    ``auto_explain`` shows."""
    conn = await asyncpg.connect(database_url, server_settings=frontier_module.FEEDER_SETTINGS)
    try:
        await conn.execute("ALTER TABLE job_pending_r0 SET (autovacuum_enabled = off)")
        await conn.execute("ANALYZE job_pending")  # empty
        await new_job(conn, [f"http://s{i}.example/" for i in range(5)])
        for _ in range(8):  # past the five custom plans before a generic one
            async with conn.transaction():
                await DueFrontier(Settings(**UNTIMED)).claim_planned(conn, 10,
                                                                     cache_max_age=3600.0)
            await conn.execute("UPDATE job_pending SET published_on = NULL")
        await new_job(conn, [f"http://h{i}.example/{j}" for i in range(HOSTS) for j in range(12)])
        plans: list[dict[str, Any]] = []
        conn.add_log_listener(
            lambda _, msg: plans.append(json.loads(msg.message.split("plan:", 1)[1])))
        await conn.execute("""LOAD 'auto_explain';
                              SET auto_explain.log_min_duration = 0;
                              SET auto_explain.log_analyze = on;
                              SET auto_explain.log_format = 'json';
                              SET auto_explain.log_level = 'notice'""")
        async with conn.transaction():
            got = await DueFrontier(Settings(**UNTIMED)).claim_planned(conn, 64,
                                                                       cache_max_age=3600.0)
        assert len(got) == 64
    finally:
        await conn.close()
    ran = [p for p in plans if p["Query Text"].strip().startswith(("WITH RECURSIVE l", "WITH pr"))]
    assert len(ran) == 2, [p["Query Text"][:40] for p in plans]
    for plan in ran:  # no pass over the whole partition per pair (one, grouped, may be)
        loops = [n["Actual Loops"] for n in nodes(plan["Plan"])
                 if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "job_pending"]
        assert all(n <= 1 for n in loops), (plan["Query Text"][:40], loops)


async def test_the_claims_columns_reach_postgresql_as_the_arrays_they_are(
        db: asyncpg.Connection) -> None:
    """The claim sends its pairs' columns as array literals (``_Batch.columns``, one string
    each instead of asyncpg's encoding element by element): PostgreSQL reads each back as the
    array asyncpg would have sent, whatever the text (quotes, backslashes, commas, braces, the
    word NULL, spaces) and whichever float (exact to the bit, a subnormal one too)."""
    hosts = ["http://a.example", 'http://q"uote', "http://back\\slash", "http://c,o{m}ma",
             "NULL", "http://sp ace", "", "http://ü.example:8080"]
    floats = [0.0, 1.0, 0.1, 2.0 ** 10, 2.0 ** -10, 1 / 3, 123456.789e200, -0.5, 5e-324]
    batch = frontier_module._Batch(
        hosts, list(range(len(hosts))), floats[:len(hosts)], [2, None, 1, 64, None, 3, 2, 1],
        [0.5, None, 0.05, 1.5, None, 0.0, 10.0, 0.25], floats[1:len(hosts) + 1], [])
    cols = batch.columns()
    types = ("text", "bigint", "float8", "int", "float8", "float8")
    values = (batch.hosts, batch.job_ids, batch.weights, batch.caps, batch.delays,
              batch.served)
    for literal, pg_type, expected in zip(cols, types, values, strict=True):
        got = await db.fetchval(f"SELECT $1::text::{pg_type}[]", literal)
        sent = await db.fetchval(f"SELECT $1::{pg_type}[]", expected)  # asyncpg's encoding
        assert got == sent, pg_type
    # made once per scan: the very strings at the next claim
    assert all(a is b for a, b in zip(batch.columns(), cols, strict=True))
    batch.served[0] = 7.5  # a pair sharing its host: its service is read anew every claim
    batch.shared.append(0)
    assert batch.columns()[5] != cols[5]
    assert await db.fetchval("SELECT ($1::text::float8[])[1]", batch.columns()[5]) == 7.5
