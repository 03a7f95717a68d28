"""``create_app(settings)``: the aiohttp application and its dependencies.

The web server starts whether or not PostgreSQL and NATS are up: the pool opens connections on
demand, and NATS is connected in the background. While either is down, requests that need it
get 503 ``{"code": "Unavailable"}`` at once instead of hanging, and no job is accepted that
could not be queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from shared import bus
from shared.config import Settings
from shared.db.pool import open_pool
from web_server.deps import Deps
from web_server.middleware import errors
from web_server.routes import DEPS, SETTINGS, add_routes

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> web.Application:
    # Bodies are read with read_capped (maxRequestBytes -> 413), never request.read().
    app = web.Application(middlewares=[errors])
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_resources)
    add_routes(app, settings.root_path)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # Short timeouts: a request must not hang on a slow database.
    async with open_pool(settings.database_url, min_size=0, max_size=10, timeout=5,
                         command_timeout=30) as pool:
        deps = app[DEPS] = Deps(pool)
        connecting = asyncio.create_task(_connect_nats(settings, deps))
        try:
            yield
        finally:
            connecting.cancel()  # bus.connect flushes and closes the connection on its way out
            with contextlib.suppress(asyncio.CancelledError):
                await connecting


async def _connect_nats(settings: Settings, deps: Deps) -> None:
    """Connect and set up the streams, retrying forever; nats-py reconnects after that."""
    while True:
        try:
            async with bus.connect(settings.nats_url, "harvester-web-server") as nc:
                deps.nc = nc
                js = nc.jetstream(timeout=5)
                await bus.ensure_streams(js, settings)
                deps.jetstream = js
                log.info("connected to NATS at %s", settings.nats_url)
                await asyncio.Event().wait()  # hold the connection until cleanup cancels us
        except bus.TRANSIENT as e:
            log.warning("NATS set-up failed (%s); retrying", e)
            deps.jetstream = None
            await asyncio.sleep(2)


def parse_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return (host.strip("[]") or "0.0.0.0"), int(port)


async def run(settings: Settings, stop: asyncio.Event) -> None:
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, port = parse_addr(settings.http_addr)
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    log.info("web server listening on http://%s:%d%s", host, port, settings.root_path)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
