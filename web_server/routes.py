"""The HTTP API: schedule a job, its status, its results."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from aiohttp import web

from shared import bus
from shared.config import Settings
from shared.db import idsets, jobs, progress, workers
from shared.db.pool import RETRYABLE
from shared.errors import BadRequest, DependencyUnavailable, NotFound, PayloadTooLarge
from shared.jobspec import JobSpec, status_view, validate_spec
from shared.scope import SCOPES, Scope, check_pattern
from shared.urls import URLTooLong, validate_job_url
from web_server import eta, exports, github
from web_server import sessions as session_api
from web_server import tasks as task_api
from web_server.auth import principal
from web_server.deps import DEPS, SETTINGS, Deps
from web_server.duration import format_go_duration
from web_server.live import LIVE, WINDOW, LiveHub, Rates
from web_server.render import json_object, json_response, read_text, refuse_too_large, string, utc

log = logging.getLogger(__name__)


_TRUE = {"", "1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_INT64 = (-2**63, 2**63 - 1)       # job ids (bigint)
_INT32_MAX = 2**31 - 1            # maxPages (an integer column)
_DECIMAL = re.compile(r"-?[0-9]+")  # ASCII digits only: not int()'s Unicode digits, "_", "+"
# Errors after which creating the job, tried again, can succeed (the transaction rolled back).
_CONFLICTS = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
CREATE_ATTEMPTS = 5


def parse_job_body(text: str, max_length: int | None = None) -> list[str]:
    """Newline-separated URLs; blank lines skipped, lines trimmed, duplicates removed in order.
    A URL (canonical) longer than ``max_length`` is refused naming its line (``URLTooLong``)."""
    urls: dict[str, None] = {}
    for n, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if line:
            url = validate_job_url(line)
            if max_length is not None and len(url) > max_length:
                raise URLTooLong(n, len(url), max_length)
            urls.setdefault(url, None)
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


def parse_int(name: str, raw: str, low: int, high: int, *, signed: bool = False) -> int:
    """A decimal integer of ASCII digits (a leading "-" only if ``signed``) from ``low`` to
    ``high``; BadRequest ``Invalid <name>: <raw>`` otherwise, with the range when out of it."""
    if _DECIMAL.fullmatch(raw) is None or (raw.startswith("-") and not signed):
        raise BadRequest(f"Invalid {name}: {raw}")
    digits = raw.lstrip("-").lstrip("0")
    # int() refuses more than 4300 digits (a ValueError: a 500); none of our ranges needs 40.
    value = (-1 if raw.startswith("-") else 1) * (int(digits or "0") if len(digits) <= 40
                                                  else 10 ** 40)
    if not low <= value <= high:
        raise BadRequest(f"Invalid {name}: {raw} (allowed {low} to {high})")
    return value


def parse_depth(request: web.Request, settings: Settings) -> int:
    raw = request.query.get("depth")
    if raw is None:
        return settings.max_level
    return parse_int("depth", raw, 0, settings.max_depth)


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
    max_pages = None if raw is None else parse_int("maxPages", raw, 1, _INT32_MAX)
    return Scope(kind, patterns["allow"], patterns["deny"]), max_pages


def parse_job_id(request: web.Request) -> int:
    """A job id: any int64 in ASCII decimal (ids are positive; others are simply not found)."""
    raw = request.match_info["job_id"]
    if _DECIMAL.fullmatch(raw) is None or not _INT64[0] <= int(raw) <= _INT64[1]:
        raise BadRequest(f"Invalid jobId: {raw}")
    return int(raw)


async def schedule(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    refuse_too_large(request, settings.max_request_bytes)
    if request.content_type == "application/json":
        spec = await _json_spec(request, settings)
    else:
        spec = newline_spec(query_params(request, settings),
                            await read_text(request, settings.max_request_bytes), settings)
    if len(spec.urls) > settings.max_job_urls:
        raise PayloadTooLarge(f"Too many URLs: {len(spec.urls)} (at most {settings.max_job_urls})")
    deps = request.app[DEPS]
    deps.check_nats()  # 503 now, before creating anything, if NATS is away
    await _check_id_sets(deps, spec)
    job_id = await _create_job(deps, spec, principal(request).owner)
    # Committed: the job is durable. Its URLs are pending visits (the outbox) that the foremen's
    # feeders publish as the URL queue has room, however large the job and however full the
    # queue; nothing here can refuse it any more.
    log.info("job %d scheduled: %d URLs, depth %d%s", job_id, len(spec.urls), spec.max_level,
             ", forceCrawl" if spec.force_crawl else "")
    return json_response({"jobId": job_id})


async def _json_spec(request: web.Request, settings: Settings) -> JobSpec:
    """A JSON body (``Content-Type: application/json``, any charset): the whole spec is in it.
    A body that is not JSON at all (a newline list of URLs sent with that type: the original
    ignored the type) is read as the original body, query parameters and all."""
    body = await read_text(request, settings.max_request_bytes)
    if not _looks_like_json(body):
        return newline_spec(query_params(request, settings), body, settings)
    if request.query:
        names = ", ".join(dict.fromkeys(request.query.keys()))
        raise BadRequest(f"Invalid query: {names} (put them in the JSON body)")
    return validate_spec(body, settings)


def query_params(request: web.Request, settings: Settings) -> dict[str, Any]:
    """The query parameters as the spec's fields (checked in the order forceCrawl, sitemaps,
    depth, scope, allow, deny, maxPages)."""
    force = parse_flag(request, "forceCrawl")
    sitemaps = parse_flag(request, "sitemaps")
    depth = parse_depth(request, settings)
    scope, max_pages = parse_scope(request)
    params: dict[str, Any] = {
        "depth": depth, "forceCrawl": force, "sitemaps": sitemaps,
        "scope": {"scope": scope.kind, "allow": scope.allow, "deny": scope.deny,
                  "maxPages": max_pages}}
    if "webhook" in request.query:  # the spec's webhook (checked by validate_spec)
        params["webhook"] = request.query["webhook"]
    return params


def newline_spec(params: dict[str, Any], body: str, settings: Settings) -> JobSpec:
    """The spec of a newline body with ``query_params``' fields; its URLs at most
    ``maxURLLength`` characters each."""
    return validate_spec({"urls": tuple(parse_job_body(body, settings.max_url_length)),
                          **params}, settings, canonical=True)


def _looks_like_json(body: str) -> bool:
    """An object or array (even a broken one, to be refused as bad JSON), or any valid JSON."""
    if body.lstrip()[:1] in ("{", "["):
        return True
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


async def _check_id_sets(deps: Deps, spec: JobSpec) -> None:
    """The id sets a spec names must exist and be complete (a 400 naming the field)."""
    if spec.ids is None:
        return
    for name in ("known", "explored"):
        set_id = getattr(spec.ids, name)
        if set_id is None:
            continue
        async with deps.acquire() as conn:
            ok = await idsets.usable(conn, set_id)
        if not ok:
            raise BadRequest(f"Invalid ids.{name}: no complete id set {set_id} "
                             "(upload it with POST /idsets)")


async def _create_job(deps: Deps, spec: JobSpec, owner: str | None = None) -> int:
    """Create the job in one transaction, run again when PostgreSQL aborted it for a deadlock
    or a serialization failure (it rolled back, so another try creates nothing twice).

    It waits for a pooled connection until the request's deadline (``write_acquire_timeout``
    from the start, not the short wait of reads): a burst of large POSTs queues for the pool
    instead of being refused while PostgreSQL is working through them."""
    attempt = 0
    deadline = asyncio.get_running_loop().time() + deps.write_acquire_timeout
    while True:
        try:
            left = deadline - asyncio.get_running_loop().time()
            async with deps.acquire(timeout=left) as conn:
                # At a range's end, its own short transaction: never inside the job's.
                await jobs.make_partitions_ahead(conn)
                async with conn.transaction():
                    job_id, _ = await jobs.create_job(
                        conn, spec.urls, spec.max_level, spec.force_crawl,
                        spec.scope.as_scope(), spec.scope.max_pages, spec.sitemaps,
                        spec.stored(), webhook=spec.webhook, owner=owner)
            return job_id
        except _CONFLICTS as e:
            attempt += 1
            if attempt == CREATE_ATTEMPTS:
                raise
            log.info("creating a job of %d URLs: %s; trying again", len(spec.urls), e)
            await asyncio.sleep(0.05 * 2 ** attempt)


async def status(request: web.Request) -> web.Response:
    job_id = parse_job_id(request)
    async with request.app[DEPS].acquire() as conn:
        answer = await status_answer(conn, job_id, request.app[LIVE], request.app[SETTINGS])
    if answer is None:
        raise NotFound(f"Failed to get job {job_id} status")
    return json_response(answer)


async def status_answer(conn: asyncpg.Connection, job_id: int, hub: LiveHub | None,
                        settings: Settings) -> dict[str, Any] | None:
    """The ``/status`` JSON of a job (None: no such job), as the SSE events send it too."""
    st = await jobs.job_status(conn, job_id)
    if st is None:
        return None
    kind = st.spec.get("fetcher", bus.HTTP)  # left out of the stored spec at its default
    live = await workers.live(conn, kind, settings.worker_timeout)
    completed = sum(1 for u in st.urls if u.completed)
    pending = len(st.urls) - completed
    processed = sum(u.processed for u in st.urls)
    fetched = sum(u.fetched for u in st.urls)
    answer: dict[str, Any] = {
        "completed": completed,
        "pending": pending,
        "elapsed": format_go_duration(st.elapsed),
        "urls": {u.url: u.completed for u in st.urls},
        "pages": {
            "queued": sum(u.pending for u in st.urls),
            "processed": processed,
            "fetched": fetched,
            "cached": sum(u.cached for u in st.urls),
            "failed": sum(u.failed for u in st.urls),
            "blocked": sum(u.blocked for u in st.urls),
        },
        "maxLevel": st.max_level,
        "forceCrawl": st.force_crawl,
        "scope": {"scope": st.scope.kind, "allow": list(st.scope.allow),
                  "deny": list(st.scope.deny), "maxPages": st.max_pages},
        "spec": status_view(st.spec, [u.url for u in st.urls]),
        "fetcher": {"kind": kind, "liveWorkers": live},
        # Issue 16 appends these, on purpose (docs/api.md).
        "state": st.state,
    }
    rates = None if hub is None or not pending else hub.rates(job_id)
    if rates is None:  # before two samples of the hub (or done): the average so far
        span = max(st.elapsed, 1e-9)
        rates = Rates(processed / span, fetched / span, st.elapsed)
    answer["rates"] = {"pagesPerSecond": round(rates.pages_per_second, 3),
                       "fetchedPerSecond": round(rates.fetched_per_second, 3),
                       "window": RATE_WINDOW}
    left = 0.0
    if pending:
        levels = await _cached(hub, "levels", job_id, lambda: progress.levels(conn, job_id))
        left = eta.remaining(levels, st.max_level, st.max_pages)
    seconds = eta.eta_seconds(left, rates.pages_per_second if st.state == "running" else 0.0)
    answer["eta"] = {"seconds": None if seconds is None else round(seconds, 1),
                     "remainingPages": round(left), "method": "levels"}
    # A job with nothing pending is read fresh (cheap then): a finished job never shows the
    # pending hosts of a snapshot taken while it ran.
    top, backing_off, blocked = await _cached(hub if pending else None, "hosts", job_id,
                                              lambda: progress.hosts(conn, job_id, HOSTS_TOP))
    answer["hosts"] = {"top": [_host(h) for h in top],
                       "backingOff": [_host(h) for h in backing_off],
                       "robotsBlocked": [{"host": h, "count": n} for h, n in blocked]}
    if pending and not live:
        waits = f"no live worker serves fetcher kind '{kind}'; the job waits until one starts"
        answer["warnings"] = [waits]
    return answer


RATE_WINDOW = format_go_duration(WINDOW)  # "1m0s": the rates are over the last minute at most
HOSTS_TOP = 10  # hosts listed in /status
T = TypeVar("T")


async def _cached(hub: LiveHub | None, name: str, job_id: int,
                  fetch: Callable[[], Awaitable[T]]) -> T:
    return await (fetch() if hub is None else hub.cached(name, job_id, fetch))


def _host(h: progress.HostSummary) -> dict[str, Any]:
    return {"host": h.host, "pending": h.pending, "inFlight": h.in_flight,
            "nextStart": utc(h.next_start), "backoffUntil": utc(h.backoff_until),
            "robots": h.robots}


KEEPALIVE = 15.0  # seconds between SSE comments while nothing changes


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def events(request: web.Request) -> web.StreamResponse:
    """``GET /status/{id}/events``: server-sent events from the process's LiveHub: ``status``
    (the /status JSON) on every change, ``: keepalive`` comments, ``completed`` last."""
    job_id = parse_job_id(request)
    async with request.app[DEPS].acquire() as conn:
        if not await jobs.job_exists(conn, job_id):
            raise NotFound(f"Failed to get job {job_id} status")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    try:
        with request.app[LIVE].subscribe(job_id) as sub:
            while True:
                snap = await sub.get(KEEPALIVE)
                if snap is None:
                    await resp.write(b": keepalive\n\n")
                    continue
                if snap.status is None:  # deleted while watched
                    await resp.write(sse("completed", {"id": job_id, "state": "deleted"}))
                    break
                await resp.write(sse("status", snap.status))
                if snap.completed:
                    await resp.write(sse("completed", snap.status))
                    break
        await resp.write_eof()
    except ConnectionError:
        log.debug("GET %s: the client went away", request.path_qs)
    return resp


async def result(request: web.Request) -> web.StreamResponse:
    """Stream ``{"<page>": ["<link>", ...], ...}`` in Go's indented layout, chunk by chunk.

    Each chunk is read on a pooled connection that is released before the chunk is written, so
    a slow client holds no connection and no snapshot, however long it takes to read.
    """
    job_id = parse_job_id(request)
    if "status" in request.query:
        return await _failures(request, job_id)
    async with request.app[DEPS].acquire() as conn:
        stored = (await jobs.load_specs(conn, [job_id])).get(job_id) or {}
        view = github.RESULT_VIEWS.get(stored.get("source") or "web")
        if view is not None:  # a source with a document of its own (GET /users, ...)
            return await github.result_view(conn, job_id, view, stored)
    fmt = exports.parse_format(request)
    mime = request.query.get("mime", "").strip() or None
    deps = request.app[DEPS]
    async with deps.acquire() as conn:
        if not await jobs.job_exists(conn, job_id):
            raise NotFound(f"Failed to get job {job_id} result")
    source = await deps.result_source(job_id)  # a finished job's: the replica, if caught up
    async with source() as conn:
        chunk = await jobs.result_chunk(conn, job_id, (0, 0), mime)
    content_type = {"json": "application/json", "jsonl": "application/x-ndjson",
                    "csv": "text/csv; charset=utf-8"}[fmt]
    resp = web.StreamResponse(headers={"Content-Type": content_type})
    await resp.prepare(request)
    out = _ResultWriter(resp) if fmt == "json" else exports.RESULT_WRITERS[fmt](resp)
    try:
        while chunk is not None:
            await out.write(chunk.pages, chunk.continues)
            try:
                async with source() as conn:
                    chunk = await jobs.result_chunk(conn, job_id, chunk.after, mime)
            except (*RETRYABLE, DependencyUnavailable, asyncpg.PostgresError) as e:
                # Too late for a 503: cut the body short, so the client sees it is incomplete.
                log.warning("GET %s: result cut short: %s", request.path_qs, e)
                if request.transport is not None:
                    request.transport.abort()
                return resp
        await out.close()
    except ConnectionError:
        log.debug("GET %s: the client went away", request.path_qs)
        return resp
    await resp.write_eof()
    return resp


class _ResultWriter:
    """Pages and their links as Go's MarshalIndent lays out a map of lists; a page's list stays
    open until the next page starts, so a large page's links can come over several chunks."""

    def __init__(self, resp: web.StreamResponse) -> None:
        self._resp = resp
        self._started = False

    async def write(self, pages: list[tuple[str, list[str]]], continues: bool = False) -> None:
        buf: list[str] = []
        for i, (page, links) in enumerate(pages):
            if i == 0 and continues and self._started:  # more links of the page still open
                buf += [",\n    ", ",\n    ".join(map(string, links))]
                continue
            buf += ["{\n  " if not self._started else "\n  ],\n  ", string(page), ": [\n    ",
                    ",\n    ".join(map(string, links))]
            self._started = True
            if len(buf) > 1024:
                await self._resp.write("".join(buf).encode())
                buf.clear()
        if buf:
            await self._resp.write("".join(buf).encode())

    async def close(self) -> None:
        await self._resp.write(b"\n  ]\n}\n" if self._started else b"{}\n")


