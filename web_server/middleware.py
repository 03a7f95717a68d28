"""The one place errors become HTTP: a status and a ``{"code", "message"}`` body."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from shared import bus, metrics
from shared.db.pool import RETRYABLE
from shared.errors import ClientError, DependencyUnavailable
from web_server.render import json_response

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_body(code: str, message: str, status: int,
               headers: Mapping[str, str] | None = None) -> web.Response:
    return json_response({"code": code, "message": message}, status=status, headers=headers)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors as ``{"code","message"}`` bodies; every answer counted in HTTP_REQUESTS by its
    canonical route (``/status/{job_id}``, never the path: bounded labels)."""
    try:
        response = await _answer(request, handler)
    except web.HTTPException as e:  # a redirect (3xx), passed on
        _count(request, e.status)
        raise
    _count(request, response.status)
    return response


def _count(request: web.Request, status: int) -> None:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None and status != 404 else "other"
    metrics.HTTP_REQUESTS.labels(route, str(status)).inc()


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ClientError as e:
        return error_body(e.code, e.message, e.status, e.headers or None)
    except web.HTTPMethodNotAllowed as e:
        allowed = sorted(e.allowed_methods)
        return error_body("MethodNotAllowed",
                          f"Method {request.method} not allowed; use {', '.join(allowed)}", 405,
                          {"Allow": ", ".join(allowed)})
    except web.HTTPNotFound:
        return error_body("NotFound", f"No such path: {request.path}", 404)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_body(e.reason.replace(" ", ""), e.text or e.reason, e.status)
    except DependencyUnavailable as e:
        log.warning("%s", e)
        return error_body("Unavailable", f"{e.dependency} is unavailable; try again later", 503,
                          {"Retry-After": "5"})
    except (*RETRYABLE, *bus.TRANSIENT) as e:
        log.warning("dependency failure on %s %s: %s: %s", request.method, request.path,
                    type(e).__name__, e)
        return error_body("Unavailable", "Storage or queue is unavailable; try again later", 503,
                          {"Retry-After": "5"})
