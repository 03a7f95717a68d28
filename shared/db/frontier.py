"""The frontier: which pending visits (``job_pending`` rows) are published, and when.

A ``job_pending`` row is published (``published_on`` set) when a feeder claims it, and put back
(``published_on`` NULL) when its publish failed, when a worker defers it to a later ``due``, or
when the watchdog finds it published long ago and still pending. ``Frontier`` is that interface:
the feeder (``foreman/feeder.py`` ``feed``, which claims them planned: ``claim_planned``), the
watchdog (``foreman/schedule.py``) and the worker
(deferrals, attempts) each use one instance passed down from their service's ``run()``, so an
ordering or a priority is decided here, in one place. ``DueFrontier`` is the one implementation:
oldest ``due`` first.

Adding rows is not the frontier's: children become pending inside the completion transaction
(``visits.complete``), and so does deleting a processed row. Every method takes the caller's
connection, so the caller owns the transaction.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Collection, Container, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import asyncpg

from shared.config import Settings
from shared.db.visits import Key, Planned, plan_columns, planned


class Frontier(Protocol):
    async def claim(self, conn: asyncpg.Connection, limit: int) -> list[Key]:
        """Mark up to ``limit`` unpublished visits that are due as published and return them."""

    async def claim_planned(self, conn: asyncpg.Connection, limit: int, *,
                            cache_max_age: float, known_traps: Container[int] = (),
                            full_kinds: Collection[str] = (), lead: float = 0.0,
                            ) -> list[Planned]:
        """``claim``, each visit planned as ``visits.plan`` plans it (one statement), none of
        a job whose fetcher kind is in ``full_kinds``; ``lead``: seconds a visit published
        now waits in the queue before a worker takes it."""

    async def unclaim(self, conn: asyncpg.Connection, keys: Sequence[Key]) -> None:
        """Mark claimed visits as unpublished again (their publish failed)."""

    async def defer(self, conn: asyncpg.Connection, due: Mapping[Key, datetime]) -> None:
        """Put visits back, unpublished, not to be claimed before ``due``."""

    async def hold(self, conn: asyncpg.Connection, keys: Sequence[Key]) -> None:
        """Put back, unpublished, visits of a paused job (held while it stays paused)."""

    async def count_attempt(self, conn: asyncpg.Connection, key: Key) -> None:
        """Count a failed fetch attempt on a published visit, which stays published."""

    async def requeue_stale(self, conn: asyncpg.Connection, stale_after: float,
                            max_requeues: int, limit: int = 1000) -> int:
        """Put back visits published ``stale_after`` seconds ago or more and requeued fewer
        than ``max_requeues`` times, at most ``limit``; returns how many."""

    async def abandoned(self, conn: asyncpg.Connection, stale_after: float, max_requeues: int,
                        limit: int = 500) -> list[tuple[Key, int]]:
        """Visits stale after ``max_requeues`` requeues or more, at most ``limit``:
        (key, requeues)."""

    async def hold_unserved(self, conn: asyncpg.Connection, served: Sequence[str],
                            stale_after: float) -> int:
        """Restart the staleness clock of published visits of jobs whose fetcher kind is not
        in ``served`` (no live worker serves it); returns how many."""


# The feeder's connections plan each claim for its parameters and the table's size then
# (``plan_cache_mode``): a plan cached while the frontier's partition was nearly empty (the
# generic plan PostgreSQL keeps after five runs of a prepared statement, until the next
# ANALYZE) read the whole partition per pair once it had grown, for seconds at a crawl's start.
FEEDER_SETTINGS = {"plan_cache_mode": "force_custom_plan"}
FEED_LOCK = 0x4A52_4644  # pg advisory lock: one feeder in the cluster claims at a time
PAIRS_TTL = 1.0  # seconds a scan of the (host, job) pairs serves the claims that follow
# ... but a claim that fell short of its limit scans them again once the last scan is older
# than this many times what it cost (its wall time: a busy loop only makes scans rarer): new
# hosts (a crawl's start, one level's links bringing hundreds) are claimed within a few claims,
# and the scans (each with the claim it is followed by) stay a small share of the time (at
# 1,000 pairs, about 25 ms: once a second, as PAIRS_TTL). A claim short for another reason (a
# fetcher kind's queue full, hosts at their cap) scans as often, to no gain, within that share.
SCAN_SPACING = 40
_START: tuple[str, int] = ("", -1)  # before every (host, job) pair


class DueFrontier:
    """A host-aware, weighted-fair frontier (issue 14; docs/architecture.md#the-frontier).

    Inside a (host, job) pair visits go in ``rank`` order (the job's queue order, written by
    every writer of pending rows with ``harvester_rank``); a host with a cap (politeness delay
    above 0) gets at most ``cap(host)`` visits published at once, none while it backs off or
    while its robots.txt is being fetched, and only as its starts come due (those within
    ``host_start_window`` of its next start); the room a host has goes to the job this frontier
    served least there lately (``served``: its claims of the host, decayed with half-life
    ``fair_window``), weighted by ``2 ** job.priority``, so a new job takes every slot that
    frees on a host a big job has been crawling until it has caught up, and two jobs that stay
    share the host by their weights; the claim's ``limit`` is shared between jobs by
    the rows they get in it, weighted the same way. Held rows (a paused job's) and rows another
    transaction holds are skipped; rows not yet ``due`` wait.

    ``served`` lives in memory: each foreman's feeder counts its own claims (the feed lock makes
    them take turns, so each sees its share of every job's service); a restart starts from
    nothing, as a new job does. It orders, never limits: the caps, the room and what is due are
    read from PostgreSQL at every claim.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings or Settings()
        self._cursor = _START  # where the next scan of (host, job) pairs starts (wraps)
        self._paces: dict[str, tuple[int | None, float | None]] = {}  # host -> (cap, delay)
        self._served: dict[tuple[str, int], tuple[float, float]] = {}  # (count, as of when)
        self._pruned = -math.inf
        self._pairs: list[asyncpg.Record] = []  # the last scan of the pairs
        self._scanned = -math.inf  # when (each pair carries the newest job's id then: top)
        # the last scan's pairs as the claims take them (``_batch``): (scan, full kinds, batch)
        self._batched: tuple[Sequence[asyncpg.Record], frozenset[str], _Batch] | None = None
        self._scan_cost = 0.0  # seconds the last scan took

    def served(self, host: str, job_id: int, now: float) -> float:
        """The claims of ``host`` for ``job_id`` by this frontier, each decayed with half-life
        ``fair_window`` (seconds) to ``now`` (``time.monotonic``)."""
        count, at = self._served.get((host, job_id), (0.0, now))
        return float(count * 0.5 ** ((now - at) / self._settings.fair_window))

    def _count(self, took: Mapping[tuple[str, int], int], now: float) -> None:
        for (host, job_id), n in took.items():
            self._served[host, job_id] = (self.served(host, job_id, now) + n, now)
        if now - self._pruned > self._settings.fair_window:  # forget what decayed to nothing
            self._pruned = now
            self._served = {k: (c, at) for k, (c, at) in self._served.items()
                            if self.served(*k, now) >= 0.01}

    def cap(self, host: str) -> int | None:
        """Visits of ``host`` published at once at most: its concurrency (the slots the gate
        leases: a visit beyond them is deferred at once, its room refilled by another, a churn
        that also puts other jobs' visits behind), plus ``host_lookahead`` seconds of starts
        (no more than fit in ``politeness_horizon``; 0 by default). None: uncapped (no delay:
        only the gate's concurrency paces the host; or a row written without its host)."""
        return self._pace(host)[0]

    def _pace(self, host: str) -> tuple[int | None, float | None]:
        """``host``'s cap (``cap``) and, when capped, its delay (seconds between starts)."""
        try:
            return self._paces[host]
        except KeyError:
            pass
        pace: tuple[int | None, float | None] = (None, None)
        if host:
            limit = self._settings.host_limit(host)
            if limit.delay > 0:
                ahead = min(math.ceil(self._settings.host_lookahead / limit.delay),
                            math.floor(self._settings.politeness_horizon / limit.delay))
                pace = (limit.concurrency + ahead, limit.delay)
        if len(self._paces) >= 100_000:
            self._paces.clear()
        self._paces[host] = pace
        return pace

    async def claim(self, conn: asyncpg.Connection, limit: int) -> list[Key]:
        """Mark up to ``limit`` unpublished due visits as published and return them, in the
        order to publish them.

        Run it in a transaction and publish the rows before committing: a crash in between
        rolls the marks back, so the rows are published again (a duplicate, which processing
        ignores), never lost. One feeder claims at a time (a transaction-level advisory lock;
        another gets ``[]``), so each host's room is exact. SKIP LOCKED skips rows a commit is
        holding.

        Two statements: the (host, job) pairs with unpublished rows (a skip scan of
        ``job_pending_frontier`` from a rotating cursor, ``feed_pairs`` at most) with each job's
        priority and whether its host waits (backoff, robots.txt); then the claim itself, each
        pair whose host does not wait taking a share of ``limit``. A third only when that fell
        short of ``limit`` while some pairs took their whole share (others had nothing due:
        their rows deferred): the rest of ``limit``, shared by those pairs.

        The pairs scanned serve the claims of the next ``PAIRS_TTL`` seconds (at 1,000 hosts
        the scan costs about what the claim does), with, instead of the scan, a cheaper
        statement that takes the lock and reads the newest job's id: a new job has the pairs
        scanned again at once, and so has a claim in which some pair with room had no row due
        (it ran dry: a new host of a running job may be waiting), or that fell short of
        ``limit`` once the last scan is older than ``SCAN_SPACING`` times what it cost (the
        known hosts are at their cap: new ones may be waiting), which then claims again over
        the new scan. So a pair missing from the scan waits for the next short claim after
        that spacing (tens of milliseconds at a crawl's start, when the pairs are few and each
        level brings new hosts; about a second at 1,000 pairs), ``PAIRS_TTL`` at most, as does
        a job's new priority; a host's new back-off is read by every claim
        (``host.backoff_until``).
        """
        return [(r["job_id"], r["url_id"]) for r in await self._claim_rows(conn, limit, None, ())]

    async def claim_planned(self, conn: asyncpg.Connection, limit: int, *,
                            cache_max_age: float, known_traps: Container[int] = (),
                            full_kinds: Collection[str] = (), lead: float = 0.0,
                            ) -> list[Planned]:
        """``claim``, each visit planned in the same statement, with the select list
        ``visits.plan`` uses (``visits.plan_columns``: the two cannot decide differently), in
        the order to publish them; pairs whose job's fetcher kind is in ``full_kinds`` (its
        work queue at its limit) are left out, so their rows stay unpublished rather than
        being claimed, refused and put back. ``traps`` is read only for a job not in
        ``known_traps``. The claim's rows are planned by primary key (``job_visit``, ``job``,
        ``url``), ``limit`` at most: a claim's cost grows by what ``plan`` would cost for them.
        ``lead``: seconds a visit published now waits in the queue before a worker takes it; a
        capped host's starts due within that much longer are published, so that its visit
        reaches the gate about when its turn comes.
        """
        rows = await self._claim_rows(conn, limit, (float(cache_max_age), known_traps),
                                      full_kinds, lead)
        return [planned(r) for r in rows]

    async def _claim_rows(self, conn: asyncpg.Connection, limit: int,
                          plan: tuple[float, Container[int]] | None,
                          full_kinds: Collection[str], lead: float = 0.0,
                          ) -> list[asyncpg.Record]:
        """The claim's rows in the order to publish them: (job_id, url_id, ...), planned
        (``visits.plan_columns``) when ``plan`` gives (cache_max_age, known_traps)."""
        if limit <= 0:
            return []
        # a capped host's starts published: those due within this many seconds of its next
        window = self._settings.host_start_window + self._settings.host_lookahead + lead
        now = time.monotonic()
        cached = bool(self._pairs) and now - self._scanned < PAIRS_TTL
        if cached:
            lock = await conn.fetchrow(_LOCK, FEED_LOCK)
            if not lock["ok"]:
                return []  # another feeder is claiming
            cached = lock["top"] == self._pairs[0]["top"]
        rows, dry = await self._claim_pairs(
            conn, self._pairs if cached else await self._scan(conn, now), limit, now, plan,
            full_kinds, window)
        if cached and len(rows) < limit and (
                dry or now - self._scanned >= SCAN_SPACING * self._scan_cost):
            more, _ = await self._claim_pairs(conn, await self._scan(conn, now),
                                              limit - len(rows), now, plan, full_kinds, window)
            rows += more
        return rows

    async def _scan(self, conn: asyncpg.Connection, now: float) -> list[asyncpg.Record]:
        """The pairs from the cursor on (``_PAIRS``), kept for the claims that follow."""
        t0 = time.perf_counter()
        pairs = list(await conn.fetch(_PAIRS, FEED_LOCK, *self._cursor,
                                      self._settings.feed_pairs))
        self._scan_cost = time.perf_counter() - t0
        if len(pairs) < self._settings.feed_pairs:
            self._cursor = _START  # the end was reached: next time from the start
        else:
            self._cursor = (pairs[-1]["host"], pairs[-1]["job_id"])
        self._pairs, self._scanned = pairs, now
        return pairs

    async def _claim_pairs(self, conn: asyncpg.Connection, pairs: Sequence[asyncpg.Record],
                           limit: int, now: float, plan: tuple[float, Container[int]] | None,
                           full_kinds: Collection[str], window: float,
                           ) -> tuple[list[asyncpg.Record], bool]:
        """The claim over ``pairs`` (but those of a kind in ``full_kinds``; ``window``: see
        ``_claim``): the rows, and whether some pair with room had no row due."""
        batch = self._batch(pairs, frozenset(full_kinds), now)
        if not batch.hosts:  # every pair's host waits: dry, so a back-off's end is seen at once
            return [], batch.full_kind < len(pairs)  # (a full kind is not: its queue is read anew)
        # the plan's cache age, and the jobs whose traps it reads (those not known yet)
        planning = None if plan is None else (
            plan[0], sorted({j for j in batch.job_ids if j not in plan[1]}))
        rows, full, took, dry = await _claim(conn, batch, limit, window, planning)
        if len(rows) < limit and full:
            again = batch.subset(full)
            again.served[:] = [s + took[h, j] for s, h, j
                               in zip(again.served, again.hosts, again.job_ids, strict=True)]
            more, _, more_took, _ = await _claim(conn, again, limit - len(rows), window,
                                                 planning)
            rows += more
            took += more_took
        self._count(took, now)
        return rows, dry

    def _batch(self, pairs: Sequence[asyncpg.Record], full_kinds: frozenset[str],
               now: float) -> _Batch:
        """The scanned ``pairs`` as a claim takes them: those whose host does not wait and
        whose kind is not in ``full_kinds``, in the feeder's order (``_order``), built once
        per scan (1,000 pairs cost about 2 ms of Python); only the recent service of the pairs
        sharing a host with another job's is read anew for each claim (that of a host's only
        pair orders nothing: its rows go by rank)."""
        if self._batched is not None and self._batched[0] is pairs \
                and self._batched[1] == full_kinds:
            batch = self._batched[2]
            for i in batch.shared:
                batch.served[i] = self.served(batch.hosts[i], batch.job_ids[i], now)
            return batch
        entries: list[_Pair] = []
        full_kind = 0  # pairs left out for their kind's full work queue
        for p in pairs:
            if full_kinds and p["fetcher"] in full_kinds:
                full_kind += 1
                continue
            if p["waiting"]:
                continue  # backing off or waiting for robots.txt
            cap, delay = self._pace(p["host"])
            entries.append(_Pair(p["host"], p["job_id"], 2.0 ** p["priority"],
                                 self.served(p["host"], p["job_id"], now), cap, delay,
                                 p["backlog"]))
        entries = _order(entries)
        per_host = Counter(e.host for e in entries)
        batch = _Batch([e.host for e in entries], [e.job_id for e in entries],
                       [e.weight for e in entries], [e.cap for e in entries],
                       [e.delay for e in entries], [e.served for e in entries],
                       [i for i, e in enumerate(entries) if per_host[e.host] > 1], full_kind)
        self._batched = (pairs, full_kinds, batch)
        return batch

    async def unclaim(self, conn: asyncpg.Connection, keys: Sequence[Key]) -> None:
        """Mark claimed visits unpublished (their publish failed): claimed again soon, due as
        they were."""
        await conn.execute(f"""
            WITH k AS MATERIALIZED ({_LOCK_KEYS})
            UPDATE job_pending p SET published_on = NULL
            FROM k WHERE p.job_id = k.job_id AND p.url_id = k.url_id""",
            [k[0] for k in keys], [k[1] for k in keys])

    async def defer(self, conn: asyncpg.Connection, due: Mapping[Key, datetime]) -> None:
        """Put visits back in the frontier until ``due`` (the feeder publishes them then)."""
        keys = sorted(due)
        await conn.execute(f"""
            WITH k AS MATERIALIZED ({_LOCK_KEYS})
            UPDATE job_pending p SET published_on = NULL, due = d.due
            FROM k, unnest($1::bigint[], $2::bigint[], $3::timestamptz[]) AS d(job_id, url_id, due)
            WHERE p.job_id = k.job_id AND p.url_id = k.url_id
              AND d.job_id = k.job_id AND d.url_id = k.url_id""",
            [k[0] for k in keys], [k[1] for k in keys], [due[k] for k in keys])

    async def hold(self, conn: asyncpg.Connection, keys: Sequence[Key]) -> None:
        """Put back, unpublished, visits of a paused job whose message arrived: held (never
        claimed) while the job is paused. ``held`` follows the job's state as this statement
        sees it, so a resume that committed after the visits were planned leaves them due."""
        await conn.execute(f"""
            WITH k AS MATERIALIZED ({_LOCK_KEYS})
            UPDATE job_pending p SET published_on = NULL, held = (j.state = 'paused')
            FROM k, job j
            WHERE p.job_id = k.job_id AND p.url_id = k.url_id AND j.id = p.job_id""",
            [k[0] for k in keys], [k[1] for k in keys])

    async def count_attempt(self, conn: asyncpg.Connection, key: Key) -> None:
        """Count a failed fetch attempt on the visit. Counting here, not in JetStream's delivery
        count, keeps the count across re-publications, deferrals and redeliveries. The retry
        that follows is a fresh claim: ``published_on`` restarts, so the watchdog
        (``requeue_stale``) does not take a visit in the middle of its retries for a lost one
        and publish it again."""
        await conn.execute("""
            UPDATE job_pending SET attempts = attempts + 1, published_on = now()
            WHERE job_id = $1 AND url_id = $2""",
            key[0], key[1])

    async def requeue_stale(self, conn: asyncpg.Connection, stale_after: float,
                            max_requeues: int, limit: int = 1000) -> int:
        """Publish again visits that were published long ago and are still pending (a lost or
        undeliverable message), at most ``limit`` of them, oldest first; returns how many.
        Rows a transaction holds (a commit in progress) are skipped, not waited for."""
        return int((await conn.fetchval("""
            WITH s AS (
                SELECT job_id, url_id FROM job_pending
                WHERE published_on < now() - make_interval(secs => $1) AND requeues < $2
                ORDER BY published_on
                LIMIT $3
                FOR UPDATE SKIP LOCKED
            ), r AS (
                UPDATE job_pending p SET published_on = NULL, requeues = p.requeues + 1,
                                         due = now()
                FROM s WHERE p.job_id = s.job_id AND p.url_id = s.url_id
                RETURNING 1)
            SELECT count(*) FROM r""", float(stale_after), max_requeues, limit)) or 0)

    async def abandoned(self, conn: asyncpg.Connection, stale_after: float, max_requeues: int,
                        limit: int = 500) -> list[tuple[Key, int]]:
        """Visits still pending after every requeue: (key, requeues), to be recorded as
        failed."""
        rows = await conn.fetch("""
            SELECT job_id, url_id, requeues FROM job_pending
            WHERE published_on < now() - make_interval(secs => $1) AND requeues >= $2
            ORDER BY job_id, url_id LIMIT $3""", float(stale_after), max_requeues, limit)
        return [((r["job_id"], r["url_id"]), r["requeues"]) for r in rows]

    async def hold_unserved(self, conn: asyncpg.Connection, served: Sequence[str],
                            stale_after: float) -> int:
        """Restart the staleness clock (``published_on``) of stale published visits of jobs
        whose fetcher kind no live worker serves (not in ``served``), without counting a
        requeue: their messages wait on a queue nobody reads yet, which is not a lost message.
        Re-publishing them would only pile copies on that queue and, after ``max_requeues``
        rounds, fail the visits of a job that is merely waiting for its worker (``/status``
        says so). Once a worker of the kind beats, the clock runs again from the last hold."""
        return int((await conn.fetchval("""
            WITH k AS MATERIALIZED (
                SELECT p.job_id, p.url_id FROM job_pending p JOIN job j ON j.id = p.job_id
                WHERE j.fetcher <> ALL($1::text[])
                  AND p.published_on < now() - make_interval(secs => $2)
                ORDER BY p.job_id, p.url_id
                FOR NO KEY UPDATE OF p),
            h AS (
                UPDATE job_pending p SET published_on = now()
                FROM k WHERE p.job_id = k.job_id AND p.url_id = k.url_id
                RETURNING 1)
            SELECT count(*) FROM h""", list(served), float(stale_after))) or 0)


# The pending rows of the keys ($1 job ids, $2 url ids), locked in key order before a multi-row
# UPDATE writes them: two transactions putting back overlapping rows (a worker's deferrals, a
# foreman's holds, a feeder's unclaim) then wait for each other in one order, never in a cycle
# (an UPDATE ... FROM unnest locks rows in whatever order its join reads them). Each row is
# read by its primary key in a LATERAL subquery, in the keys' sorted order (a nested loop keeps
# its outer order, so the locks are taken in it): as a plain join, the planner hashed the keys
# against a sequential scan of job_pending whenever the keys were a fair share of the table, a
# cost that grew with the frontier (bench/frontier_scale.py).
_LOCK_KEYS = """
    SELECT p.job_id, p.url_id
    FROM (SELECT * FROM unnest($1::bigint[], $2::bigint[]) AS u(job_id, url_id)
          ORDER BY 1, 2) u
    CROSS JOIN LATERAL (
        SELECT p.job_id, p.url_id FROM job_pending p
        WHERE p.job_id = u.job_id AND p.url_id = u.url_id
        FOR NO KEY UPDATE OF p) p"""

# A frontier row (``job_pending p``) the feeder may claim: unpublished, not held. Exactly the
# predicate of the index job_pending_frontier (migration 0019), so the claims can use it.
_UNPUBLISHED = "p.published_on IS NULL AND NOT p.held"
# ... and due now.
_DUE = _UNPUBLISHED + " AND p.due <= now()"
# A pair's backlog is counted up to this many rows (``_PAIRS``): enough to tell the hosts that
# would finish last from the others, at a bounded cost per pair however big the frontier.
BACKLOG_CAP = 64
# The pairs with room whose rows a claim of ``limit`` reads: LIVE_PER_ROW per row asked for
# (LIVE_MIN at least), the first in the feeder's order (``_order``), so a claim of
# 64 rows over 1,000 capped hosts locks and sorts a few hundred candidate rows, not 2,000.
LIVE_PER_ROW = 2
LIVE_MIN = 16

# The (host, job) pairs with unpublished, unheld rows, from the cursor ($2, $3) on, $4 at most,
# only if this transaction gets the feed lock ($1), with the newest job's id (top); a job's (its
# priority), whether the host waits (backing off, or its robots.txt being fetched for the
# first time: after a failed fetch the gate decides, deferring until the retry or, once given
# up, refusing the visits) and the pair's backlog (its rows due now, BACKLOG_CAP at most).
_PAIRS = f"""
    WITH RECURSIVE l AS MATERIALIZED (SELECT pg_try_advisory_xact_lock($1) AS ok,
                                             (SELECT max(id) FROM job) AS top),
    pairs AS (
        (SELECT p.host, p.job_id FROM job_pending p, l
         WHERE l.ok AND {_UNPUBLISHED}
           AND (p.host, p.job_id) > ($2::text, $3::bigint)
         ORDER BY p.host, p.job_id LIMIT 1)
        UNION ALL
        SELECT n.host, n.job_id FROM pairs c, LATERAL (
            SELECT p.host, p.job_id FROM job_pending p
            WHERE {_UNPUBLISHED}
              AND (p.host, p.job_id) > (c.host, c.job_id)
            ORDER BY p.host, p.job_id LIMIT 1) n)
    SELECT q.host, q.job_id, j.priority, j.fetcher, (SELECT top FROM l) AS top, b.backlog,
           coalesce(h.backoff_until > now()
                    OR (h.robots_fetched_on IS NULL AND h.robots_failures = 0
                        AND h.robots_fetching_until > now()),
                    false) AS waiting
    FROM (SELECT host, job_id FROM pairs LIMIT $4) q
    JOIN job j ON j.id = q.job_id
    LEFT JOIN host h ON h.host = q.host
    CROSS JOIN LATERAL (
        SELECT count(*) AS backlog FROM (
            SELECT FROM job_pending p
            WHERE p.host = q.host AND p.job_id = q.job_id AND {_DUE}
            LIMIT {BACKLOG_CAP}) z) b
    ORDER BY q.host, q.job_id"""

# The feed lock without a scan of the pairs, and the newest job's id (a new job: scan again).
_LOCK = "SELECT pg_try_advisory_xact_lock($1) AS ok, (SELECT max(id) FROM job) AS top"

# The claim. pr: the pairs ($1 hosts, $2 jobs, $3 weights, $7 their recent service on the
# host, $5 their host's cap, NULL: uncapped; each an array literal: ``_Batch.columns``) in the
# feeder's order of preference (n:
# ``_order``), each taking $4 rows at most; busy: published rows per host, read once (grouped:
# every published row in one pass, the feed-ahead budget's worth, hash-joined to the pairs,
# never a rescan per host); roomy: the pairs whose host has room (or no cap): the cap less its
# published rows, and no more than its starts due within $10 seconds (host_start_window, plus
# the queue's wait in front of a visit published now: ``lead``) of its next start, the latest
# of the gate's last lease (next_start), the row published last plus the delay ($9: published,
# not yet leased, it takes that start), a back-off's end and now (a visit published sooner
# sleeps in a worker's slot until its start; the count is bounded before its cast: a
# Retry-After years ahead must not overflow it); live: the first $8 of them, the only ones
# whose pending rows are read. Per pair its first rows by rank, as many
# as its host has room for; per capped host the room goes to the rows with the least service
# before them (k: the pair's recent service plus the rows before it in this claim, over the
# job's weight); then the limit ($6) to one row per capped host first (a host's second would
# wait its delay in the gate, holding a worker's slot), and to the least served jobs in this
# claim (their n-th row, over the weight; within a job the capped hosts' rows in the pairs'
# order, then the uncapped ones' by rank). Levels stay exact in any order. The caller sorts
# the rows by (second, jk, rank): RETURNING keeps no order. A last row, its url_id NULL:
# whether some pair with room had no row due (dry).
_CLAIM_WITH = f"""
    WITH pr AS (
        SELECT * FROM unnest($1::text::text[], $2::text::bigint[], $3::text::float8[],
                             $7::text::float8[], $5::text::int[], $9::text::float8[])
                      WITH ORDINALITY AS t(host, job_id, w, s, cap, d, n)),
    busy AS (
        SELECT p.host, count(*) AS n, max(p.published_on) AS last
        FROM job_pending p
        WHERE p.published_on IS NOT NULL
        GROUP BY p.host),
    roomy AS MATERIALIZED (
        SELECT pr.host, pr.job_id, pr.w, pr.s, pr.n, r.room
        FROM pr LEFT JOIN busy b ON b.host = pr.host
        LEFT JOIN host h ON h.host = pr.host AND pr.cap IS NOT NULL
        CROSS JOIN LATERAL (
            SELECT CASE WHEN pr.cap IS NOT NULL THEN least(
                pr.cap - coalesce(b.n, 0),
                1 + greatest(-1, least(pr.cap, floor(($10::float8 - extract(epoch FROM greatest(
                        h.next_start, h.backoff_until, b.last + make_interval(secs => pr.d),
                        now()) - now())) / pr.d)))::int) END AS room) r
        WHERE pr.cap IS NULL OR r.room > 0),
    live AS MATERIALIZED (
        SELECT * FROM roomy ORDER BY n LIMIT $8),
    cand AS MATERIALIZED (
        SELECT l.host, l.job_id, l.w, l.room, l.n, x.url_id, x.rank,
               l.s + row_number() OVER (PARTITION BY l.host, l.job_id ORDER BY x.rank) AS k
        FROM live l
        CROSS JOIN LATERAL (
            SELECT p.url_id, p.rank FROM job_pending p
            WHERE p.host = l.host AND p.job_id = l.job_id AND {_DUE}
            ORDER BY p.rank
            LIMIT CASE WHEN l.room IS NULL THEN $4::int ELSE least($4::int, l.room) END
            FOR UPDATE SKIP LOCKED) x),
    kept AS (
        SELECT job_id, url_id, rank, w, room, n,
               row_number() OVER (PARTITION BY host ORDER BY k / w, rank) AS hn
        FROM cand),
    pick AS (
        SELECT job_id, url_id, rank,
               row_number() OVER (PARTITION BY job_id ORDER BY room IS NULL,
                                  CASE WHEN room IS NOT NULL THEN n END, rank) / w AS jk,
               room IS NOT NULL AND hn > 1 AS second
        FROM kept WHERE room IS NULL OR hn <= room
        ORDER BY second, jk, rank
        LIMIT $6),
    upd AS (
        UPDATE job_pending p SET published_on = now()
        FROM pick
        WHERE p.job_id = pick.job_id AND p.url_id = pick.url_id AND p.published_on IS NULL
        RETURNING p.host, p.job_id, p.url_id, pick.second, pick.jk, pick.rank{{returning}})"""
_CLAIM_DRY = """EXISTS (SELECT FROM live l
                   WHERE NOT EXISTS (SELECT FROM cand c
                                     WHERE c.host = l.host AND c.job_id = l.job_id))"""
_CLAIM = _CLAIM_WITH.format(returning="") + f"""
    SELECT host, job_id, url_id, second, jk, rank, NULL::bool AS dry FROM upd
    UNION ALL
    SELECT NULL, NULL, NULL, NULL, NULL, NULL,
           {_CLAIM_DRY}"""

# The planned rows of a claim (``claim_planned``): the claimed rows joined to their visit, job
# and URL by primary key (the select list of ``visits.plan``). The visit and the URL are read
# in LATERAL subqueries (LIMIT 1 keeps the planner from flattening them): a probe of the primary
# key per claimed row, 1,000 at most, however big the tables; as plain joins, once the tables
# were analyzed, the planner hashed the claim against a sequential scan of job_visit.
_PLAN_JOINS = """
    FROM upd p
    CROSS JOIN LATERAL (SELECT * FROM job_visit v
                        WHERE v.job_id = p.job_id AND v.url_id = p.url_id LIMIT 1) v
    JOIN job j ON j.id = p.job_id
    CROSS JOIN LATERAL (SELECT * FROM url u WHERE u.id = p.url_id LIMIT 1) u"""


def _planning(max_age: str, traps_of: str) -> str:
    return (plan_columns(max_age, f"(p.job_id = ANY({traps_of}::bigint[]))") + _PLAN_JOINS)


# _CLAIM, planned: the dry flag on every row (one row of NULLs but it when nothing was claimed).
_CLAIM_PLANNED = _CLAIM_WITH.format(returning=", p.reexpand, p.attempts") + f"""
    SELECT d.dry, x.* FROM (SELECT {_CLAIM_DRY} AS dry) d
    LEFT JOIN (SELECT p.host, p.second, p.jk, p.rank, {_planning("$11", "$12")}) x ON true"""

@dataclass(frozen=True, slots=True)
class _Pair:
    host: str
    job_id: int
    weight: float
    served: float   # its recent service (``DueFrontier.served``)
    cap: int | None  # its host's (``DueFrontier.cap``); None: uncapped
    delay: float | None  # its host's seconds between starts when capped
    backlog: int    # rows due at the scan (BACKLOG_CAP at most)


def _order(pairs: list[_Pair]) -> list[_Pair]:
    """The claim's preference among the pairs (the first ``LIVE_PER_ROW`` x limit with room
    are read). Per job: its capped hosts first, the longest backlog first (then the least
    served), so that a politeness-bound host's turn is not left unused and the hosts that would
    finish last go first (longest work first: no tail of a few hosts crawling alone at their
    delay at the end); then its uncapped ones, least served first; last the pairs that had
    nothing due at the scan (all deferred: a Crawl-delay, a rate limit), which would otherwise
    take the places of pairs with work and, read every claim, find nothing (a rescan, which
    orders them anew, follows a claim that met one). The jobs interleaved by weight (a job's
    i-th pair at (i + 1) / weight; on a tie the least served job first), so every job has its
    share of the pairs read."""
    by_job: dict[int, list[_Pair]] = {}
    for p in pairs:
        by_job.setdefault(p.job_id, []).append(p)
    keyed: list[tuple[float, float, int, _Pair]] = []
    for job_id, mine in by_job.items():
        mine.sort(key=lambda p: (p.backlog == 0, p.cap is None,
                                 0 if p.cap is None else -p.backlog, p.served))
        total = sum(p.served for p in mine)
        keyed += [((i + 1) / p.weight, total, job_id, p) for i, p in enumerate(mine)]
    keyed.sort(key=lambda k: k[:3])
    return [k[3] for k in keyed]


@dataclass(slots=True)
class _Batch:
    """Pairs as the claim's statement takes them (one array per column, in the feeder's
    order)."""
    hosts: list[str]
    job_ids: list[int]
    weights: list[float]
    caps: list[int | None]
    delays: list[float | None]  # their host's delay (None: uncapped)
    served: list[float]
    shared: list[int]  # the pairs whose host has another job's pair too
    full_kind: int = 0  # pairs left out for their kind's full work queue

    # the columns as array literals (``columns``), made at the first claim; ``served`` kept
    # only while no pair shares its host (``_batch`` then updates it for every claim)
    fixed: tuple[str, str, str, str, str] | None = None
    served_literal: str | None = None
    positions: dict[tuple[str, int], int] | None = None  # (host, job id) -> its index

    def position(self, pair: tuple[str, int]) -> int:
        """The index of the pair (host, job id) in the batch."""
        if self.positions is None:
            self.positions = {p: i for i, p in enumerate(zip(self.hosts, self.job_ids))}
        return self.positions[pair]

    def subset(self, index: list[int]) -> _Batch:
        return _Batch([self.hosts[i] for i in index], [self.job_ids[i] for i in index],
                      [self.weights[i] for i in index], [self.caps[i] for i in index],
                      [self.delays[i] for i in index], [self.served[i] for i in index], [])

    def columns(self) -> tuple[str, str, str, str, str, str]:
        """hosts, job ids, weights, caps, delays and served as PostgreSQL array literals (the
        claim casts each ``$n::text::T[]``). asyncpg encodes a list element by element (about
        1.1 ms of the feeder's CPU a claim over 1,000 pairs' six columns, against 0.08 ms for
        six strings); the literals of the columns that do not change between claims are made
        once per scan, ``served`` anew when some pair shares its host (``_batch`` updates it)."""
        if self.fixed is None:
            self.fixed = (_literal(self.hosts), _literal(self.job_ids), _literal(self.weights),
                          _literal(self.caps), _literal(self.delays))
        if self.served_literal is None or self.shared:
            self.served_literal = _literal(self.served)
        return (*self.fixed, self.served_literal)


def _element(value: str | float | None) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):  # quoted, so that any text (commas, braces, NULL) stays itself
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)  # an int, or a float written exactly (repr round-trips, subnormals too)


