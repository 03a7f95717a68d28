"""A worker process's heartbeat: its row in the live worker registry (``shared/db/workers.py``),
beaten every ``heartbeatInterval`` with the fetcher kinds it serves and its numbers
(``worker.stats``), deleted on a clean stop. The web server counts live workers per kind, so a
job whose kind no worker serves says so in ``/status`` instead of waiting silently."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import asyncpg

from shared.config import Settings
from shared.db import workers
from shared.db.pool import RETRYABLE
from shared.service import sleep_unless

log = logging.getLogger(__name__)

RETRY_AFTER = 1.0  # seconds before a failed beat is tried again (at most heartbeatInterval)
FIRST_AGAIN = 1.0  # seconds from the first beat to the second (at most heartbeatInterval)


def version() -> str:
    try:
        return importlib.metadata.version("harvester")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "dev"


async def heartbeat(settings: Settings, pool: asyncpg.Pool, kinds: Sequence[str],
                    stop: asyncio.Event, health: str | None = None,
                    on_beat: Callable[[], object] | None = None,
                    stats: Callable[[], Mapping[str, Any]] | None = None,
                    live: Callable[[int], object] | None = None) -> None:
    """Beat until ``stop`` is set, then forget this process. A PostgreSQL error is logged once
    (and its end once) and the beat tried again; it never ends the heartbeat. Start it once the
    worker serves its kinds (it looks at ``stop`` at once), run it under ``bus.supervise``.
    ``health``: why this worker cannot work (then ``kinds`` is empty); ``on_beat`` is called
    at each beat, reached PostgreSQL or not (the systemd watchdog's keep-alive: it says the
    event loop runs; PostgreSQL being away is not the worker's fault). ``stats`` (the
    process's ``WorkerStats.snapshot``) is read at each beat and stored with it. ``live`` is
    told the number of live workers serving a kind after each beat that reached PostgreSQL
    (the host gate shares a host's cap among them)."""
    me, host, pid, ver = uuid.uuid4(), socket.gethostname(), os.getpid(), version()
    failing = beaten = False
    if health is None:
        log.info("worker %s (%s pid %d) serves %s", me, host, pid, ", ".join(kinds))
    else:
        log.info("worker %s (%s pid %d) is unhealthy: %s", me, host, pid, health)
    while not stop.is_set():
        if on_beat is not None:
            on_beat()
        try:
            async with pool.acquire() as conn:
                n = await workers.beat(conn, me, kinds, host, pid, ver, health,
                                       None if stats is None else stats(),
                                       settings.worker_timeout)
            if live is not None:
                live(n)
        except (*RETRYABLE, asyncpg.PostgresError) as e:
            if not failing:
                log.warning("heartbeat failed (%s: %s); retrying, the worker may be shown as "
                            "not live meanwhile", type(e).__name__, e)
            failing = True
            await sleep_unless(stop, min(RETRY_AFTER, settings.heartbeat_interval))
            continue
        if failing:
            log.info("heartbeat beats again")
            failing = False
        # The second beat comes a second after the first: workers started together (the
        # first to beat counts itself alone) learn of each other at once (``live``).
        await sleep_unless(stop, settings.heartbeat_interval if beaten
                           else min(FIRST_AGAIN, settings.heartbeat_interval))
        beaten = True
    try:
        async with pool.acquire() as conn:
            await workers.forget(conn, me)
    except (*RETRYABLE, asyncpg.PostgresError) as e:  # it drops out after workerTimeout
        log.warning("could not remove worker %s from the registry (%s)", me, e)
