"""The outbox: pending visits committed in ``job_pending`` are published from here, by the
foremen's feeders, as the queues have room. A new job's URLs are published this way too: the
web server only commits them, so a job is never refused for a full queue.

The claim plans each visit as it marks it (``Frontier.claim_planned``) and ``route`` decides it:
a visit to fetch goes straight to its fetcher kind's work queue (one message, one hop); any
other (answered from the store, dropped, held, blocked as a trap) to the URL queue, where the
foreman plans it again and answers it, so those writes stay in one place."""

from __future__ import annotations

import asyncio

import asyncpg
from nats.js import JetStreamContext

from foreman.rooms import KindRooms
from foreman.route import JobTraps, route
from shared import bus, metrics
from shared.config import Settings
from shared.db.frontier import Frontier
from shared.db.visits import Key


async def feed(settings: Settings, pool: asyncpg.Pool, js: JetStreamContext, limit: int,
               frontier: Frontier, traps: JobTraps, rooms: KindRooms,
               full_kinds: frozenset[str] = frozenset(), lead: float = 0.0) -> tuple[int, int]:
    """Publish up to ``limit`` pending visits not yet published, as ``frontier`` picks them
    (none of a kind in ``full_kinds``): those to fetch to their kind's work queue, in claim
    order, as far as it has room (``rooms``), the others to the URL queue. Returns how many
    went to the URL queue and how many to the work queues.

    The rows are marked in a transaction that commits only after JetStream stored the messages;
    rows whose publish failed, or whose kind's queue had no room left, are unmarked, so they
    are tried again, never lost. ``traps``: each job's trap limits, the foreman's. ``lead``:
    seconds a visit published now waits in the work queue (``schedule.transit``): a polite
    host's visit is published that much before its turn.
    """
    async with pool.acquire() as conn, conn.transaction():
        known = traps.known()
        planned = await frontier.claim_planned(conn, limit, cache_max_age=settings.cache_max_age,
                                               known_traps=known, full_kinds=full_kinds,
                                               lead=lead)
        if not planned:
            return 0, 0
        traps.learn(known, planned)
        work: dict[str, list[Key]] = {}  # by fetcher kind, in claim order: usually http alone
        answers: list[Key] = []  # for the foreman
        for p in planned:
            if route(p, known[p.job_id]).to == "fetch":
                work.setdefault(p.fetcher, []).append((p.job_id, p.url_id))
            else:
                answers.append((p.job_id, p.url_id))
        unsent: list[Key] = []
        sends: list[tuple[str, list[Key]]] = []
        for kind, keys in work.items():
            room = await rooms.take(kind, len(keys))
            sends.append((bus.work_subject(settings, kind), keys[:room]))
            unsent += keys[room:]  # its queue is full: back until it has room
        if answers:
            sends.append((settings.url_topic, answers))
        sends = [(subject, keys) for subject, keys in sends if keys]
        failed = await asyncio.gather(*(bus.publish_visits(js, subject, keys)
                                        for subject, keys in sends))
        to_url = to_work = 0
        for (subject, keys), refused in zip(sends, failed, strict=True):
            unsent += refused
            if subject == settings.url_topic:
                to_url += len(keys) - len(refused)
            else:
                to_work += len(keys) - len(refused)
        if unsent:
            await frontier.unclaim(conn, unsent)
    metrics.VISITS_FORWARDED.inc(to_work)
    return to_url, to_work
