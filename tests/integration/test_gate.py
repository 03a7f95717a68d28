"""The host gate (worker/gate.py HostGate) and its SQL (shared/db/hosts.py) against real
PostgreSQL and local sites on 127.0.0.1: grants, deferral at the cap, spacing, robots.txt."""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from shared.config import Settings
from shared.db import hosts
from shared.db.pool import open_pool
from tests.integration.conftest import StartServer
from worker.extractors.sitemaps import SitemapReader
from worker.fetchers.http import open_session
from worker.gate import HostGate, Slot, _allowed, _parse_rules, guard_band

pytestmark = pytest.mark.serial  # make test runs it alone: delays asserted to a tenth of a second


@dataclass
class Site:
    """A local host answering ``pages[path] -> (status, body, headers)``, logging every request."""
    pages: dict[str, tuple[int, bytes, dict[str, str]]] = field(default_factory=dict)
    log: list[tuple[str, float]] = field(default_factory=list)
    base: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.log.append((request.path, time.monotonic()))
        status, body, headers = self.pages.get(request.path, (404, b"", {}))
        return web.Response(status=status, body=body, headers=headers)

    def hits(self, path: str) -> int:
        return sum(1 for p, _ in self.log if p == path)


Start = Callable[[Site], Awaitable[Site]]
T = TypeVar("T")


@pytest.fixture
def start_site(start_server: StartServer) -> Start:
    async def start(site: Site) -> Site:
        site.base = await start_server(site.handle)
        return site

    return start


@pytest.fixture
def polite(settings: Settings) -> Settings:
    return settings.model_copy(update={"robots": True, "host_concurrency": 1, "host_delay": 0.0,
                                       "robots_max_failures": 2})


GateFor = Callable[..., Awaitable[HostGate]]


