"""The outbox: pending visits committed in ``job_pending`` are published to the URL queue from
here, by the foremen's feeders, as the queue has room. A new job's URLs are published this way
too: the web server only commits them, so a job is never refused for a full queue."""

from __future__ import annotations

import asyncpg
from nats.js import JetStreamContext

from shared import bus
from shared.db import visits


async def feed(pool: asyncpg.Pool, js: JetStreamContext, topic: str, limit: int) -> int:
    """Publish up to ``limit`` pending visits not yet on the URL queue; returns how many.

    The rows are marked in a transaction that commits only after JetStream stored the messages;
    rows whose publish failed are unmarked, so they are tried again, never lost.
    """
    async with pool.acquire() as conn, conn.transaction():
        keys = await visits.claim_unpublished(conn, limit)
        if not keys:
            return 0
        unsent = await bus.publish_visits(js, topic, keys)
        if unsent:
            await conn.execute("""
                UPDATE job_pending SET published_on = NULL
                FROM unnest($1::bigint[], $2::bigint[]) AS u(job_id, url_id)
                WHERE job_pending.job_id = u.job_id AND job_pending.url_id = u.url_id""",
                [k[0] for k in unsent], [k[1] for k in unsent])
        return len(keys) - len(unsent)
