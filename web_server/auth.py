"""Bearer-token authentication of the API (issue 17, docs/api.md "Authentication").

With no token configured (``authTokens``, ``HARVESTER_AUTH_TOKENS``, ``authTokenFiles``) the
middleware is not installed: every request is the admin, as before. With tokens, every route
but ``/healthz`` and the dashboard's static shell (``/ui``, ``/ui/``, ``/ui/*``: no data in it)
needs ``Authorization: Bearer <token>``: 401 without a valid one. A token sees and controls the
jobs and tasks it created (another's answers the route's 404); an admin token sees all of them,
and alone may use ``/workers``, ``/metrics`` and ``/sessions/*`` (403 otherwise).

A token is checked by its SHA-256 against every configured digest with
``hmac.compare_digest``, without stopping at a match: the time does not tell which entry, or
how far into the list, matched. No token is kept, logged or echoed: only digests.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Middleware

from shared.config import AUTH_TOKEN_CHARS, AuthToken, Settings, auth_token
from shared.db import jobs, tasks
from shared.errors import ConfigError, Forbidden, NotFound, Unauthorized
from web_server.deps import DEPS
from web_server.middleware import Handler

log = logging.getLogger(__name__)

# Canonical routes (under the root path) only an admin token may use; and outside it.
ADMIN_ROUTES = ("/workers", "/sessions/{pool}", "/sessions/{pool}/{name}")
ADMIN_OUTSIDE_ROOT = ("/metrics",)
_SCHEME = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +(\S+) *")
_DECIMAL = re.compile(r"[0-9]{1,18}")
# Per-job (and per-task) routes, each with the 404 message of its own for a missing job: a job
# of another token answers exactly that.
_JOB_ROUTES = {"/status/{job_id}": "Failed to get job {} status",
               "/status/{job_id}/events": "Failed to get job {} status",
               "/result/{job_id}": "Failed to get job {} result",
               "/items/{job_id}": "Failed to get job {} items",
               "/bodies/{job_id}": "Failed to get job {} bodies",
               "/index/{job_id}": "Failed to get job {} index",
               "/jobs/{job_id}": "Job {} not found",
               "/jobs/{job_id}/pause": "Job {} not found",
               "/jobs/{job_id}/resume": "Job {} not found"}
_TASK_ROUTES = {"/tasks/{task_id}": "No task {}"}


@dataclass(frozen=True, slots=True)
class Key:
    """A configured token: its name, the SHA-256 of the token (raw bytes), admin or not."""

    name: str
    digest: bytes
    admin: bool


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is: ``owner`` the name stored on what it creates (None without
    authentication), ``admin`` whether it sees and controls everything."""

    owner: str | None
    admin: bool

    def may_see(self, owner: str | None) -> bool:
        return self.admin or (owner is not None and owner == self.owner)


NOBODY = Principal(None, True)  # no tokens configured: today's behaviour
PRINCIPAL = web.RequestKey("principal", Principal)


def principal(request: web.Request) -> Principal:
    """The request's principal (``NOBODY``, the admin, when authentication is off)."""
    who: Principal | None = request.get(PRINCIPAL)
    return NOBODY if who is None else who


def parse_token_file(path: Path) -> list[Key]:
    """Lines ``name token [admin]`` (blank lines and ``#`` comments skipped); ConfigError naming
    the file and line, never the token."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), f"cannot read auth token file: {type(e).__name__}") from None
    keys: list[Key] = []
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        token = auth_token(parts)
        if token is None:
            raise ConfigError(str(path), f"line {n}: malformed (use: name token [admin], "
                              f"{AUTH_TOKEN_CHARS})")
        keys.append(_key(token))
    return keys


def _key(token: AuthToken) -> Key:
    return Key(token.name, bytes.fromhex(token.sha256), token.admin)


def load_keys(settings: Settings) -> tuple[Key, ...]:
    """Every configured token: ``authTokens`` (digests; the environment's are hashed at load)
    and the lines of ``authTokenFiles``. ConfigError for a name or a token listed twice."""
    keys = [_key(t) for t in settings.auth_tokens]
    for path in settings.auth_token_files:
        keys += parse_token_file(Path(path))
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise ConfigError("authTokens", "a token name is used twice")
    if len({k.digest for k in keys}) != len(keys):
        raise ConfigError("authTokens", "the same token is listed twice")
    return tuple(keys)


def match(keys: Sequence[Key], token: str) -> Key | None:
    """The key of ``token``, or None. Every key is compared (``hmac.compare_digest`` on the
    digests), whatever matched before: no early exit."""
    digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
    found: Key | None = None
    for key in keys:
        if hmac.compare_digest(digest, key.digest):
            found = key
    return found


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; "" for another header (sent,
    but not a bearer token); None when there is none."""
    if header is None:
        return None
    m = _SCHEME.fullmatch(header)
    return m.group(1) if m else ""


def _open(path: str, ui: str) -> bool:
    """``/healthz`` and the dashboard's static shell (``ui``: ``<root path>/ui``) need no token."""
    return path == "/healthz" or path == ui or path.startswith(ui + "/")


def _route(request: web.Request, base: str) -> str | None:
    """The request's canonical route relative to the root path (None: no route matched); the
    ops routes outside the root path as they are."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    canonical = resource.canonical
    if canonical in ADMIN_OUTSIDE_ROOT:
        return canonical
    return canonical[len(base):] if canonical.startswith(base) else None


async def _not_owned(request: web.Request, route: str | None, who: Principal) -> str | None:
    """The 404 message when the request names a job (or task) ``who`` may not see; None
    otherwise (not a per-job route, an id the route itself refuses, or an own job)."""
    owner_of: Callable[[asyncpg.Connection, int], Awaitable[tuple[bool, str | None]]]
    if route in _JOB_ROUTES:
        message, raw, owner_of = _JOB_ROUTES[route], request.match_info["job_id"], jobs.job_owner
    elif route in _TASK_ROUTES:
        message, raw = _TASK_ROUTES[route], request.match_info["task_id"]
        owner_of = tasks.task_owner
    else:
        return None
    if not _DECIMAL.fullmatch(raw):
        return None  # the route answers its 400 (or its 404 for an id out of range)
    async with request.app[DEPS].acquire() as conn:
        there, owner = await owner_of(conn, int(raw))
    return None if not there or who.may_see(owner) else message.format(int(raw))


def middleware(keys: Iterable[Key], root_path: str) -> Middleware:
    """The authentication middleware over ``keys`` (placed inside ``errors``)."""
    table = tuple(keys)
    base = root_path.rstrip("/")
    ui = base + "/ui"

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _open(request.path, ui):
            return await handler(request)
        token = bearer(request.headers.get("Authorization"))
        key = match(table, token) if token else None
        if key is None:
            raise Unauthorized(invalid_token=token is not None)
        who = request[PRINCIPAL] = Principal(key.name, key.admin)
        if not key.admin:
            route = _route(request, base)
            if route in ADMIN_ROUTES or route in ADMIN_OUTSIDE_ROOT:
                raise Forbidden()
            if (message := await _not_owned(request, route, who)) is not None:
                raise NotFound(message)
        return await handler(request)

    return authenticate