@pytest.fixture
async def gate_for() -> AsyncIterator[GateFor]:
    """``await gate_for(settings, session=None)``: a HostGate on its own pool and HTTP session
    (``open_session``'s, or the one given: closed with the gate), its release loop running."""
    closers: list[Callable[[], Awaitable[None]]] = []

    async def make(s: Settings, session: aiohttp.ClientSession | None = None) -> HostGate:
        pool_cm = open_pool(s.database_url, max_size=4)
        session_cm = open_session(s) if session is None else session
        pool, session = await pool_cm.__aenter__(), await session_cm.__aenter__()
        gate = HostGate(s, pool, session)
        releases = asyncio.create_task(gate.run_releases())

        async def close() -> None:
            await gate.close()
            releases.cancel()
            await asyncio.gather(releases, return_exceptions=True)
            await session_cm.__aexit__(None, None, None)
            await pool_cm.__aexit__(None, None, None)

        closers.append(close)
        return gate

    yield make
    for close in reversed(closers):
        await close()


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll ``check`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def ended(monkeypatch: pytest.MonkeyPatch, times: int) -> None:
    """As if ``times`` requests of the gate's worker on each host had ended in the last
    ``QUEUE_WINDOW`` (so that visits past a host's cap are queued for its slots): the count
    itself is tested in ``test_a_free_host_grants_at_once_then_queues_and_defers_at_its_cap``."""
    monkeypatch.setattr(HostGate, "_ending", lambda self, host, now: times)


async def no_leases(db: asyncpg.Connection, host: str) -> bool:
    """Every slot on ``host`` back in PostgreSQL (its row holds no lease)."""
    return bool(await db.fetchval("SELECT leases FROM host WHERE host = $1", host) == [])


async def robots_fetched(db: asyncpg.Connection, host: str) -> bool:
    """robots.txt stored, and the slot its request took given back."""
    return bool(await db.fetchval("""
        SELECT robots_fetched_on IS NOT NULL AND leases = '{}' FROM host WHERE host = $1""", host))


async def robots_row(db: asyncpg.Connection, host: str) -> asyncpg.Record:
    row = await db.fetchrow("SELECT * FROM host WHERE host = $1", host)
    assert row is not None
    return row


# -- robots.txt -------------------------------------------------------------------------------

async def test_a_robots_txt_with_nul_bytes_is_stored(db: asyncpg.Connection) -> None:
    """PostgreSQL text cannot hold NUL: the body is stored without them, not refused."""
    host = "http://127.0.0.1:9"
    assert await hosts.claim_robots_fetches(db, [host], 60, 10) == {host}
    await hosts.store_robots(db, host, 200, "User-agent: *\x00\nDisallow: /x\x00\n")
    r = (await hosts.robots(db, [host]))[host]
    assert (r.status, r.body, r.failures) == (200, "User-agent: *\nDisallow: /x\n", 0)
    assert r.fetched_on is not None


@pytest.mark.parametrize("body", [
    "User-agent: *\nDisallow: /private\n".encode("utf-16"),     # a BOM, then UTF-16
    "User-agent: *\nDisallow: /private\n".encode("utf-16-le"),  # no BOM: NULs in UTF-8
], ids=["bom", "no-bom"])
async def test_a_utf16_robots_txt_is_read_and_obeyed(
        polite: Settings, gate_for: GateFor, start_site: Start, db: asyncpg.Connection,
        body: bytes) -> None:
    site = await start_site(Site({"/robots.txt": (200, body, {"Content-Type": "text/plain"})}))
    gate = await gate_for(polite)
    visits = {(1, 1): site.base + "/private/a", (1, 2): site.base + "/open"}
    assert set((await gate.admit(visits)).deferred) == set(visits)  # robots.txt first
    await until(lambda: robots_fetched(db, site.base))
    out = await gate.admit(visits)
    assert out.blocked == {(1, 1): "blocked by robots.txt"}
    assert list(out.granted) == [(1, 2)]
    assert site.hits("/robots.txt") == 1


async def test_a_robots_txt_that_cannot_be_stored_counts_as_a_failure(
        polite: Settings, gate_for: GateFor, start_site: Start, db: asyncpg.Connection) -> None:
    """Whatever keeps an answer from being stored, the host's robots.txt failure is counted,
    so its visits are in the end blocked rather than deferred forever."""
    await db.execute("""
        CREATE FUNCTION refuse_body() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.robots_body IS DISTINCT FROM OLD.robots_body THEN
                RAISE EXCEPTION 'refused';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_body BEFORE UPDATE ON host FOR EACH ROW EXECUTE FUNCTION refuse_body();
    """)
    site = await start_site(Site({"/robots.txt": (200, b"User-agent: *\nDisallow:\n", {})}))
    gate = await gate_for(polite.model_copy(update={"robots_max_failures": 1}))
    visits = {(1, 1): site.base + "/a"}
    assert (await gate.admit(visits)).deferred  # robots.txt being fetched

    async def blocked() -> bool:
        return (await gate.admit(visits)).blocked == {(1, 1): "robots.txt unreachable"}

    await until(blocked)
    row = await robots_row(db, site.base)
    assert row["robots_failures"] == 1 and row["robots_fetched_on"] is None
    assert site.hits("/robots.txt") == 1


@dataclass
class Trickle:
    """A host answering ``pages[path]`` at once and any other path with a 200 whose body comes
    one byte every 0.3 s for a minute (each byte well within ``readTimeout``), recording the
    paths whose trickle ended early (the client hung up)."""
    pages: dict[str, bytes] = field(default_factory=dict)
    hung_up: list[str] = field(default_factory=list)
    base: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path in self.pages:
            return web.Response(body=self.pages[request.path])
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        try:
            for _ in range(200):
                await resp.write(b"#")
                await asyncio.sleep(0.3)
        except ConnectionError:
            self.hung_up.append(request.path)
        return resp


def trickled(polite: Settings) -> tuple[Settings, aiohttp.ClientSession]:
    """Settings whose whole-request deadline is 3 s (``connectTimeout`` + 2 × ``readTimeout``),
    and a session with per-read timeouts only: the gate must bound its requests itself."""
    s = polite.model_copy(update={"connect_timeout": 1.0, "read_timeout": 1.0,
                                  "robots_max_failures": 1})
    return s, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_connect=1, sock_read=1))


async def test_a_trickling_robots_txt_is_given_up_at_the_deadline_as_unreachable(
        polite: Settings, gate_for: GateFor, start_server: StartServer,
        db: asyncpg.Connection) -> None:
    """A robots.txt that trickles in is given up at the request's deadline, not read for as
    long as each byte comes within ``readTimeout``; it counts as an unreachable robots.txt
    (a failure: here ``robotsMaxFailures`` 1, so the host's visits are blocked)."""
    trickle = Trickle()
    trickle.base = await start_server(trickle.handle)
    s, session = trickled(polite)
    gate = await gate_for(s, session)
    visits = {(1, 1): trickle.base + "/a"}
    assert (await gate.admit(visits)).deferred  # robots.txt being fetched

    async def blocked() -> bool:
        return (await gate.admit(visits)).blocked == {(1, 1): "robots.txt unreachable"}

    await until(blocked, timeout=30.0)  # the trickle would last 60 s
    row = await robots_row(db, trickle.base)
    assert row["robots_failures"] == 1 and row["robots_fetched_on"] is None
    await until(lambda: asyncio.sleep(0, trickle.hung_up == ["/robots.txt"]))


async def test_a_trickling_sitemap_is_given_up_at_the_deadline(
        polite: Settings, gate_for: GateFor, start_server: StartServer,
        db: asyncpg.Connection) -> None:
    """A sitemap that trickles in is given up at the request's deadline: no pages from it."""
    trickle = Trickle()
    trickle.base = await start_server(trickle.handle)
    trickle.pages["/robots.txt"] = f"Sitemap: {trickle.base}/map.xml\n".encode()
    s, session = trickled(polite)
    gate = await gate_for(s, session)
    await gate.admit({(1, 1): trickle.base + "/"})
    await until(lambda: robots_fetched(db, trickle.base))
    assert await asyncio.wait_for(gate.sitemap_urls(trickle.base), 30.0) == []
    await until(lambda: asyncio.sleep(0, trickle.hung_up == ["/map.xml"]))


# -- releases ---------------------------------------------------------------------------------

async def test_a_failed_release_is_tried_again(
        polite: Settings, gate_for: GateFor, db: asyncpg.Connection) -> None:
    """A release that fails (here: the first two tries, refused by a trigger) is tried again
    with backoff, so the slot comes back long before its lease would expire."""
    gate = await gate_for(polite.model_copy(update={"robots": False}))
    host = "http://127.0.0.1:9"
    slot = (await gate.admit({(1, 1): host + "/a"})).granted[(1, 1)]
    await db.execute("""
        CREATE SEQUENCE refusals;
        CREATE FUNCTION refuse_twice() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF nextval('refusals') <= 2 THEN RAISE EXCEPTION 'refused'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_twice BEFORE UPDATE ON host FOR EACH ROW
            EXECUTE FUNCTION refuse_twice();
    """)
    gate.release(slot, trouble=False, retry_after=None)

    async def released() -> bool:
        return bool(await db.fetchval("SELECT leases = '{}' FROM host WHERE host = $1", host))

    await until(released, timeout=5)
    assert await db.fetchval("SELECT last_value FROM refusals") == 3


async def test_every_answer_in_trouble_counts_though_released_in_one_batch(
        db: asyncpg.Connection) -> None:
    """Releases are returned in batches: two requests of one host answered 429 count two
    failures (as released one at a time), not one because they went in the same batch (a
    retry granted before its first attempt's release landed, on a loaded machine)."""
    host = "http://127.0.0.1:9"
    _, grants = await hosts.acquire(db, {host: 2}, {host: 2}, {host: 0.0}, 60, 2)
    tokens = grants[0].tokens
    assert len(tokens) == 2
    await hosts.release(db, [hosts.Release(host, t, trouble=True) for t in tokens], 0.05, 1.0)
    r = await db.fetchrow("SELECT failures, leases FROM host WHERE host = $1", host)
    assert r["failures"] == 2 and r["leases"] == []


async def test_releases_and_grants_on_many_hosts_never_deadlock(database_url: str) -> None:
    """``hosts.release`` locks host rows in name order, as ``harvester_acquire`` does: callers
    leasing and releasing the same hosts at once never deadlock."""
    names = [f"http://h{i:02d}.example" for i in range(40)]
    conns = [await asyncpg.connect(database_url) for _ in range(4)]
    try:
        # rows stored in another order than their names, as updates leave them
        for name in sorted(names, key=lambda n: n[::-1]):
            await conns[0].execute("INSERT INTO host (host) VALUES ($1)", name)
        deadlocks = 0

        async def churn(conn: asyncpg.Connection) -> None:
            nonlocal deadlocks
            stop = time.monotonic() + 4
            while time.monotonic() < stop:
                try:
                    _, grants = await hosts.acquire(conn, dict.fromkeys(names, 1),
                                                    dict.fromkeys(names, 100),
                                                    dict.fromkeys(names, 0.0), 60, 2)
                    await hosts.release(conn, [hosts.Release(g.host, t, trouble=True)
                                               for g in grants for t in g.tokens], 0.0, 0.0)
                except asyncpg.DeadlockDetectedError:
                    deadlocks += 1

        await asyncio.gather(*(churn(c) for c in conns))
        assert deadlocks == 0
    finally:
        for c in conns:
            await c.close()


# -- grants, spacing, pauses ------------------------------------------------------------------

async def test_a_free_host_grants_at_once_then_queues_and_defers_at_its_cap(
        polite: Settings, gate_for: GateFor, db: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """C = 2, no delay: two of eight visits start now, each with a lease that expires
    ``fetch_lease`` after its start. Before any request of this worker on the host has ended
    the others are deferred (shortly: a slot frees when a request ends); once one has, four
    wait in the worker (``queued``: as many as its requests on the host, at the rate they
    ended, free in half of ``politeness_horizon``: two in 5 s, 20 s), the rest deferred.
    Another visit meanwhile is deferred too: the queue is full."""
    s = polite.model_copy(update={"robots": False, "host_concurrency": 2,
                                  "politeness_horizon": 20.0})
    monkeypatch.setattr("worker.gate.QUEUE_WINDOW", 5.0)  # a slow machine's 0.5 s: no matter
    gate = await gate_for(s)
    host = "http://127.0.0.1:9"
    first = await gate.admit({(0, 0): host + "/", (0, 1): host + "/1", (0, 2): host + "/2"})
    assert len(first.granted) == 2 and len(first.deferred) == 1 and not first.queued
    assert first.why == {"cap_idle": 1}  # none of its requests on the host has ended yet
    for slot in first.granted.values():
        gate.release(slot, trouble=False, retry_after=None)

    await until(lambda: no_leases(db, host))
    out = await gate.admit({(1, i): f"{host}/{i}" for i in range(8)})
    assert len(out.granted) == 2 and len(out.queued) == 4 and len(out.deferred) == 2
    assert out.why == {"cap_queue": 2}
    assert not out.blocked and list(out.queued) == [(1, 2), (1, 3), (1, 4), (1, 5)]
    assert all(slot.wait == 0 and slot.host == host for slot in out.granted.values())
    for slot in out.granted.values():
        assert abs((slot.token - slot.start).total_seconds() - s.fetch_lease) < 0.01
    db_now = await db.fetchval("SELECT clock_timestamp()")
    for due in out.deferred.values():
        assert timedelta(0) <= due - db_now < timedelta(seconds=0.1)
    again = await gate.admit({(2, 1): host + "/x"})  # at the cap, its queue full
    assert again.deferred and not again.queued and again.why == {"cap_queue": 1}
    for waiting in out.queued.values():
        waiting.cancel()  # given up: no slot handed to them
    slot = next(iter(out.granted.values()))
    gate.release(slot, trouble=False, retry_after=None)

    async def granted() -> bool:
        return bool((await gate.admit({(3, 1): host + "/y"})).granted)

    await until(granted)


async def test_a_request_that_ends_well_hands_its_lease_to_a_queued_visit(
        polite: Settings, gate_for: GateFor, db: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The slot of a request that ended goes to the first visit queued for its host, its lease
    unchanged (no statement: the host row keeps both leases); trouble (a 429) sends the other
    queued visits back to the frontier, and the lease back to PostgreSQL."""
    gate = await gate_for(polite.model_copy(update={"robots": False, "host_concurrency": 2}))
    host = "http://127.0.0.1:9"
    ended(monkeypatch, 2)
    out = await gate.admit({(1, i): f"{host}/{i}" for i in range(4)})
    first, second = out.granted.values()
    deadline = asyncio.get_running_loop().time() + 5
    takes = [asyncio.ensure_future(gate.take_queued(host, w, deadline))
             for w in out.queued.values()]
    gate.release(first, trouble=False, retry_after=None)
    handed = await asyncio.wait_for(takes[0], 1)
    assert handed is not None and handed.token == first.token and handed.wait == 0
    assert not takes[1].done()
    await asyncio.sleep(0.1)  # the release loop's batch: nothing to write
    leases = await db.fetchval("SELECT leases FROM host WHERE host = $1", host)
    assert sorted(leases) == sorted([first.token, second.token])
    gate.release(second, trouble=True, retry_after=None)
    assert await asyncio.wait_for(takes[1], 1) is None  # back to the frontier
    gate.release(handed, trouble=False, retry_after=None)  # nobody waits: back to PostgreSQL

    await until(lambda: no_leases(db, host))


async def test_a_worker_keeps_its_share_of_a_hosts_cap_for_its_queue(
        polite: Settings, gate_for: GateFor, db: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two live workers, a cap of 4: a worker asks for 2 slots (its share) and queues the rest
    for them; holding more (granted before the other worker was heard of), a slot freed over
    its share goes back to PostgreSQL, for the other worker, not to its queue."""
    gate = await gate_for(polite.model_copy(update={"robots": False, "host_concurrency": 4}))
    host = "http://127.0.0.1:9"
    ended(monkeypatch, 4)
    held = list((await gate.admit({(1, i): f"{host}/{i}" for i in range(3)})).granted.values())
    assert len(held) == 3  # one worker known: the whole cap is its share
    gate.live_workers(2)
    out = await gate.admit({(2, i): f"{host}/{i}" for i in range(2)})
    assert not out.granted and len(out.queued) == 2 and not out.deferred  # none asked for
    deadline = asyncio.get_running_loop().time() + 5
    takes = [asyncio.ensure_future(gate.take_queued(host, w, deadline))
             for w in out.queued.values()]

    async def leases(n: int) -> bool:
        return bool(await db.fetchval(
            "SELECT cardinality(leases) = $2 FROM host WHERE host = $1", host, n))

    gate.release(held[0], trouble=False, retry_after=None)  # 3 held, share 2: back
    await until(lambda: leases(2))
    assert not any(t.done() for t in takes)
    gate.release(held[1], trouble=False, retry_after=None)  # 2 held: handed on
    handed = await asyncio.wait_for(takes[0], 1)
    assert handed is not None and handed.token == held[1].token
    other = await gate_for(polite.model_copy(update={"robots": False, "host_concurrency": 4}))
    other.live_workers(2)
    assert len((await other.admit({(3, i): f"{host}/{i}" for i in range(3)})).granted) == 2
    for t in takes[1:]:
        t.cancel()


@pytest.mark.parametrize("age", [1.0, 0.0], ids=["fresh", "to-renew"])
async def test_a_queued_visit_cancelled_as_its_slot_arrives_gives_the_slot_back(
        polite: Settings, gate_for: GateFor, db: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch, age: float) -> None:
    """A worker stopping: the queued visit's task is cancelled just after a request handed it
    its slot (as it is, or to be renewed), before it ran. The slot goes back (the lease freed),
    not leaked until it expires."""
    monkeypatch.setattr("worker.gate.HANDOVER_AGE", age)
    gate = await gate_for(polite.model_copy(update={"robots": False, "host_concurrency": 1}))
    host = "http://127.0.0.1:9"
    ended(monkeypatch, 1)
    out = await gate.admit({(1, 1): host + "/a", (1, 2): host + "/b"})
    (slot,) = out.granted.values()
    (waiting,) = out.queued.values()
    take = asyncio.ensure_future(gate.take_queued(
        host, waiting, asyncio.get_running_loop().time() + 5))
    await asyncio.sleep(0)  # waiting for its slot
    gate.release(slot, trouble=False, retry_after=None)  # handed on...
    assert waiting.done() and not waiting.cancelled()
    take.cancel()  # ...and cancelled before it took it
    with pytest.raises(asyncio.CancelledError):
        await take

    await until(lambda: no_leases(db, host))


async def test_a_queued_visit_given_up_after_its_slot_arrived_gives_the_slot_back(
        polite: Settings, gate_for: GateFor, db: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``unqueue`` (the dispatch failed after the admission: the batch comes back): a slot
    handed to the queued visit meanwhile goes back; a place still waiting is given up."""
    gate = await gate_for(polite.model_copy(update={"robots": False, "host_concurrency": 1}))
    host = "http://127.0.0.1:9"
    ended(monkeypatch, 1)
    out = await gate.admit({(1, 1): host + "/a", (1, 2): host + "/b", (1, 3): host + "/c"})
    (slot,) = out.granted.values()
    handed, waiting = out.queued.values()
    gate.release(slot, trouble=False, retry_after=None)  # handed on to the first
    assert isinstance(handed.result(), Slot) and not waiting.done()
    gate.unqueue(handed)  # its slot back: the next place is told to ask PostgreSQL...
    gate.unqueue(waiting)  # ...but is given up too (the same batch): nothing to give back
    assert waiting.done()

    await until(lambda: no_leases(db, host))


async def test_an_old_lease_is_renewed_before_it_is_handed_on_and_not_while_paused(
        polite: Settings, gate_for: GateFor, db: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A lease granted ``HANDOVER_AGE`` ago or more is renewed before the queued visit takes it:
    a new token in its place (the host's lease count unchanged); while the host backs off (a
    pause another worker set) the renewal is refused, the queued visit goes back (None) and
    the lease is given back."""
    monkeypatch.setattr("worker.gate.HANDOVER_AGE", 0.0)
    gate = await gate_for(polite.model_copy(update={"robots": False, "host_concurrency": 1}))
    host = "http://127.0.0.1:9"
    ended(monkeypatch, 1)
    out = await gate.admit({(1, 1): host + "/a", (1, 2): host + "/b"})
    (old,) = out.granted.values()
    (waiting,) = out.queued.values()
    deadline = asyncio.get_running_loop().time() + 5
    take = asyncio.ensure_future(gate.take_queued(host, waiting, deadline))
    gate.release(old, trouble=False, retry_after=None)
    new = await asyncio.wait_for(take, 5)
    assert new is not None and new.host == host and new.token > old.token
    assert await db.fetchval("SELECT leases FROM host WHERE host = $1", host) == [new.token]
    waiting, other = (await gate.admit({(1, 3): host + "/c", (1, 4): host + "/d"})
                      ).queued.values()
    await db.execute("UPDATE host SET backoff_until = now() + interval '1 hour' WHERE host = $1",
                     host)
    take = asyncio.ensure_future(gate.take_queued(host, waiting, deadline))
    gate.release(new, trouble=False, retry_after=None)
    assert await asyncio.wait_for(take, 5) is None
    assert other.done() and other.result() is None  # the host's other queued visit: back too

    await until(lambda: no_leases(db, host))


async def test_a_queued_visit_without_a_slot_in_time_goes_back(
        polite: Settings, gate_for: GateFor, db: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No request of the host ends within ``politeness_horizon``: the queued visit gives up
    (None: back to the frontier), and a slot released after that goes back to PostgreSQL."""
    gate = await gate_for(polite.model_copy(update={
        "robots": False, "host_concurrency": 1, "politeness_horizon": 0.5}))
    host = "http://127.0.0.1:9"
    ended(monkeypatch, 2)
    out = await gate.admit({(1, 1): host + "/a", (1, 2): host + "/b"})
    (waiting,) = out.queued.values()
    t0 = time.monotonic()
    assert await gate.take_queued(host, waiting, asyncio.get_running_loop().time() + 5) is None
    assert 0.45 <= time.monotonic() - t0 < 3
    gate.release(next(iter(out.granted.values())), trouble=False, retry_after=None)

    await until(lambda: no_leases(db, host))  # nobody waits for it now: back to PostgreSQL


async def test_a_host_with_a_delay_defers_and_never_queues(
        polite: Settings, gate_for: GateFor, monkeypatch: pytest.MonkeyPatch) -> None:
    """Delay-bound, the next start is the host's next turn, not a request of this worker
    ending: the visits past the cap are deferred to their turns, none queued."""
    gate = await gate_for(polite.model_copy(update={
        "robots": False, "host_concurrency": 1, "host_delay": 0.3}))
    ended(monkeypatch, 4)
    out = await gate.admit({(1, i): f"http://127.0.0.1:9/{i}" for i in range(4)})
    assert len(out.granted) == 1 and len(out.deferred) == 3 and not out.queued
    assert out.why == {"delay": 3}


async def test_starts_are_spaced_by_the_delay_and_the_guard_band(
        polite: Settings, gate_for: GateFor) -> None:
    delay = 0.2
    gate = await gate_for(polite.model_copy(update={
        "robots": False, "host_concurrency": 5, "host_delay": delay}))
    out = await gate.admit({(1, i): f"http://127.0.0.1:9/{i}" for i in range(5)})
    waits = sorted(slot.wait for slot in out.granted.values())
    assert len(waits) == 5 and waits[0] == 0
    starts = sorted(slot.start for slot in out.granted.values())
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    assert all(abs(g - (delay + guard_band(delay))) < 1e-6 for g in gaps)
    later = await gate.admit({(2, 1): "http://127.0.0.1:9/x"})  # after the 5th start...
    assert later.deferred or later.granted[(2, 1)].start >= starts[-1]  # ...never before it


async def test_robots_txt_blocks_disallowed_urls_and_its_crawl_delay_spaces_starts(
        polite: Settings, gate_for: GateFor, start_site: Start, db: asyncpg.Connection) -> None:
    robots = b"User-agent: *\nDisallow: /private\nCrawl-delay: 0.4\n"
    site = await start_site(Site({"/robots.txt": (200, robots, {})}))
    gate = await gate_for(polite.model_copy(update={"host_concurrency": 3}))
    visits = {(1, 1): site.base + "/private/x", (1, 2): site.base + "/a",
              (1, 3): site.base + "/b"}
    out = await gate.admit(visits)
    assert set(out.deferred) == set(visits) and not out.granted  # robots.txt not known yet
    assert out.why == {"robots": 3}
    await until(lambda: robots_fetched(db, site.base))
    out = await gate.admit(visits)
    assert out.blocked == {(1, 1): "blocked by robots.txt"}
    a, b = sorted(out.granted.values(), key=lambda slot: slot.start)
    assert (b.start - a.start).total_seconds() == pytest.approx(0.4 + guard_band(0.4))
    assert site.hits("/robots.txt") == 1


async def test_a_redirect_hop_is_admitted_like_a_visit(
        polite: Settings, gate_for: GateFor, start_site: Start) -> None:
    site = await start_site(Site({"/robots.txt": (200, b"User-agent: *\nDisallow: /no\n", {})}))
    gate = await gate_for(polite)
    deadline = asyncio.get_running_loop().time() + 5
    assert await gate.admit_hop(site.base + "/no", False, deadline) == "blocked by robots.txt"
    assert await gate.admit_hop(site.base + "/yes", False, deadline) is None  # the page's slot
    slot = await gate.admit_hop(site.base + "/yes", True, deadline)
    assert slot is not None and not isinstance(slot, str) and slot.host == site.base
    t0 = time.monotonic()  # C = 1, held: no second slot before the deadline
    soon = asyncio.get_running_loop().time() + 0.3
    assert await gate.admit_hop(site.base + "/yes", True, soon) == "no free slot on the host"
    assert 0.3 <= time.monotonic() - t0 < 1.0
    gate.release(slot, trouble=False, retry_after=None)


@pytest.mark.parametrize("told", ["this worker", "another worker"])
async def test_a_visit_waiting_for_its_start_is_held_back_by_a_pause(
        polite: Settings, gate_for: GateFor, db: asyncpg.Connection, told: str) -> None:
    """A 429 with Retry-After: 2 answered to one slot pauses the host for the visits already
    granted a later start, whichever worker heard it; a pause over before the start does not."""
    s = polite.model_copy(update={"robots": False, "host_concurrency": 2, "host_delay": 0.3})
    gate = await gate_for(s)
    other = await gate_for(s) if told == "another worker" else gate
    host = "http://127.0.0.1:9"
    out = await gate.admit({(1, 1): host + "/a", (1, 2): host + "/b", (1, 3): host + "/c"})
    first, second = out.granted[(1, 1)], out.granted[(1, 2)]
    assert first.wait == 0 and second.wait >= 0.3 and list(out.deferred) == [(1, 3)]
    before = await db.fetchval("SELECT clock_timestamp()")
    other.release(first, trouble=True, retry_after=2.0)
    paused = await gate.wait_start(second)
    assert paused is not None and (paused - before).total_seconds() >= 2.0 - 0.05
    gate.give_back(second)

    later = await gate.admit({(2, 1): host + "/a", (2, 2): host + "/b"})
    starts = [g.start for g in later.granted.values()] + list(later.deferred.values())
    assert len(starts) == 2 and min(starts) >= paused - timedelta(milliseconds=10)


async def test_a_pause_over_before_the_start_lets_the_visit_go(
        polite: Settings, gate_for: GateFor) -> None:
    s = polite.model_copy(update={"robots": False, "host_concurrency": 2, "host_delay": 0.5})
    gate = await gate_for(s)
    host = "http://127.0.0.1:9"
    out = await gate.admit({(1, 1): host + "/a", (1, 2): host + "/b"})
    gate.release(out.granted[(1, 1)], trouble=True, retry_after=0.1)
    t0 = time.monotonic()
    assert await gate.wait_start(out.granted[(1, 2)]) is None
    assert time.monotonic() - t0 >= out.granted[(1, 2)].wait - 0.01


class CountingPool:
    """The gate's pool, counting the connections taken from it (each a round trip or more)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool, self.taken = pool, 0

    def acquire(self, *args: object, **kwargs: object) -> object:
        self.taken += 1
        return self.pool.acquire(*args, **kwargs)


async def test_visits_waiting_for_their_starts_check_for_pauses_together(
        polite: Settings, gate_for: GateFor) -> None:
    """Twenty visits on twenty hosts granted starts 0.3 s out, at about the same time, ask
    PostgreSQL whether their hosts were paused in one or two queries, not one each."""
    s = polite.model_copy(update={"robots": False, "host_concurrency": 2, "host_delay": 0.3})
    gate = await gate_for(s)
    names = [f"http://127.0.0.{i}:9" for i in range(1, 21)]
    out = await gate.admit({(i, j): f"{h}/{j}" for i, h in enumerate(names) for j in (1, 2)})
    later = [out.granted[(i, 2)] for i in range(len(names))]
    assert all(slot.wait >= 0.2 for slot in later)
    counting = CountingPool(gate.pool)
    gate.pool = counting
    assert await asyncio.gather(*(gate.wait_start(slot) for slot in later)) == [None] * 20
    assert counting.taken <= 3, f"{counting.taken} pause checks"


async def test_a_slow_pause_check_does_not_hold_the_request_back(
        polite: Settings, gate_for: GateFor, database_url: str) -> None:
    """A pause check that cannot be answered (the host table locked by another session) is
    given up at the slot's start: the grant stands and the request goes, the lock still held,
    rather than leaving when the query ends."""
    s = polite.model_copy(update={"robots": False, "host_concurrency": 2, "host_delay": 0.3})
    gate = await gate_for(s)
    host = "http://127.0.0.1:9"
    out = await gate.admit({(1, 1): host + "/a", (1, 2): host + "/b"})
    locker = await asyncpg.connect(database_url)
    try:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE host IN ACCESS EXCLUSIVE MODE")
        waiting = asyncio.ensure_future(gate.wait_start(out.granted[(1, 2)]))
        deadline = time.monotonic() + 5
        while not waiting.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert waiting.done(), "the pause check waited for the lock"
        assert await waiting is None
        await tx.rollback()
    finally:
        await locker.close()


async def test_a_retry_on_a_host_paused_past_its_deadline_gives_up_at_once(
        polite: Settings, gate_for: GateFor, db: asyncpg.Connection) -> None:
    """A retry's slot (``admit_hop`` with a horizon) on a host paused beyond the retry's
    deadline is not asked for again and again until then: one lease request, then no."""
    gate = await gate_for(polite.model_copy(update={"robots": False, "host_concurrency": 2}))
    host = "http://127.0.0.1:9"
    await db.execute("""
        INSERT INTO host (host, backoff_until) VALUES ($1, clock_timestamp() + interval '60 s')
        """, host)
    counting = CountingPool(gate.pool)
    gate.pool = counting
    loop = asyncio.get_running_loop()
    hop = await gate.admit_hop(host + "/a", True, loop.time() + 1.5, horizon=1.5)
    assert hop == "no free slot on the host"
    assert counting.taken == 1, f"asked {counting.taken} times"


async def test_a_paused_host_defers_its_visits_as_paused(
        polite: Settings, gate_for: GateFor, db: asyncpg.Connection) -> None:
    gate = await gate_for(polite.model_copy(update={"robots": False, "host_concurrency": 2}))
    host = "http://127.0.0.1:9"
    out = await gate.admit({(1, 1): host + "/a"})
    gate.release(out.granted[(1, 1)], trouble=True, retry_after=60.0)
    await until(lambda: no_leases(db, host))  # the trouble is recorded
    paused = await gate.admit({(1, 2): host + "/b"})
    assert list(paused.deferred) == [(1, 2)] and paused.why == {"paused": 1}


async def test_a_good_answer_does_not_cut_a_pause_short(
        polite: Settings, gate_for: GateFor, db: asyncpg.Connection) -> None:
    """A request in flight when the host asked for a pause, answered well afterwards, forgets
    the host's failures but leaves the pause running."""
    gate = await gate_for(polite.model_copy(update={"robots": False, "host_concurrency": 2}))
    host = "http://127.0.0.1:9"
    out = await gate.admit({(1, 1): host + "/a", (1, 2): host + "/b"})
    gate.release(out.granted[(1, 1)], trouble=True, retry_after=2.0)

    async def leases(n: int) -> bool:
        return bool(await db.fetchval(
            "SELECT cardinality(leases) = $2 FROM host WHERE host = $1", host, n))

    await until(lambda: leases(1))  # the trouble is recorded
    gate.release(out.granted[(1, 2)], trouble=False, retry_after=None)
    await until(lambda: leases(0))
    r = await db.fetchrow("""
        SELECT failures, backoff_until - clock_timestamp() AS left FROM host WHERE host = $1""",
        host)
    assert r["failures"] == 0 and r["left"].total_seconds() > 1.5


async def test_a_host_whose_name_does_not_resolve_fails_its_visits(
        polite: Settings, gate_for: GateFor, db: asyncpg.Connection) -> None:
    """No server, so nothing to block: once its robots.txt has failed ``robotsMaxFailures``
    times, the visits of a host whose name does not resolve fail with the resolver's error
    (``.invalid`` never resolves, RFC 2606)."""
    gate = await gate_for(polite.model_copy(update={"robots_max_failures": 1}))
    host = "http://nowhere.invalid"
    visits = {(1, 1): host + "/a", (1, 2): host + "/b"}
    assert set((await gate.admit(visits)).deferred) == set(visits)  # robots.txt first

    async def decided() -> bool:
        out = await gate.admit(visits)
        return bool(out.failed or out.blocked)

    await until(decided)
    out = await gate.admit(visits)
    assert not out.blocked and set(out.failed) == set(visits)
    assert out.failed[(1, 1)].startswith("host name not resolved: ")
    row = await robots_row(db, host)
    assert row["robots_failures"] == 1 and row["robots_unresolved"] == out.failed[(1, 1)]


# -- big bodies stay off the event loop -------------------------------------------------------

async def longest_stall(work: Awaitable[T]) -> tuple[T, float]:
    """``work``'s result and the event loop's longest stall while it ran, not counting the
    garbage collector's passes: they stop every thread for a time set by the whole process's
    heap (the test runner's included: 40-70 ms here), whatever the work."""
    in_gc, since = [0.0], [0.0]

    def clock(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            since[0] = time.perf_counter()
        else:
            in_gc[0] += time.perf_counter() - since[0]

    gc.callbacks.append(clock)
    try:
        task = asyncio.ensure_future(work)
        worst = 0.0
        while not task.done():
            t, g = time.perf_counter(), in_gc[0]
            await asyncio.sleep(0)
            worst = max(worst, time.perf_counter() - t - (in_gc[0] - g))
        return await task, worst
    finally:
        gc.callbacks.remove(clock)


BIG_ROBOTS = "User-agent: *\n" + "".join(
    f"Disallow: /p/{i}/x*\nAllow: /p/{i}/y$\n" for i in range(12_000))  # 470 KiB


async def test_a_big_robots_txt_is_parsed_and_matched_off_the_event_loop(
        polite: Settings, gate_for: GateFor, start_site: Start, db: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A 470 KiB robots.txt (0.2 s to parse, 1.5 ms per URL matched on two loaded cores) is
    parsed and matched in a thread, once per worker and copy, never on the event loop's
    thread. Checked by where the parse and the matching run, not by timing the loop's stalls
    (a loaded machine's stall is not the gate's: speed lives in the benchmarks)."""
    assert len(BIG_ROBOTS) < 512 * 1024
    where: list[tuple[str, bool]] = []

    def parse(*args: object) -> object:
        where.append(("parse", threading.current_thread() is loop_thread))
        return _parse_rules(*args)  # type: ignore[arg-type]

    def allowed(*args: object) -> object:
        where.append(("match", threading.current_thread() is loop_thread))
        return _allowed(*args)  # type: ignore[arg-type]

    loop_thread = threading.current_thread()
    monkeypatch.setattr("worker.gate._parse_rules", parse)
    monkeypatch.setattr("worker.gate._allowed", allowed)
    site = await start_site(Site({"/robots.txt": (200, BIG_ROBOTS.encode(), {})}))
    gate = await gate_for(polite.model_copy(update={"host_concurrency": 64}))
    visits = {(1, i): f"{site.base}/p/{i * 180}/x" for i in range(64)}
    await gate.admit(visits)  # the fetch starts
    await until(lambda: robots_fetched(db, site.base))
    for _ in range(2):  # parsed the first time, from the worker's cache the second
        where.clear()
        out = await gate.admit(visits)
        assert set(out.blocked) == set(visits)
        assert where and not any(on_loop for _, on_loop in where), where
    assert [what for what, _ in where] == ["match"]  # the second time: no parse, one match


async def test_known_robots_bodies_are_not_read_again(db: asyncpg.Connection) -> None:
    """The gate names the copies it has parsed; their bodies are not sent again."""
    host = "http://127.0.0.1:9"
    await hosts.claim_robots_fetches(db, [host], 60, 10)
    await hosts.store_robots(db, host, 200, "User-agent: *\nDisallow: /x\n")
    r = (await hosts.robots(db, [host]))[host]
    assert r.body == "User-agent: *\nDisallow: /x\n" and r.fetched_on is not None
    assert (await hosts.robots(db, [host], {host: r.fetched_on}))[host].body is None
    older = r.fetched_on - timedelta(seconds=1)
    assert (await hosts.robots(db, [host], {host: older}))[host].body == r.body


async def test_a_10_mib_sitemap_is_parsed_in_pieces_on_the_event_loop(
        polite: Settings, gate_for: GateFor, start_site: Start, db: asyncpg.Connection) -> None:
    """A 10 MiB sitemap is parsed on the loop a piece at a time: the loop's longest stall while
    the gate reads it is a small part of the time the same parse takes in one piece (measured
    here, not a fixed time; speed belongs to the benchmarks)."""
    site = await start_site(Site())
    urls = "".join(f"<url><loc>{site.base}/page/{i}</loc></url>" for i in range(50_000))
    pad = "<!-- padding -->" * ((10 << 20) // 16 - len(urls) // 16 - 10)
    xml = f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{urls}{pad}</urlset>'
    assert len(xml) <= 10 << 20
    t0 = time.perf_counter()
    whole = SitemapReader(site.base + "/map.xml")
    whole.feed(xml.encode())
    assert len(whole.close().urls) == 50_000
    one_piece = time.perf_counter() - t0
    site.pages["/robots.txt"] = (200, f"Sitemap: {site.base}/map.xml\n".encode(), {})
    site.pages["/map.xml"] = (200, xml.encode(), {})
    gate = await gate_for(polite.model_copy(update={"max_body_bytes": 10 << 20}))
    await gate.admit({(1, 1): site.base + "/"})
    await until(lambda: robots_fetched(db, site.base))
    found, worst = await longest_stall(gate.sitemap_urls(site.base))
    assert len(found) == 50_000 and found[-1] == f"{site.base}/page/49999"
    assert worst < one_piece / 4, (
        f"the event loop was blocked for {worst * 1e3:.0f} ms ({one_piece * 1e3:.0f} ms whole)")


async def test_a_redirect_hop_waiting_for_its_start_is_held_back_by_a_pause(
        polite: Settings, gate_for: GateFor, db: asyncpg.Connection) -> None:
    """A hop's slot granted a later start on a host that is paused meanwhile is not used: the
    hop waits for the pause, here longer than its deadline, so it gets no slot at all. (The
    hop's start is 1.5 s out, its pause check PAUSE_LEAD (0.5 s) before it: the pause, set by another worker
    once the hop's lease is in the database, is recorded long before.)"""
    s = polite.model_copy(update={"robots": False, "host_concurrency": 2, "host_delay": 1.5})
    gate, other = await gate_for(s), await gate_for(s)
    host = "http://127.0.0.1:9"
    first = (await gate.admit({(1, 1): host + "/a"})).granted[(1, 1)]
    loop = asyncio.get_running_loop()
    hop = asyncio.ensure_future(gate.admit_hop(host + "/b", True, loop.time() + 5.0))

    async def hop_granted() -> bool:  # a start 1.5 s out
        return bool(await db.fetchval(
            "SELECT cardinality(leases) = 2 FROM host WHERE host = $1", host))

    async def paused() -> bool:
        return bool(await db.fetchval("""
            SELECT backoff_until > clock_timestamp() + interval '5 s' FROM host
            WHERE host = $1""", host))

    await until(hop_granted)
    other.release(first, trouble=True, retry_after=10.0)  # the host asks for 10 s
    await until(paused)
    assert not hop.done()  # still waiting for its start when the pause came
    assert await hop == "no free slot on the host"

    async def given_back() -> bool:  # both slots: the hop's unused
        return bool(await db.fetchval("SELECT leases = '{}' FROM host WHERE host = $1", host))

    await until(given_back)
