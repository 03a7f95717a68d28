"""The session API (issue 14, ``docs/sessions.md``): ``PUT /sessions/{pool}/{name}`` writes a
session (cookies, headers, User-Agent, host, use cap) → ``{"pool", "name", "result"}`` ("new"
or "updated"); ``GET /sessions/{pool}`` lists a pool's sessions by name, never a cookie's or a
header's value; ``DELETE /sessions/{pool}/{name}`` removes one (204, else 404)."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from shared.db import sessions
from shared.errors import BadRequest, NotFound
from shared.jobspec import HEADER_NAME, POOL_NAME
from shared.urls import canonicalize, host_key
from web_server.deps import DEPS, SETTINGS
from web_server.render import json_object, json_response, read_text

FIELDS = ("cookies", "headers", "userAgent", "host", "maxUses")
MAX_ENTRIES = 100      # cookies, and headers, per session
MAX_VALUE = 8192       # characters of a cookie or header value, or a User-Agent
COOKIE_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")  # an RFC 6265 token
_BAD_VALUE = re.compile(r"[\x00-\x1f\x7f]")  # control characters (CR, LF ...): header injection
_BAD_COOKIE = re.compile(r"[\x00-\x20\x7f\";,\\]")
_INT32_MAX = 2**31 - 1
_ORIGIN = re.compile(r"https?://[^/?#@\s]+", re.IGNORECASE)


def _name(request: web.Request, key: str, what: str) -> str:
    raw = request.match_info[key]
    if POOL_NAME.fullmatch(raw) is None:
        raise BadRequest(f"Invalid {what}: 1 to 64 of A-Z a-z 0-9 _ . - (not first)")
    return raw


def _pairs(data: dict[str, Any], field: str, name_re: re.Pattern[str],
           bad: re.Pattern[str]) -> dict[str, str]:
    value = data.get(field, {})
    if not isinstance(value, dict) or len(value) > MAX_ENTRIES:
        raise BadRequest(f"Invalid {field}: an object of at most {MAX_ENTRIES} names to strings")
    for k, v in value.items():
        if not name_re.fullmatch(k):
            raise BadRequest(f"Invalid {field}: {json.dumps(k)[:80]} is not a valid name")
        if not isinstance(v, str) or len(v) > MAX_VALUE or bad.search(v):
            raise BadRequest(f"Invalid {field}: the value of {k} must be a string of at most "
                             f"{MAX_VALUE} characters, without control characters"
                             + (" or any of space \" ; , \\" if field == "cookies" else ""))
    return dict(value)


def parse_session(body: str) -> dict[str, Any]:
    """The keyword arguments of ``shared.db.sessions.put`` from a ``PUT`` body, or BadRequest
    saying what is wrong with it."""
    data = json_object(body, FIELDS, '{"cookies": {...}, ...}',
                       show=lambda k: json.dumps(k)[:80])
    cookies = _pairs(data, "cookies", COOKIE_NAME, _BAD_COOKIE)
    headers = _pairs(data, "headers", HEADER_NAME, _BAD_VALUE)
    ua = data.get("userAgent")
    if ua is not None and (not isinstance(ua, str) or not 0 < len(ua) <= MAX_VALUE
                           or _BAD_VALUE.search(ua)):
        raise BadRequest(f"Invalid userAgent: 1 to {MAX_VALUE} characters, no control characters")
    host = data.get("host")
    if host is not None:
        if not isinstance(host, str) or not _ORIGIN.fullmatch(host):
            raise BadRequest("Invalid host: scheme://host[:port], e.g. https://example.org")
        try:
            canonical = canonicalize(host + "/")
            if not urlsplit(canonical).hostname:
                raise ValueError(host)
        except (ValueError, UnicodeError):
            raise BadRequest("Invalid host: scheme://host[:port], e.g. https://example.org") from None
        host = host_key(canonical)
    max_uses = data.get("maxUses")
    if max_uses is not None and (isinstance(max_uses, bool) or not isinstance(max_uses, int)
                                 or not 1 <= max_uses <= _INT32_MAX):
        raise BadRequest(f"Invalid maxUses: an integer from 1 to {_INT32_MAX}, or null")
    return {"cookies": cookies, "headers": headers, "user_agent": ua, "host": host,
            "max_uses": max_uses}


async def put_session(request: web.Request) -> web.Response:
    """``PUT /sessions/{pool}/{name}``: write the session; ``{"pool", "name", "result"}``."""
    pool, name = _name(request, "pool", "pool"), _name(request, "name", "name")
    fields = parse_session(await read_text(request, request.app[SETTINGS].max_request_bytes))
    async with request.app[DEPS].acquire() as conn:
        result = await sessions.put(conn, pool, name, **fields)
    return json_response({"pool": pool, "name": name, "result": result})


async def list_sessions(request: web.Request) -> web.Response:
    """``GET /sessions/{pool}``: the pool's sessions, without any value."""
    pool = _name(request, "pool", "pool")
    async with request.app[DEPS].acquire() as conn:
        infos = await sessions.listing(conn, pool)
    return json_response({"pool": pool, "sessions": [i.as_json() for i in infos]})


async def delete_session(request: web.Request) -> web.Response:
    """``DELETE /sessions/{pool}/{name}``: 204, or 404 when there is none."""
    pool, name = _name(request, "pool", "pool"), _name(request, "name", "name")
    async with request.app[DEPS].acquire() as conn:
        if not await sessions.delete(conn, pool, name):
            raise NotFound(f"No session {name} in pool {pool}")
    return web.Response(status=204)


def add_routes(app: web.Application, base: str) -> None:
    app.router.add_put(base + "/sessions/{pool}/{name}", put_session)
    app.router.add_delete(base + "/sessions/{pool}/{name}", delete_session)
    app.router.add_get(base + "/sessions/{pool}", list_sessions, allow_head=False)
