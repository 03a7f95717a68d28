"""``create_app(settings)``: the aiohttp application with its pool and NATS connection."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from shared import bus
from shared.config import Settings
from shared.db.pool import open_pool
from web_server.middleware import errors
from web_server.routes import JS, POOL, SETTINGS, add_routes

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[errors], client_max_size=settings.max_request_bytes)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_resources)
    add_routes(app, settings.root_path)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with open_pool(settings.database_url, min_size=1, max_size=10) as pool, \
            bus.connect(settings.nats_url, "harvester-web-server") as nc:
        js = nc.jetstream(timeout=10)
        await bus.ensure_streams(js, settings)
        app[POOL] = pool
        app[JS] = js
        yield


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
