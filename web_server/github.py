"""The seed github-crawler's routes, ``GET /users?nb=`` and ``GET /contributors?user=&depth=``
(docs/github.md): each builds a ``"source": "github"`` job spec, creates the job as ``POST /``
does, and waits up to ``githubWait`` for it: done, 200 with the seed's document; else 202 with
the job id and ``Location: <root>/result/<id>``, where the same document comes once the job is
done (``RESULT_VIEWS``). The web server never calls GitHub: the workers crawl."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web

from shared.config import Settings
from shared.db import api_tokens, apiresults, jobs
from shared.errors import BadRequest, NotFound
from shared.jobspec import (
    GITHUB_LOGIN,
    GITHUB_SEARCH_CAP,
    MAX_GITHUB_USERS,
    JobSpec,
    github_depth_cap,
    validate_spec,
)
from web_server.auth import principal
from web_server.deps import DEPS, SETTINGS
from web_server.render import json_response, utc

log = logging.getLogger(__name__)

DEFAULT_NB = 20                 # GET /users, as the seed
DEFAULT_USER = "hugodelval"     # GET /contributors, as the seed
DEFAULT_DEPTH = 1
POLL = 0.05                     # seconds between two looks at the job while the route waits
ORDERS = ("id", "newest")

View = Callable[[asyncpg.Connection, int, Mapping[str, Any]], Awaitable[tuple[int, dict[str, Any]]]]


def users_spec(query: Mapping[str, str], settings: Settings) -> JobSpec:
    """``nb`` (1..100000, default 20) and ``order`` (``id``, the default: the first accounts
    as ``/users`` lists them; ``newest``: by join date, through the search API, nb ≤ 1000)."""
    from web_server.routes import parse_int
    raw = query.get("nb")
    nb = DEFAULT_NB if raw is None else parse_int("nb", raw, 1, MAX_GITHUB_USERS)
    order = query.get("order", "id")
    if order not in ORDERS:
        raise BadRequest(f"Invalid order: {order} (use id or newest)")
    if order == "newest" and nb > GITHUB_SEARCH_CAP:
        raise BadRequest(f"Invalid nb: {nb} (at most {GITHUB_SEARCH_CAP} with order=newest: "
                         "GitHub's search gives no more)")
    return validate_spec({"source": "github", "github": {"users": nb, "order": order}}, settings)


def contributors_spec(query: Mapping[str, str], settings: Settings) -> JobSpec:
    """``user`` (a GitHub login, default hugodelval, lower-cased) and ``depth`` (default 1,
    at most ``(maxDepth - 1) // 2``: a depth is two levels, repositories then contributors)."""
    from web_server.routes import parse_int
    user = query.get("user", DEFAULT_USER)
    if not GITHUB_LOGIN.fullmatch(user):
        raise BadRequest(f"Invalid user: {user} (a GitHub login)")
    raw = query.get("depth")
    cap = github_depth_cap(settings.max_depth)
    depth = DEFAULT_DEPTH if raw is None else parse_int("depth", raw, 0, cap)
    return validate_spec({"source": "github",
                          "github": {"contributors": user, "depth": depth}}, settings)


async def users(request: web.Request) -> web.Response:
    return await _run(request, users_spec(request.query, request.app[SETTINGS]))


async def contributors(request: web.Request) -> web.Response:
    return await _run(request, contributors_spec(request.query, request.app[SETTINGS]))


async def _run(request: web.Request, spec: JobSpec) -> web.Response:
    """Create the job, then answer with its document if it is done within ``githubWait``."""
    from web_server.routes import _create_job
    deps, settings = request.app[DEPS], request.app[SETTINGS]
    deps.check_nats()  # 503 before creating anything while NATS is away
    job_id = await _create_job(deps, spec, principal(request).owner)
    log.info("job %d scheduled: github %s", job_id, spec.stored().get("github"))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.github_wait
    while True:
        async with deps.acquire() as conn:
            left = await apiresults.pending(conn, job_id)
            if left == 0:
                status, doc = await github_view(conn, job_id, spec.stored())
                return json_response(doc, status=status)
        if loop.time() >= deadline:
            break
        await asyncio.sleep(min(POLL, max(0.0, deadline - loop.time())))
    base = settings.root_path.rstrip("/")
    return json_response({"jobId": job_id, "status": f"{base}/status/{job_id}",
                          "result": f"{base}/result/{job_id}"},
                         status=202, headers={"Location": f"{base}/result/{job_id}"})


async def github_view(conn: asyncpg.Connection, job_id: int,
                      stored: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """The seed's document of a completed github job: ``{"users": [...]}`` or
    ``{"close_contributors": [...]}``, with ``jobId`` and ``failed`` (every page that could not
    be fetched, or that robots.txt forbade: never a silent partial); 404 when the user itself
    is not found."""
    g = stored.get("github") or {}
    rows = [*await jobs.job_failures(conn, job_id),  # robots.txt refusals too: no silent gap
            *await jobs.job_failures(conn, job_id, blocked=True)]
    failed = [{"url": r["url"], "status": r["status"], "reason": r["reason"],
               "attempts": r["attempts"]} for r in sorted(rows, key=lambda r: r["url"])]
    if g.get("users") is not None:
        found = await apiresults.users(conn, job_id, int(g["users"]),
                                       newest=g.get("order") == "newest")
        return 200, {"users": found, "jobId": job_id, "failed": failed}
    user = str(g.get("contributors", ""))
    if await apiresults.root_status(conn, job_id) == 404:
        return 404, {"code": "NotFound", "message": f"GitHub user '{user}' not found",
                     "jobId": job_id}
    logins = set(await apiresults.contributor_logins(conn, job_id)) | {user}
    return 200, {"close_contributors": sorted(logins), "jobId": job_id, "failed": failed}


# The documents ``GET /result/<id>`` gives for a job of a source that has one.
RESULT_VIEWS: dict[str, View] = {"github": github_view}


async def result_view(conn: asyncpg.Connection, job_id: int, view: View,
                      stored: Mapping[str, Any]) -> web.Response:
    """``/result/<id>`` of such a job: its document once done, 202 ``{"jobId", "pending"}``
    before (``pending``: its URLs not completed yet)."""
    left = await apiresults.pending(conn, job_id)
    if left is None:
        raise NotFound(f"Failed to get job {job_id} result")
    if left:
        return json_response({"jobId": job_id, "pending": left}, status=202)
    status, doc = await view(conn, job_id, stored)
    return json_response(doc, status=status)


def add_routes(app: web.Application, base: str) -> None:
    app.router.add_get(base + "/users", users, allow_head=False)
    app.router.add_get(base + "/contributors", contributors, allow_head=False)


async def token_states(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """The GitHub tokens' shared state for ``GET /workers`` (``apiTokens``), by token id (a
    hash; the store never holds a token): budget, reset, pause, requests in flight, and
    ``refused`` (GitHub answered 401: revoked or invalid; its pages fail)."""
    now = datetime.now(UTC)
    return [{"id": t.token_id, "resource": t.resource, "limit": t.limit or None,
             "remaining": t.remaining, "resetAt": utc(t.reset_at),
             "pausedUntil": utc(t.paused_until) if t.paused_until and t.paused_until > now
             else None, "inFlight": t.in_flight, "seenOn": utc(t.seen_on),
             "refused": t.limit == 0 and t.paused_until is not None and t.paused_until > now}
            for t in await api_tokens.states(conn)]