def _literal(values: Sequence[str | float | None]) -> str:
    """A one-dimensional PostgreSQL array literal of ``values`` (None: NULL)."""
    return "{" + ",".join(map(_element, values)) + "}"


async def _claim(conn: asyncpg.Connection, batch: _Batch, limit: int, window: float,
                 plan: tuple[float, list[int]] | None = None,
                 ) -> tuple[list[asyncpg.Record], list[int], Counter[tuple[str, int]], bool]:
    """One claim over the ``batch`` of pairs (``hosts[i]``, ``job_ids[i]``) (``served``: their
    recent service; ``caps``: their host's cap), each taking a share of ``limit`` (twice its even
    part, 2 at least, so that pairs with fewer due rows leave room to the others): the keys in
    the order to publish them, which pairs took their whole share and whose host may take more
    (uncapped, or capped above the share: a pair capped at its share filled its host), how
    many rows each pair took, and whether some pair with room had no row due. The rows are
    planned (``_CLAIM_PLANNED``) when ``plan`` gives the cache age and the jobs whose traps
    to read. ``window``: a capped host's starts due within this many seconds of its next start
    are published (``host_start_window``, ``host_lookahead`` and the queue's wait)."""
    hosts, job_ids, caps = batch.hosts, batch.job_ids, batch.caps
    if len(hosts) == 1 and caps[0] is None:  # one job on one uncapped host (a bench): by rank
        if plan is None:
            rows = await conn.fetch(_CLAIM_ONE, hosts[0], job_ids[0], limit)
        else:
            rows = await conn.fetch(_CLAIM_ONE_PLANNED, hosts[0], job_ids[0], limit, *plan)
        return (sorted(rows, key=lambda r: r["rank"]), [],
                Counter({(hosts[0], job_ids[0]): len(rows)}), not rows)
    share = limit if len(hosts) == 1 else max(2, math.ceil(2 * limit / len(hosts)))
    hosts_, job_ids_, weights, caps_, delays, served = batch.columns()
    args = (hosts_, job_ids_, weights, share, caps_, limit, served,
            max(LIVE_PER_ROW * limit, LIVE_MIN), delays, window)
    if plan is None:
        got = await conn.fetch(_CLAIM, *args)
        rows = [r for r in got if r["url_id"] is not None]
        dry = any(r["dry"] for r in got if r["url_id"] is None)
    else:
        got = await conn.fetch(_CLAIM_PLANNED, *args, *plan)
        rows = [r for r in got if r["url_id"] is not None]
        dry = bool(got and got[0]["dry"])
    took = Counter((r["host"], r["job_id"]) for r in rows)
    full = sorted(i for pair, n in took.items() if n >= share
                  and ((cap := caps[i := batch.position(pair)]) is None or cap > share))
    rows = sorted(rows, key=lambda r: (r["second"], r["jk"], r["rank"]))
    return rows, full, took, dry


# The claim when there is one (host, job) pair and its host is uncapped: _CLAIM's result, with
# a plan as cheap as the one before fairness (no windows to plan).
_CLAIM_ONE_FROM = f"""
    WITH c AS (
        SELECT p.job_id, p.url_id FROM job_pending p
        WHERE p.host = $1 AND p.job_id = $2 AND {_DUE}
        ORDER BY p.rank
        LIMIT $3
        FOR UPDATE SKIP LOCKED)"""
_CLAIM_ONE = _CLAIM_ONE_FROM + """
    UPDATE job_pending p SET published_on = now()
    FROM c WHERE p.job_id = c.job_id AND p.url_id = c.url_id
    RETURNING p.job_id, p.url_id, p.rank"""
# ... planned ($4 the cache age, $5 the jobs whose traps to read).
_CLAIM_ONE_PLANNED = _CLAIM_ONE_FROM + f""", upd AS (
        UPDATE job_pending p SET published_on = now()
        FROM c WHERE p.job_id = c.job_id AND p.url_id = c.url_id
        RETURNING p.job_id, p.url_id, p.rank, p.reexpand, p.attempts)
    SELECT p.rank, {_planning("$4", "$5")}"""
