"""``create_app(settings)``: the aiohttp application and its dependencies; ``run``: serve it.

The web server starts whether or not PostgreSQL and NATS are up: the pool opens connections on
demand, and NATS is connected in the background. While either is down, requests that need it
get 503 ``{"code": "Unavailable"}`` at once instead of hanging, and no job is accepted while
NATS is away. Its port, though, must be free: taken, the process exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import AsyncIterator
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_request import BaseRequest

from shared import bus
from shared.config import Settings, loopback, split_addr
from shared.db.pool import open_pool
from shared.errors import StartupError
from shared.secrets import redact_url
from web_server import auth
from web_server.deps import DEPS, SETTINGS, Deps
from web_server.live import LIVE, LiveHub
from web_server.middleware import error_body, errors
from web_server.ops import add_ops_routes
from web_server.routes import add_routes, status_answer

log = logging.getLogger(__name__)

POOL_SIZE = 10
CLOSE_TIMEOUT = 5.0  # seconds for the NATS connection to close at shutdown


def create_app(settings: Settings) -> web.Application:
    # Bodies are read with read_capped (maxRequestBytes -> 413), never request.read().
    keys = auth.load_keys(settings)
    if not keys and not loopback(parse_addr(settings.http_addr)[0]):
        log.warning("no API tokens configured (authTokens, HARVESTER_AUTH_TOKENS, "
                    "authTokenFiles): anyone who reaches %s controls every job",
                    settings.http_addr)
    # No tokens: no authentication middleware at all (every request is the admin, as before).
    app = web.Application(middlewares=[errors, auth.middleware(keys, settings.root_path)]
                          if keys else [errors])
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_resources)
    add_routes(app, settings.root_path)
    add_ops_routes(app)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # Short timeouts: a request must not hang on a slow database.
    async with contextlib.AsyncExitStack() as stack:
        pool = await stack.enter_async_context(open_pool(
            settings.database_url, min_size=0, max_size=POOL_SIZE, timeout=5, command_timeout=30))
        read_pool = None if not settings.database_read_url else await stack.enter_async_context(
            open_pool(settings.database_read_url, min_size=0, max_size=POOL_SIZE, timeout=5,
                      command_timeout=30))
        deps = app[DEPS] = Deps(pool, settings.database_url, read_pool=read_pool)
        options = bus.NatsOptions.from_settings(settings)  # ConfigError now, not in the task
        connecting = asyncio.create_task(_connect_nats(settings, deps, options))
        hub = app[LIVE] = LiveHub(deps, settings,
                                  lambda conn, job_id, h: status_answer(conn, job_id, h, settings))
        stop_hub = asyncio.Event()
        polling = asyncio.create_task(hub.run(stop_hub))  # one poller per process (SSE, rates)
        try:
            yield
        finally:
            stop_hub.set()
            await polling
            connecting.cancel()  # bus.connect flushes and closes the connection on its way out
            # ... within a bound: shutting down must not hang on a NATS client that does not
            # finish closing (a full test run once waited 5 minutes here).
            done, _ = await asyncio.wait({connecting}, timeout=CLOSE_TIMEOUT)
            if not done:
                log.warning("NATS connection not closed within %gs; leaving it", CLOSE_TIMEOUT)
            elif not connecting.cancelled() and (e := connecting.exception()) is not None:
                log.warning("NATS connection closed with an error: %s", e)
            await deps.close()


async def _connect_nats(settings: Settings, deps: Deps, options: bus.NatsOptions) -> None:
    """Connect and set up the streams, retrying forever; nats-py reconnects after that."""
    while True:
        try:
            async with bus.connect(settings.nats_url, "harvester-web-server",
                                   options=options) as nc:
                deps.nc = nc
                js = nc.jetstream(timeout=5)
                await bus.ensure_streams(js, settings)
                deps.jetstream = js
                log.info("connected to NATS at %s", redact_url(settings.nats_url))
                await asyncio.Event().wait()  # hold the connection until cleanup cancels us
        except bus.TRANSIENT as e:
            log.warning("NATS set-up failed (%s); retrying", e)
            deps.jetstream = None
            await asyncio.sleep(2)


_QUOTED = re.compile(r":?\s*(?:bytearray\()?b['\"]")


class _JSONErrorHandler(web.RequestHandler):
    """aiohttp's connection handler, answering the errors aiohttp raises itself before any
    handler or middleware runs (a malformed request, a request line or header over its size
    limits) as ``{"code", "message"}``, logged in one line. An exception escaping the app (a
    bug) is still logged with its traceback, and answered as JSON too."""

    __slots__ = ()  # the layout of aiohttp's class, so a handler it made can be one of these

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            code, text = "InternalServerError", "Internal server error"
        else:
            # aiohttp's messages may run over lines (a caret under the bad byte): keep the first.
            text = (message or (str(exc) if exc else "")).strip().split("\n", 1)[0]
            # Never the request's own bytes (aiohttp quotes the start of a line too long: a
            # bearer token, a URL's query): they are neither answered nor logged.
            text = _QUOTED.split(text, 1)[0]
            text = text.rstrip(":")[:300] or HTTPStatus(status).phrase
            log.info("bad request from %s: %s", request.remote, text)
            code = HTTPStatus(status).phrase.replace(" ", "")
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        resp = error_body(code, text, status)
        resp.force_close()
        return resp


class _Server(web.Server):
    def __call__(self) -> web.RequestHandler:
        handler = super().__call__()
        handler.__class__ = _JSONErrorHandler  # same slots: only handle_error differs
        return handler


class Runner(web.AppRunner):
    """``web.AppRunner`` whose connections answer aiohttp's own errors as JSON."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # adds no state, overrides only the handler factory
        return server


def runner(settings: Settings, app: web.Application | None = None) -> Runner:
    """The runner serving ``app`` (by default ``create_app(settings)``): a connection idle, or
    still sending its request's headers, ``httpIdleTimeout`` seconds is closed (aiohttp's
    ``keepalive_timeout``, also its deadline for a request's headers)."""
    return Runner(create_app(settings) if app is None else app, access_log=None,
                  handle_signals=False, keepalive_timeout=settings.http_idle_timeout)


def parse_addr(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` (``:PORT``: every interface; ``[::1]:PORT``: an IPv6 address)."""
    host, port = split_addr(addr)
    return host or "0.0.0.0", port


def listen(host: str, port: int) -> socket.socket:
    """Bind and listen now, before anything else starts: StartupError if the port is taken."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


async def run(settings: Settings, stop: asyncio.Event) -> None:
    host, port = parse_addr(settings.http_addr)
    sock = listen(host, port)
    serving = runner(settings)
    try:
        await serving.setup()
        await web.SockSite(serving, sock).start()
        log.info("web server listening on http://%s:%d%s", host, sock.getsockname()[1],
                 settings.root_path)
        await stop.wait()
    finally:
        await serving.cleanup()
        sock.close()
