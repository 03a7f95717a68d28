"""The outbox: pending visits committed in ``job_pending`` are published to the URL queue from
here, by the foremen's feeders, as the queue has room. A new job's URLs are published this way
too: the web server only commits them, so a job is never refused for a full queue."""

from __future__ import annotations

import asyncpg
from nats.js import JetStreamContext

from shared import bus
from shared.db.frontier import Frontier


async def feed(pool: asyncpg.Pool, js: JetStreamContext, topic: str, limit: int,
               frontier: Frontier) -> int:
    """Publish up to ``limit`` pending visits not yet on the URL queue, as ``frontier`` picks
    them; returns how many.

    The rows are marked in a transaction that commits only after JetStream stored the messages;
    rows whose publish failed are unmarked, so they are tried again, never lost.
    """
    async with pool.acquire() as conn, conn.transaction():
        keys = await frontier.claim(conn, limit)
        if not keys:
            return 0
        unsent = await bus.publish_visits(js, topic, keys)
        if unsent:
            await frontier.unclaim(conn, unsent)
        return len(keys) - len(unsent)
