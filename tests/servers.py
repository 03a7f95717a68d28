"""Local target sites for tests: serve one handler for every GET path on a loopback address."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from harvester_ops.embedded import free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve(handler: Handler, host: str = "127.0.0.1", *,
                route: str = "/{tail:.*}") -> tuple[web.AppRunner, str]:
    """Start a server; returns its runner (``await runner.cleanup()`` stops it) and base URL."""
    app = web.Application()
    app.router.add_get(route, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port(host)
    await web.TCPSite(runner, host, port).start()
    return runner, f"http://{host}:{port}"
