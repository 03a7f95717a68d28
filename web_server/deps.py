"""The web server's dependencies as they are right now: the pool, and JetStream once connected."""

from __future__ import annotations

import asyncpg
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from shared.errors import DependencyUnavailable


class Deps:
    """PostgreSQL pool and JetStream context, as available right now."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.nc: NATS | None = None
        self.jetstream: JetStreamContext | None = None  # set once the streams are there

    @property
    def js(self) -> JetStreamContext:
        if self.jetstream is None or self.nc is None or not self.nc.is_connected:
            raise DependencyUnavailable("NATS")
        return self.jetstream
