"""The fair, host-aware claim (shared/db/frontier.py ``DueFrontier``, issue 14) on a real
PostgreSQL: queue orders (SZ-T1: fifo, lifo, priority, bfs) by rank; a capped host's room
shared between jobs, weighted by ``2 ** priority``; nothing published for a host at its cap,
backing off or waiting for its robots.txt; one feeder claims at a time; SQL's
``harvester_host`` is ``shared.urls.host_key``."""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.config import Settings
from shared.db import frontier as frontier_module
from shared.db import hosts, jobs
from shared.db.frontier import FEED_LOCK, DueFrontier
from shared.db.pages import upsert_urls
from shared.jobspec import stored_spec
from shared.scope import Scope
from shared.urls import host_key

H = "http://h.example"
# The cap alone bounds a host's room: these tests lease no slot through the gate, so no host's
# next start moves; the time gate (host_start_window) has tests of its own.
UNTIMED: dict[str, Any] = {"host_start_window": 3600.0}
Key = tuple[int, int]


def keep_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pairs scanned serve every later claim of the test but those that rescan for a new
    job or a dry pair (no rescan by time: ``SCAN_SPACING``, ``PAIRS_TTL``), so a test of what
    one scan serves does not depend on how fast the machine runs it."""
    monkeypatch.setattr(frontier_module, "SCAN_SPACING", 1e9)
    monkeypatch.setattr(frontier_module, "PAIRS_TTL", 1e9)


async def new_job(db: asyncpg.Connection, urls: list[str], **spec: Any) -> tuple[int, list[int]]:
    async with db.transaction():
        return await jobs.create_job(db, urls, 2, False,
                                     spec={**stored_spec(2, False, False, Scope(), None), **spec})


async def claim(frontier: DueFrontier, db: asyncpg.Connection, limit: int = 100) -> list[Key]:
    async with db.transaction():
        return await frontier.claim(db, limit)


async def claim_urls(frontier: DueFrontier, db: asyncpg.Connection, n: int) -> list[str]:
    """``n`` claims of one visit each: their URLs."""
    got = []
    for _ in range(n):
        (key,) = await claim(frontier, db, limit=1)
        got.append(await db.fetchval("SELECT url FROM url WHERE id = $1", key[1]))
    return got


async def test_fifo_lifo_and_priority_orders(db: asyncpg.Connection) -> None:
    frontier = DueFrontier(Settings(host_delay=0))
    a, b, c = f"{H}/a", f"{H}/b", f"{H}/c"
    await new_job(db, [a, b, c], order="fifo")
    assert await claim_urls(frontier, db, 3) == [a, b, c]
    await db.execute("DELETE FROM job_pending")
    await new_job(db, [a, b, c], order="lifo")
    assert await claim_urls(frontier, db, 3) == [c, b, a]
    await db.execute("DELETE FROM job_pending")
    await new_job(db, [a, b, c], order="priority",
                  priorities=[{"pattern": "/a$", "priority": 1}, {"pattern": "/[bc]$", "priority": 5}])
    assert await claim_urls(frontier, db, 3) == [b, c, a]  # higher first, ties FIFO


async def test_bfs_claims_a_level_before_the_next_whatever_the_insertion_order(
        db: asyncpg.Connection) -> None:
    frontier = DueFrontier(Settings(host_delay=0))
    root, deep, near = f"{H}/", f"{H}/deep", f"{H}/near"
    job, (root_id,) = await new_job(db, [root])
    ids = await upsert_urls(db, {deep: "", near: ""})
    for url, level in ((deep, 2), (near, 1)):  # the deeper one queued first
        await db.execute("""
            INSERT INTO job_pending (job_id, url_id, origin_id, host, rank)
            VALUES ($1, $2, $3, $4, harvester_rank('bfs', $5, 0, nextval('job_pending_seq')))""",
            job, ids[url], root_id, H, level)
    assert await claim_urls(frontier, db, 3) == [root, near, deep]


async def test_a_capped_host_is_shared_evenly_between_two_jobs(db: asyncpg.Connection) -> None:
    assert await picks(db, 0, 0) == {"big": 25, "small": 25}


async def test_a_job_with_priority_2_gets_four_times_the_share_of_one_with_0(
        db: asyncpg.Connection) -> None:
    got = await picks(db, 2, 0)
    assert got["big"] + got["small"] == 50
    assert 4 * got["small"] - 4 <= got["big"] <= 4 * got["small"] + 4, got  # 4:1 (40:10)


async def picks(db: asyncpg.Connection, big: int, small: int) -> dict[str, int]:
    """Two jobs of 100 visits on one host capped at 10 (2 + 4 s / 0.5 s), priorities ``big``
    and ``small``: the host filled, then 50 rounds of one visit completing (the oldest in
    flight) and a claim. Which job each of the 50 claimed visits belonged to."""
    frontier = DueFrontier(Settings(host_lookahead=4, politeness_horizon=5, **UNTIMED))
    assert frontier.cap(H) == 10
    name = {(await new_job(db, [f"{H}/big/{i}" for i in range(100)], priority=big))[0]: "big"}
    name[(await new_job(db, [f"{H}/small/{i}" for i in range(100)], priority=small))[0]] = "small"
    flight: deque[Key] = deque(await claim(frontier, db))
    assert len(flight) == 10
    assert await claim(frontier, db) == []  # the host is at its cap
    got: Counter[str] = Counter()
    for _ in range(50):
        done = flight.popleft()
        await db.execute("DELETE FROM job_pending WHERE job_id = $1 AND url_id = $2", *done)
        claimed = await claim(frontier, db)
        assert len(claimed) == 1  # exactly the room one completion made
        flight.extend(claimed)
        got[name[claimed[0][0]]] += 1
    return dict(got)


async def test_a_new_job_gets_the_next_room_on_a_busy_host(db: asyncpg.Connection) -> None:
    # The scenario in small: a big job fills its host; a 1-page job on that host
    # gets the first slot that frees, ahead of the big job's next thousand.
    frontier = DueFrontier(Settings(**UNTIMED))
    big, _ = await new_job(db, [f"{H}/big/{i}" for i in range(1000)])
    flight = await claim(frontier, db, limit=1000)
    assert frontier.cap(H) == 2  # the host's concurrency
    assert len(flight) == 2 and {k[0] for k in flight} == {big}
    small, (page,) = await new_job(db, [f"{H}/small"])
    assert await claim(frontier, db) == []  # no room yet: nothing published to wait
    await db.execute("DELETE FROM job_pending WHERE job_id = $1 AND url_id = $2", *flight[0])
    assert await claim(frontier, db) == [(small, page)]


async def test_a_new_job_takes_every_freed_slot_until_it_has_caught_up(
        db: asyncpg.Connection) -> None:
    # A big job has been crawling two hosts (capped at 2) for a while; a small job of 5 pages
    # on each arrives. Ordered by in flight, each job would keep one of a host's two slots and
    # the small job's pages would go one at a time; ordered by recent service, the small job,
    # served least there, takes every slot that frees until it is done.
    frontier = DueFrontier(Settings(**UNTIMED))
    hosts = ["http://a.example", "http://b.example"]
    await new_job(db, [f"{h}/big/{i}" for h in hosts for i in range(200)])
    flight: deque[Key] = deque(await claim(frontier, db, limit=1000))
    assert len(flight) == 4

    async def turn() -> list[Key]:
        """The oldest visit in flight completes; the next claim."""
        done = flight.popleft()
        await db.execute("DELETE FROM job_pending WHERE job_id = $1 AND url_id = $2", *done)
        claimed = await claim(frontier, db)
        assert len(claimed) == 1  # exactly the room one completion made
        flight.extend(claimed)
        return claimed

    for _ in range(40):  # the big job's history: 10 visits per host slot
        await turn()
    small, _ = await new_job(db, [f"{h}/small/{i}" for h in hosts for i in range(5)])
    grants: list[int] = []
    both = False  # the small job held both slots of a host at once
    while await db.fetchval("SELECT count(*) FROM job_pending WHERE job_id = $1 AND "
                            "published_on IS NULL", small):
        grants += [k[0] for k in await turn()]
        for h in hosts:
            held = await db.fetchval("""
                SELECT count(*) FROM job_pending
                WHERE job_id = $1 AND host = $2 AND published_on IS NOT NULL""", small, h)
            both = both or held == 2
    assert both
    assert grants.count(small) == 10
    assert grants.count(small) > len(grants) / 2, grants  # more than half: not one slot of two


async def test_a_short_limit_goes_to_one_visit_per_capped_host_before_a_second(
        db: asyncpg.Connection) -> None:
    # 10 hosts capped at 2 with room, a limit of 10 (the feed-ahead budget binding): one visit
    # on each host, not both slots of 5 (a host's second visit would wait its delay in the
    # gate, holding a worker's slot).
    frontier = DueFrontier()
    await new_job(db, [f"http://h{i}.example/{j}" for i in range(10) for j in range(5)],
                  order="fifo")
    got = await claim(frontier, db, limit=10)
    hosts = await db.fetch("""
        SELECT DISTINCT host FROM job_pending WHERE published_on IS NOT NULL""")
    assert len(got) == 10 and len(hosts) == 10


async def test_nothing_is_published_for_a_host_backing_off_or_waiting_for_robots(
        db: asyncpg.Connection) -> None:
    frontier = DueFrontier(Settings(**UNTIMED))
    other = "http://other.example"
    job, _ = await new_job(db, [f"{H}/a", f"{other}/a"])
    await db.execute("""
        INSERT INTO host (host, backoff_until) VALUES ($1, now() + interval '1 minute');
        INSERT INTO host (host, robots_fetching_until) VALUES ($2, now() + interval '1 minute')
        """.replace("$1", f"'{H}'").replace("$2", f"'{other}'"))
    assert await claim(frontier, db) == []
    await db.execute("UPDATE host SET backoff_until = now() - interval '1 second'")
    assert [k[0] for k in await claim(frontier, db)] == [job]  # H's back-off is over
    await db.execute("UPDATE host SET robots_failures = 3 WHERE host = $1", other)
    # its robots.txt failed (retried later, or given up): the gate defers or refuses the visit
    assert [k[0] for k in await claim(frontier, db)] == [job]


async def test_an_uncapped_host_takes_the_whole_limit_in_rank_order(
        db: asyncpg.Connection) -> None:
    frontier = DueFrontier(Settings(host_delay=0))
    job, ids = await new_job(db, [f"{H}/{i}" for i in range(50)], order="lifo")
    assert await claim(frontier, db, limit=30) == [(job, i) for i in reversed(ids[20:])]
    assert await claim(frontier, db, limit=30) == [(job, i) for i in reversed(ids[:20])]


async def test_pairs_with_nothing_due_or_backing_off_leave_their_share_to_the_live_one(
        db: asyncpg.Connection) -> None:
    # 300 (host, job) pairs whose rows are all deferred, 100 backing off, one live pair:
    # the claim still fills its limit from the live pair (review R1 #1).
    frontier = DueFrontier(Settings(host_delay=0))
    later, _ = await new_job(db, [f"http://later{i}.example/" for i in range(300)])
    await db.execute("UPDATE job_pending SET due = now() + interval '1 hour' WHERE job_id = $1",
                     later)
    waiting = [f"http://wait{i}.example" for i in range(100)]
    await new_job(db, [f"{h}/" for h in waiting])
    await db.execute("""
        INSERT INTO host (host, backoff_until)
        SELECT h, now() + interval '1 minute' FROM unnest($1::text[]) h""", waiting)
    live, ids = await new_job(db, [f"{H}/{i}" for i in range(150)], order="fifo")
    assert await claim(frontier, db, limit=100) == [(live, i) for i in ids[:100]]
    assert await claim(frontier, db, limit=100) == [(live, i) for i in ids[100:]]


def test_the_cap_is_the_concurrency_and_the_lookahead_within_the_horizon() -> None:
    def cap(**kw: Any) -> int | None:
        return DueFrontier(Settings(**kw)).cap(H)
    assert cap() == 2
    assert cap(host_lookahead=1) == 2 + 2  # 1 s of starts at 0.5 s
    assert cap(host_lookahead=4) == 2 + 4  # no more than the 2 s horizon holds
    assert cap(host_delay=30, host_concurrency=1, host_lookahead=1) == 1 + 0
    assert cap(host_delay=0) is None  # no delay: only the gate's concurrency
    assert DueFrontier().cap("") is None  # a row written without its host


async def test_one_feeder_claims_at_a_time(db: asyncpg.Connection, database_url: str) -> None:
    frontier = DueFrontier()
    job, ids = await new_job(db, [f"{H}/a"])
    other = await asyncpg.connect(database_url)
    try:
        async with other.transaction():
            assert await other.fetchval("SELECT pg_try_advisory_xact_lock($1)", FEED_LOCK)
            assert await claim(frontier, db) == []  # another feeder is claiming
        assert await claim(frontier, db) == [(job, ids[0])]
    finally:
        await other.close()


async def test_pairs_beyond_feed_pairs_are_served_in_turns(db: asyncpg.Connection) -> None:
    frontier = DueFrontier(Settings(feed_pairs=2, host_delay=0))
    urls = [f"http://h{i}.example/" for i in range(5)]
    job, ids = await new_job(db, urls)
    seen = set()
    for _ in range(3):
        seen.update(await claim(frontier, db))
    assert seen == {(job, i) for i in ids}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scheme=st.sampled_from(["http", "https"]),
       user=st.sampled_from(["", "u@", "u:p@", "a@b@"]),
       host=st.sampled_from(["h.example", "[::1]", "127.0.0.1", "xn--bcher-kva.example"]),
       port=st.sampled_from(["", ":80", ":8080"]),
       rest=st.sampled_from(["", "/", "/a/b?q=1", "?x=@y", "#f", "/p@q"]))
async def test_sql_harvester_host_is_host_key(db: asyncpg.Connection, scheme: str, user: str,
                                              host: str, port: str, rest: str) -> None:
    url = f"{scheme}://{user}{host}{port}{rest}"
    assert await db.fetchval("SELECT harvester_host($1)", url) == host_key(url)


async def test_capped_hosts_with_the_longest_backlog_go_first(db: asyncpg.Connection) -> None:
    """Longest work first: host i of 20 capped hosts has i + 1 pending visits, the small
    hosts' visits found first (lowest rank). A claim of 5 takes one visit from each of the 5
    hosts with the most left, not the 5 first found: those hosts would otherwise be crawled
    alone at their delay at the end."""
    frontier = DueFrontier(Settings())
    assert frontier.cap("http://b0.example") == 2
    await new_job(db, [f"http://b{i}.example/{j}" for i in range(20) for j in range(i + 1)])
    got = await claim(frontier, db, limit=5)
    hosts = await db.fetch("SELECT host FROM job_pending WHERE url_id = ANY($1::bigint[])",
                           [u for _, u in got])
    assert sorted(r["host"] for r in hosts) == [f"http://b{i}.example" for i in range(15, 20)]


async def test_capped_hosts_go_before_uncapped_ones(db: asyncpg.Connection) -> None:
    """Within a job a politeness-bound host's turn is not left unused while the queue is fed
    from a host that could go faster: a short claim takes the capped hosts' visits first, and
    the uncapped host's by rank after them."""
    fast = "fast.example"
    frontier = DueFrontier(Settings(host_limits={fast: {"delay": 0}}))
    assert frontier.cap(f"http://{fast}") is None
    await new_job(db, [f"http://{fast}/{j}" for j in range(10)]
                  + [f"http://slow{i}.example/" for i in range(3)])
    got = await claim(frontier, db, limit=5)
    urls = [await db.fetchval("SELECT url FROM url WHERE id = $1", u) for _, u in got]
    assert sorted(urls[:3]) == [f"http://slow{i}.example/" for i in range(3)]
    assert urls[3:] == [f"http://{fast}/0", f"http://{fast}/1"]