async def _failures(request: web.Request, job_id: int) -> web.Response:
    """``?status=failed`` (or ``blocked``): each URL with its HTTP status, reason, attempts."""
    kind = request.query["status"]
    if kind not in ("failed", "blocked"):
        raise BadRequest(f"Invalid status: {kind} (use 'failed' or 'blocked')")
    async with request.app[DEPS].acquire() as conn:
        if not await jobs.job_exists(conn, job_id):
            raise NotFound(f"Failed to get job {job_id} result")
        rows = await jobs.job_failures(conn, job_id, blocked=kind == "blocked")
    return json_response({r["url"]: {"status": r["status"], "reason": r["reason"],
                                     "attempts": r["attempts"]} for r in rows})


async def workers_list(request: web.Request) -> web.Response:
    """The live worker processes (seen within ``workerTimeout``), longest running first;
    ``health`` null, or why the worker takes no work (a failed init function); ``stats`` its
    last heartbeat's numbers (in flight, fetched by kind, pages/s, error rate, latencies);
    ``apiTokens`` the GitHub tokens' shared state, by token id."""
    async with request.app[DEPS].acquire() as conn:
        live = await workers.live_workers(conn, request.app[SETTINGS].worker_timeout)
        tokens = await github.token_states(conn)
    return json_response({"apiTokens": tokens, "workers": [
        {"id": str(w.id), "kinds": w.kinds, "hostname": w.hostname, "pid": w.pid,
         "version": w.version, "startedOn": utc(w.started_on), "seenOn": utc(w.seen_on),
         "health": w.health, "stats": w.stats}
        for w in live]})


