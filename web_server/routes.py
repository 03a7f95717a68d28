"""The HTTP API: schedule a job, its status, its results."""

from __future__ import annotations

import logging

import asyncpg
from aiohttp import web

from shared import bus
from shared.config import Settings
from shared.db import jobs
from shared.duration import format_go_duration
from shared.errors import BadRequest, DependencyUnavailable, NotFound, PayloadTooLarge
from shared.outbox import feed
from shared.scope import SCOPES, Scope, check_pattern
from shared.streams import read_capped
from shared.urls import validate_job_url
from web_server.deps import Deps
from web_server.render import json_response, string

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
DEPS = web.AppKey("deps", Deps)

_TRUE = {"", "1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_INT64_MAX = 2**63 - 1


def parse_job_body(text: str) -> list[str]:
    """Newline-separated URLs; blank lines skipped, lines trimmed, duplicates removed in order."""
    urls: dict[str, None] = {}
    for line in text.split("\n"):
        line = line.strip()
        if line:
            urls.setdefault(validate_job_url(line), None)
    if not urls:
        raise BadRequest("No URLs provided")
    return list(urls)


def parse_flag(request: web.Request, name: str) -> bool:
    """A boolean query parameter: present (or 1/true/yes/on) is on; 0/false/no/off is off."""
    if name not in request.query:
        return False
    value = request.query[name].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadRequest(f"Invalid {name}: {request.query[name]} (use 1/true or 0/false)")


def parse_depth(request: web.Request, settings: Settings) -> int:
    raw = request.query.get("depth")
    if raw is None:
        return settings.max_level
    try:
        depth = int(raw)
    except ValueError:
        raise BadRequest(f"Invalid depth: {raw}") from None
    if not 0 <= depth <= settings.max_depth:
        raise BadRequest(f"Invalid depth: {raw} (allowed 0 to {settings.max_depth})")
    return depth


def parse_scope(request: web.Request) -> tuple[Scope, int | None]:
    """``scope=any|host|domain``, ``allow=<regex>`` and ``deny=<regex>`` (each repeatable),
    ``maxPages=N``."""
    kind = request.query.get("scope", "any")
    if kind not in SCOPES:
        raise BadRequest(f"Invalid scope: {kind} (use any, host or domain)")
    patterns: dict[str, tuple[str, ...]] = {}
    for name in ("allow", "deny"):
        patterns[name] = tuple(request.query.getall(name, []))
        for p in patterns[name]:
            if (problem := check_pattern(p)) is not None:
                raise BadRequest(f"Invalid {name} pattern: {p} ({problem})")
    raw = request.query.get("maxPages")
    max_pages = None
    if raw is not None:
        if not raw.isdigit() or int(raw) < 1:
            raise BadRequest(f"Invalid maxPages: {raw}")
        max_pages = int(raw)
    return Scope(kind, patterns["allow"], patterns["deny"]), max_pages


def parse_job_id(request: web.Request) -> int:
    raw = request.match_info["job_id"]
    try:
        job_id = int(raw, 10)
    except ValueError:
        raise BadRequest(f"Invalid jobId: {raw}") from None
    if not raw.lstrip("-").isdigit() or abs(job_id) > _INT64_MAX:
        raise BadRequest(f"Invalid jobId: {raw}")
    return job_id


async def schedule(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    if request.content_length is not None and request.content_length > settings.max_request_bytes:
        raise PayloadTooLarge(f"Request body larger than {settings.max_request_bytes} bytes")
    force = parse_flag(request, "forceCrawl")
    sitemaps = parse_flag(request, "sitemaps")
    depth = parse_depth(request, settings)
    scope, max_pages = parse_scope(request)
    body = await _read_body(request, settings.max_request_bytes)
    urls = parse_job_body(body)
    if len(urls) > settings.max_job_urls:
        raise PayloadTooLarge(f"Too many URLs: {len(urls)} (at most {settings.max_job_urls})")
    deps = request.app[DEPS]
    js = deps.js  # 503 now, before creating anything, if NATS is away
    async with deps.pool.acquire() as conn, conn.transaction():
        job_id, url_ids = await jobs.create_job(conn, urls, depth, force, scope, max_pages,
                                                sitemaps)
    # The job's URLs are committed as pending visits (the outbox). Publish them now, so the reply
    # means "queued"; if NATS refuses, take the job back instead of accepting what cannot run.
    published = await feed(deps.pool, js, settings.url_topic, len(url_ids), job_id)
    if published < len(url_ids) and not await _picked_up_elsewhere(deps.pool, job_id):
        async with deps.pool.acquire() as conn:
            await jobs.delete_job(conn, job_id)
        raise DependencyUnavailable("NATS", "the job could not be queued")
    log.info("job %d scheduled: %d URLs, depth %d%s", job_id, len(urls), depth,
             ", forceCrawl" if force else "")
    return json_response({"jobId": job_id})


async def _picked_up_elsewhere(pool: asyncpg.Pool, job_id: int) -> bool:
    """A foreman's feeder may have published some of the job's URLs (they were committed)."""
    async with pool.acquire() as conn:
        unpublished = await conn.fetchval(
            "SELECT count(*) FROM job_pending WHERE job_id = $1 AND published_on IS NULL", job_id)
    return unpublished == 0


async def _read_body(request: web.Request, limit: int) -> str:
    body = await read_capped(request.content, limit)
    if body is None:
        raise PayloadTooLarge(f"Request body larger than {limit} bytes")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("Request body is not UTF-8 text") from None


async def status(request: web.Request) -> web.Response:
    job_id = parse_job_id(request)
    async with request.app[DEPS].pool.acquire() as conn:
        st = await jobs.job_status(conn, job_id)
    if st is None:
        raise NotFound(f"Failed to get job {job_id} status")
    completed = sum(1 for u in st.urls if u.completed)
    return json_response({
        "completed": completed,
        "pending": len(st.urls) - completed,
        "elapsed": format_go_duration(st.elapsed),
        "urls": {u.url: u.completed for u in st.urls},
        "pages": {
            "queued": sum(u.pending for u in st.urls),
            "processed": sum(u.processed for u in st.urls),
            "fetched": sum(u.fetched for u in st.urls),
            "cached": sum(u.cached for u in st.urls),
            "failed": sum(u.failed for u in st.urls),
            "blocked": sum(u.blocked for u in st.urls),
        },
        "maxLevel": st.max_level,
        "forceCrawl": st.force_crawl,
        "scope": {"scope": st.scope.kind, "allow": list(st.scope.allow),
                  "deny": list(st.scope.deny), "maxPages": st.max_pages},
    })


async def result(request: web.Request) -> web.StreamResponse:
    """Stream ``{"<page>": ["<link>", ...], ...}`` from a cursor, in Go's indented layout."""
    job_id = parse_job_id(request)
    if "status" in request.query:
        return await _failures(request, job_id)
    mime = request.query.get("mime", "").strip()
    pool = request.app[DEPS].pool
    async with pool.acquire() as conn:
        if not await jobs.job_exists(conn, job_id):
            raise NotFound(f"Failed to get job {job_id} result")
        async with conn.transaction(readonly=True, isolation="repeatable_read"):
            rows = jobs.iter_results(conn, job_id, mime or None)
            first = await anext(rows, None)
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            if first is None:
                await resp.write(b"{}\n")
                await resp.write_eof()
                return resp
            await _write_groups(resp, first, rows)
    await resp.write_eof()
    return resp


async def _failures(request: web.Request, job_id: int) -> web.Response:
    """``?status=failed`` (or ``blocked``): each URL with its HTTP status, reason, attempts."""
    kind = request.query["status"]
    if kind not in ("failed", "blocked"):
        raise BadRequest(f"Invalid status: {kind} (use 'failed' or 'blocked')")
    async with request.app[DEPS].pool.acquire() as conn:
        if not await jobs.job_exists(conn, job_id):
            raise NotFound(f"Failed to get job {job_id} result")
        rows = await jobs.job_failures(conn, job_id, blocked=kind == "blocked")
    return json_response({r["url"]: {"status": r["status"], "reason": r["reason"],
                                     "attempts": r["attempts"]} for r in rows})


async def _write_groups(resp: web.StreamResponse, first: tuple[str, str], rows) -> None:  # type: ignore[no-untyped-def]
    buf: list[str] = ["{\n  ", string(first[0]), ": [\n    ", string(first[1])]
    page = first[0]
    async for refer, url in rows:
        if refer != page:
            buf += ["\n  ],\n  ", string(refer), ": [\n    ", string(url)]
            page = refer
        else:
            buf += [",\n    ", string(url)]
        if len(buf) > 4096:
            await resp.write("".join(buf).encode())
            buf.clear()
    buf.append("\n  ]\n}\n")
    await resp.write("".join(buf).encode())


async def healthz(request: web.Request) -> web.Response:
    """Ready when PostgreSQL answers and NATS is connected (503 otherwise)."""
    deps = request.app[DEPS]
    try:
        await deps.js.account_info()  # JetStream itself answers, not just the NATS connection
    except bus.TRANSIENT as e:
        raise DependencyUnavailable("NATS", str(e)) from None
    async with deps.pool.acquire() as conn:
        await conn.fetchval("SELECT 1")
    return json_response({"status": "ok"})


def add_routes(app: web.Application, root: str) -> None:
    base = root.rstrip("/")
    app.router.add_post(base + "/", schedule)
    if base:
        app.router.add_post(base, schedule)
    app.router.add_get(base + "/status/{job_id}", status, allow_head=False)
    app.router.add_get(base + "/result/{job_id}", result, allow_head=False)
    app.router.add_get("/healthz", healthz, allow_head=False)