async def test_pairs_with_nothing_due_do_not_take_the_places_of_pairs_with_work(
        db: asyncpg.Connection) -> None:
    """30 capped hosts whose visits are all deferred (a Crawl-delay, a rate limit), found
    first and with the most left, and 5 with a visit due: a claim of 5 reads only its first
    16 pairs with room, and those are the 5 with work, not 16 with nothing due (which would
    starve the job's other hosts as long as they stay deferred)."""
    frontier = DueFrontier(Settings())
    await new_job(db, [f"http://late{i}.example/{j}" for i in range(30) for j in range(5)]
                  + [f"http://now{i}.example/" for i in range(5)])
    await db.execute("UPDATE job_pending SET due = now() + interval '1 hour' "
                     "WHERE host LIKE 'http://late%'")
    got = await claim(frontier, db, limit=5)
    hosts = await db.fetch("SELECT host FROM job_pending WHERE url_id = ANY($1::bigint[])",
                           [u for _, u in got])
    assert sorted(r["host"] for r in hosts) == [f"http://now{i}.example" for i in range(5)]


async def test_a_capped_host_has_only_the_starts_due_within_the_window_published(
        db: asyncpg.Connection) -> None:
    """A host of 2 slots and 30 s between starts (long enough that no step here depends on
    how fast the statements run): one visit published, not both slots' (a second would wait
    its delay in the gate, holding a worker's slot); none while the one published last and
    not yet leased would take the next start, nor while the next start the gate leased is
    further away than ``host_start_window``; the next one once it is within it, though the
    first is still in flight; none at the cap however due the host is."""
    frontier = DueFrontier(Settings(host_delay=30, host_start_window=0.1))
    assert frontier.cap(H) == 2
    await new_job(db, [f"{H}/{i}" for i in range(5)])
    assert len(await claim(frontier, db)) == 1
    assert await claim(frontier, db) == []  # published, not leased: it takes the next start
    # the gate leases its slot (the host's next start 30 s on); it was published long ago
    await hosts.acquire(db, {H: 1}, {H: 2}, {H: 30.0}, 60.0, 2.0)
    await db.execute("UPDATE job_pending SET published_on = now() - interval '1 minute' "
                     "WHERE published_on IS NOT NULL")
    assert await claim(frontier, db) == []  # the next start is 30 s away
    await db.execute("UPDATE host SET next_start = now() + interval '50 milliseconds'")
    assert len(await claim(frontier, db)) == 1  # within the window, the first in flight
    await db.execute("UPDATE host SET next_start = now() - interval '1 minute'")
    await db.execute("UPDATE job_pending SET published_on = now() - interval '1 minute' "
                     "WHERE published_on IS NOT NULL")
    assert await claim(frontier, db) == []  # two in flight: the host's cap
    assert await db.fetchval("SELECT count(*) FROM job_pending "
                             "WHERE published_on IS NOT NULL") == 2