async def healthz(request: web.Request) -> web.Response:
    """Ready when PostgreSQL answers and NATS is connected (503 otherwise). PostgreSQL is asked
    on a connection of the probe's own, so a pool busy with slow work does not fail it."""
    deps = request.app[DEPS]
    try:
        await deps.js.account_info()  # JetStream itself answers, not just the NATS connection
    except bus.TRANSIENT as e:
        raise DependencyUnavailable("NATS", str(e)) from None
    await deps.ping_postgres()
    return json_response({"status": "ok"})


# Job control (issue 16).
JOB_STATES = ("running", "paused", "cancelled", "completed")
LIST_LIMIT = (50, 1000)  # default and largest page of GET /jobs


async def jobs_list(request: web.Request) -> web.Response:
    """``GET /jobs?state=&limit=&before=``: jobs newest first, ``next`` the ``before`` of the
    next page (null on the last)."""
    state = request.query.get("state") or None
    if state is not None and state not in JOB_STATES:
        raise BadRequest(f"Invalid state: {state} (use {', '.join(JOB_STATES)})")
    raw = request.query.get("limit")
    limit = LIST_LIMIT[0] if raw is None else parse_int("limit", raw, 1, LIST_LIMIT[1])
    raw = request.query.get("before")
    before = None if raw is None else parse_int("before", raw, 1, _INT64[1])
    who = principal(request)
    async with request.app[DEPS].acquire() as conn:
        rows = await jobs.list_jobs(conn, state, before, limit + 1,
                                    None if who.admin else who.owner)
    more = len(rows) > limit
    rows = rows[:limit]
    return json_response({"jobs": [job_summary(r) for r in rows],
                          "next": rows[-1].job_id if more else None})


