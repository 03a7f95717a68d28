"""The web server's ops routes: ``/metrics`` (Prometheus, this process's registry) and
``/readyz`` (PostgreSQL and NATS reachable: the ``/healthz`` check; 503 with
``{"code","message"}`` otherwise), beside ``/healthz``, outside the root path."""

from __future__ import annotations

from aiohttp import web

from shared.ops_http import metrics_response
from web_server.routes import healthz


def add_ops_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics_response, allow_head=False)
    app.router.add_get("/readyz", healthz, allow_head=False)