async def test_a_host_s_visit_is_published_ahead_of_its_turn_by_the_queue_s_wait(
        db: asyncpg.Connection) -> None:
    """With ``lead`` seconds of queue in front of a visit published now, a capped host's
    starts due within the window plus the lead are published: its visit reaches the gate
    about when its turn comes, instead of that much after it."""
    frontier = DueFrontier(Settings(host_delay=30, host_start_window=0.1))
    await new_job(db, [f"{H}/{i}" for i in range(5)])
    await db.execute("INSERT INTO host (host, next_start) "
                     "VALUES ($1, now() + interval '20 seconds')", H)
    for lead, published in ((0.0, 0), (25.0, 1)):
        async with db.transaction():
            got = await frontier.claim_planned(db, 10, cache_max_age=3600.0, lead=lead)
        assert len(got) == published, lead


async def test_a_wider_start_window_publishes_the_starts_that_fit_up_to_the_cap(
        db: asyncpg.Connection) -> None:
    """A host of 4 slots and 0.5 s between starts: a window of 0.6 s holds two starts, so
    two of a free host's visits are published at once, not its cap's four."""
    frontier = DueFrontier(Settings(host_concurrency=4, host_start_window=0.6))
    assert frontier.cap(H) == 4
    await new_job(db, [f"{H}/{i}" for i in range(8)])
    assert len(await claim(frontier, db)) == 2


async def test_a_host_that_starts_backing_off_between_scans_gets_nothing(
        db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pairs are scanned now and then; a back-off that began since (a 429 in a worker)
    holds the host's visits back at the next claim, not at the next scan, however far ahead
    it ends (a Retry-After of a thousand years, as a server may send)."""
    keep_scan(monkeypatch)
    frontier = DueFrontier(Settings())
    other = "http://other.example"
    await new_job(db, [f"{H}/{i}" for i in range(5)] + [f"{other}/{i}" for i in range(5)])
    assert len(await claim(frontier, db)) == 2  # one each
    await db.execute("DELETE FROM job_pending WHERE published_on IS NOT NULL")  # both done
    await db.execute("INSERT INTO host (host, backoff_until) "
                     "VALUES ($1, now() + interval '1000 years')", other)
    got = await claim(frontier, db)  # the same scan's pairs
    assert len(got) == 1
    assert await db.fetchval("SELECT host FROM job_pending WHERE url_id = $1", got[0][1]) == H