def job_summary(j: jobs.JobSummary) -> dict[str, Any]:
    return {"id": j.job_id, "createdOn": utc(j.created_on), "state": j.state,
            "completed": j.completed, "urls": j.urls,
            "pages": {"queued": j.pending, "processed": j.processed, "fetched": j.fetched,
                      "cached": j.cached, "failed": j.failed, "blocked": j.blocked}}


async def job_delete(request: web.Request) -> web.Response:
    """``DELETE /jobs/{id}``: cancel (200); ``?purge=true``: cancel and delete (202; the rows
    are purged by the housekeeping, the job is gone from every answer at once)."""
    job_id = parse_job_id(request)
    purge = parse_flag(request, "purge")
    async with request.app[DEPS].acquire() as conn:
        if purge:
            await jobs.mark_deleted(conn, job_id)
            return json_response({"id": job_id, "state": "deleted"}, status=202)
        state = await jobs.cancel_job(conn, job_id)
    return json_response({"id": job_id, "state": state})


async def job_pause(request: web.Request) -> web.Response:
    job_id = parse_job_id(request)
    async with request.app[DEPS].acquire() as conn:
        state = await jobs.pause_job(conn, job_id)
    return json_response({"id": job_id, "state": state})


async def job_resume(request: web.Request) -> web.Response:
    job_id = parse_job_id(request)
    async with request.app[DEPS].acquire() as conn:
        state = await jobs.resume_job(conn, job_id)
    return json_response({"id": job_id, "state": state})


