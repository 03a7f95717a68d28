"""The ops port of the foreman and the workers: ``/metrics`` (Prometheus), ``/healthz``
(the process is alive) and ``/readyz`` (PostgreSQL and NATS reachable and, for a worker, its
init functions done; else 503 with ``{"code","message"}``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
from aiohttp import web
from nats.aio.client import Client as NATS
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

Ready = Callable[[], Awaitable[None]]


async def metrics_response(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def ready_response(ready: Ready) -> web.Response:
    """200 ``{"status":"ready"}`` when ``ready()`` returns, else 503 with the reason."""
    try:
        await ready()
    except Exception as e:  # noqa: BLE001 - any failure means not ready
        return web.json_response({"code": "Not ready", "message": str(e) or type(e).__name__},
                                 status=503)
    return web.json_response({"status": "ready"})


def ops_app(ready: Ready) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        return await ready_response(ready)

    app = web.Application()
    app.router.add_get("/metrics", metrics_response)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


@asynccontextmanager
async def serve(addr: str, ready: Ready) -> AsyncIterator[int | None]:
    """Serve the ops routes on ``addr`` (HOST:PORT, port 0: any) while inside; yields the
    bound port, or None when ``addr`` is "" (off)."""
    if not addr:
        yield None
        return
    host, _, port = addr.rpartition(":")
    runner = web.AppRunner(ops_app(ready), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host or "127.0.0.1", int(port))
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else int(port)
        log.info("metrics on %s:%d", host or "127.0.0.1", bound)
        yield bound
    finally:
        await runner.cleanup()


def readiness(pool: asyncpg.Pool, nc: NATS,
              extra: Callable[[], str | None] | None = None) -> Ready:
    """A ``ready`` check: ``extra()`` (why the process is not healthy, or None: a worker's
    failed init), the NATS connection's state and one ``SELECT 1`` (2 s at most)."""
    async def ready() -> None:
        if extra is not None and (why := extra()) is not None:
            raise RuntimeError(why)
        if not nc.is_connected:
            raise ConnectionError("NATS is not connected")
        try:
            await asyncio.wait_for(pool.fetchval("SELECT 1"), 2)
        except Exception as e:
            raise ConnectionError(f"PostgreSQL unreachable: {e or type(e).__name__}") from e
    return ready