async def job_patch(request: web.Request) -> web.Response:
    """``PATCH /jobs/{id}`` with ``{"deny": [...]}``: add deny patterns; queued visits they
    match are dropped without a fetch."""
    job_id = parse_job_id(request)
    settings = request.app[SETTINGS]
    body = await read_text(request, settings.max_request_bytes)
    data = json_object(body, ("deny",), '{"deny": [...]}')
    if "deny" not in data:
        raise BadRequest("Invalid body: expected exactly the field deny (a list of patterns)")
    deny = data["deny"]
    if not isinstance(deny, list) or not all(isinstance(p, str) for p in deny):
        raise BadRequest("Invalid deny: a list of strings")
    for p in deny:
        if (problem := check_pattern(p)) is not None:
            raise BadRequest(f"Invalid deny pattern: {p} ({problem})")
    async with request.app[DEPS].acquire() as conn:
        dropped = await jobs.change_scope(conn, job_id, deny)
    return json_response({"id": job_id, "deny": deny, "dropped": dropped})


def add_routes(app: web.Application, root: str) -> None:
    base = root.rstrip("/")
    app.router.add_post(base + "/", schedule)
    if base:
        app.router.add_post(base, schedule)
    app.router.add_get(base + "/status/{job_id}", status, allow_head=False)
    app.router.add_get(base + "/status/{job_id}/events", events, allow_head=False)
    app.router.add_get(base + "/result/{job_id}", result, allow_head=False)
    app.router.add_get(base + "/workers", workers_list, allow_head=False)
    app.router.add_get(base + "/items/{job_id}", exports.items, allow_head=False)
    app.router.add_get(base + "/bodies/{job_id}", exports.saved_bodies, allow_head=False)
    app.router.add_get(base + "/index/{job_id}", exports.cdx_index, allow_head=False)
    app.router.add_post(base + "/idsets", exports.post_idset)
    app.router.add_get(base + "/jobs", jobs_list, allow_head=False)
    app.router.add_delete(base + "/jobs/{job_id}", job_delete)
    app.router.add_patch(base + "/jobs/{job_id}", job_patch)
    app.router.add_post(base + "/jobs/{job_id}/pause", job_pause)
    app.router.add_post(base + "/jobs/{job_id}/resume", job_resume)
    task_api.add_routes(app, base)
    session_api.add_routes(app, base)
    github.add_routes(app, base)
    app[exports.UPLOADS] = asyncio.Semaphore(exports.MAX_UPLOADS)
    app.router.add_get("/healthz", healthz, allow_head=False)
    # The OpenAPI document and the dashboard (E5: web_server/openapi.json, web_server/ui/).
    app.router.add_get(base + "/openapi.json", openapi, allow_head=False)
    app.router.add_get(base + "/ui", ui_index, allow_head=False)
    app.router.add_get(base + "/ui/", ui_index, allow_head=False)
    app.router.add_static(base + "/ui/", UI_DIR)


UI_DIR = Path(__file__).with_name("ui")
_OPENAPI = Path(__file__).with_name("openapi.json")


# Served at the server's root whatever the root path: the ops routes of every tier.
OUTSIDE_ROOT = ("/healthz", "/readyz", "/metrics")


def openapi_document(root: str) -> bytes:
    """The hand-written OpenAPI 3.1 document (tests keep it true). Its paths are relative to
    the root path: under a root path other than ``/`` the document names it as its server,
    and the ops routes, which stay at the server's root, name ``/`` as theirs."""
    raw = _OPENAPI.read_bytes()
    base = root.rstrip("/")
    if not base:
        return raw
    doc = json.loads(raw)
    doc["servers"] = [{"url": base}]
    for path in OUTSIDE_ROOT:
        doc["paths"][path]["servers"] = [{"url": "/"}]
    return json.dumps(doc, indent=1).encode()


async def openapi(request: web.Request) -> web.Response:
    """``GET /openapi.json`` (under the root path)."""
    return web.Response(body=openapi_document(request.app[SETTINGS].root_path),
                        content_type="application/json")


async def ui_index(request: web.Request) -> web.StreamResponse:
    """``GET /ui/``: the dashboard (plain HTML and JavaScript, no build step)."""
    if not request.path.endswith("/"):
        raise web.HTTPFound(request.path + "/")
    return web.FileResponse(UI_DIR / "index.html")
