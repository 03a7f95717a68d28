"""The fetcher (worker/fetchers/http.py ``fetch``) against local sites on 127.0.0.1: redirects, the body
cap, timeouts and the one deadline of a fetch, Retry-After, conditional requests, failures as
outcomes; and redirect hops admitted by a real HostGate on PostgreSQL."""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiohttp import web
from multidict import CIMultiDict

from harvester_ops.embedded import free_port
from shared.config import Settings
from shared.db.pool import open_pool
from shared.model import FetchedPage
from tests.servers import serve
from worker.fetchers.http import Validators, fetch, fetch_budget, open_session
from worker.gate import HostGate
from worker.retry import RetryPolicy

pytestmark = pytest.mark.serial  # make test runs it alone: deadlines asserted to half a second

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[[dict[str, Handler]], Awaitable[str]]
POLICY = RetryPolicy(retries=3, base=1.0, cap=60.0, max_pause=120.0)  # the rule, not the timing


def html(text: str = "<a href='/x'>x</a>", status: int = 200,
         headers: dict[str, str] | None = None) -> Handler:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(text=text, status=status, headers=headers, content_type="text/html")
    return answer


def redirect(to: str, status: int = 302, delay: float = 0.0) -> Handler:
    async def answer(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(delay)
        return web.Response(status=status, headers={"Location": to})
    return answer


@pytest.fixture
async def site() -> AsyncIterator[Serve]:
    """Serves ``{path: handler}`` on a loopback address (127.0.0.1, then .2, .3 ...)."""
    runners: list[web.AppRunner] = []

    async def start(paths: dict[str, Handler]) -> str:
        async def route(request: web.Request) -> web.StreamResponse:
            handler = paths.get(request.path)
            if handler is None:
                return web.Response(status=404)
            return await handler(request)

        runner, base = await serve(route, f"127.0.0.{len(runners) + 1}")
        runners.append(runner)
        return base

    yield start
    for r in runners:
        await r.cleanup()


@pytest.fixture
def quick(settings: Settings) -> Settings:
    return settings.model_copy(update={"connect_timeout": 0.5, "read_timeout": 1.0,
                                       "max_body_bytes": 64 * 1024, "max_redirects": 3})


async def get(s: Settings, url: str, validators: Validators | None = None,
              hops: HostGate | None = None, keep_raw: bool = False) -> FetchedPage:
    async with open_session(s) as session:
        return await fetch(session, s, 1, url, validators, hops, keep_raw=keep_raw)


# -- answers and redirects --------------------------------------------------------------------

async def test_an_html_page_and_its_validators(quick: Settings, site: Serve) -> None:
    base = await site({"/": html(headers={"ETag": '"v1"', "Last-Modified": "Mon, 01 Jan 2024 "
                                          "00:00:00 GMT"})})
    page = await get(quick, base + "/")
    assert (page.status, page.mime, page.error, page.cacheable) == (200, "text/html", None, True)
    assert page.body == b"<a href='/x'>x</a>" and page.final_url is None and page.redirects == ()
    assert (page.etag, page.last_modified) == ('"v1"', "Mon, 01 Jan 2024 00:00:00 GMT")
    assert not page.failed and not POLICY.retryable(page)


async def test_a_conditional_request_answered_304(quick: Settings, site: Serve) -> None:
    async def unchanged(request: web.Request) -> web.StreamResponse:
        same = request.headers.get("If-None-Match") == '"v1"'
        return web.Response(status=304) if same else web.Response(text="new")

    base = await site({"/": unchanged})
    page = await get(quick, base + "/", Validators(etag='"v1"'))
    assert page.status == 304 and page.not_modified and not page.failed
    assert (await get(quick, base + "/")).status == 200


async def test_redirects_are_followed_and_recorded(quick: Settings, site: Serve) -> None:
    other = await site({"/end": html("<p>here</p>")})
    base = await site({"/a": redirect("/b", 301), "/b": redirect(f"{other}/end", 307)})
    page = await get(quick, base + "/a")
    assert page.status == 200 and page.body == b"<p>here</p>"
    assert page.final_url == f"{other}/end" and page.redirects == (f"{base}/a", f"{base}/b")


async def test_too_many_redirects_fail_for_good(quick: Settings, site: Serve) -> None:
    base = await site({f"/r{i}": redirect(f"/r{i + 1}") for i in range(10)})
    page = await get(quick, base + "/r0")
    assert page.error == "more than 3 redirects" and page.permanent and not POLICY.retryable(page)
    assert page.final_url == f"{base}/r4" and len(page.redirects) == 4


async def test_a_redirect_to_an_unsupported_url_keeps_its_status(
        quick: Settings, site: Serve) -> None:
    base = await site({"/m": redirect("mailto:someone@example.com")})
    page = await get(quick, base + "/m")
    assert page.status == 302 and page.failed and not POLICY.retryable(page)
    assert page.error == "redirect to an unsupported URL: mailto:someone@example.com"


# -- the body cap -----------------------------------------------------------------------------

async def test_a_declared_body_over_the_cap_fails_for_good(quick: Settings, site: Serve) -> None:
    base = await site({"/big": html("x" * (64 * 1024 + 1))})
    page = await get(quick, base + "/big")
    assert page.error == "body of 65537 bytes exceeds the 65536-byte limit" and page.permanent


async def test_a_streamed_body_over_the_cap_fails_for_good(quick: Settings, site: Serve) -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/html"})
        await resp.prepare(request)  # chunked: no length announced
        for _ in range(80):
            await resp.write(b"x" * 1024)
        await resp.write_eof()
        return resp

    base = await site({"/stream": stream})
    page = await get(quick, base + "/stream")
    assert page.error == "body exceeds the 65536-byte limit" and page.permanent


async def test_a_body_that_is_not_html_is_not_read(quick: Settings, site: Serve) -> None:
    async def image(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"x" * 200_000, content_type="image/png")

    base = await site({"/i": image})
    page = await get(quick, base + "/i")
    assert (page.status, page.mime, page.error, page.body) == (200, "image/png", None, None)


# -- raw answers (for outputs such as WARC) ---------------------------------------------------

PLAIN = b"<html><a href='/x'>x</a>" + b"<p>padding</p>" * 200
GZIPPED = gzip.compress(PLAIN, mtime=0)
SENT = [("Content-Type", "text/html; charset=utf-8"), ("Content-Encoding", "gzip"),
        ("X-Mixed-Case", "one"), ("x-mixed-case", "two"), ("X-MIXED-CASE", "three")]


async def gzipped(request: web.Request) -> web.StreamResponse:
    return web.Response(body=GZIPPED, headers=CIMultiDict(SENT))


async def test_raw_bytes_and_headers_are_kept_as_received(quick: Settings, site: Serve) -> None:
    base = await site({"/z": gzipped})
    page = await get(quick, base + "/z", keep_raw=True)
    assert page.status == 200 and page.body == PLAIN  # decoded for the extractors
    assert page.raw is not None and page.raw.body == GZIPPED  # as received
    assert page.raw.status_line == b"HTTP/1.1 200 OK"
    sent = [(k.encode(), v.encode()) for k, v in SENT]
    assert [h for h in page.raw.headers if h in sent] == sent  # names' case, order, repeats
    asked = dict(page.raw.request_headers)
    assert asked["User-Agent"] == quick.user_agent and "gzip" in asked["Accept-Encoding"]


async def test_raw_is_not_kept_unless_asked(quick: Settings, site: Serve) -> None:
    base = await site({"/z": gzipped})
    page = await get(quick, base + "/z")
    assert page.raw is None and page.body == PLAIN


async def test_an_identity_body_is_not_copied(quick: Settings, site: Serve) -> None:
    base = await site({"/": html("<p>plain</p>")})
    page = await get(quick, base + "/", keep_raw=True)
    assert page.raw is not None and page.raw.body is page.body and page.body == b"<p>plain</p>"


async def test_a_raw_body_nobody_reads_is_kept_as_received_and_not_decoded(
        quick: Settings, site: Serve) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4

    async def image(request: web.Request) -> web.StreamResponse:
        return web.Response(body=png, content_type="image/png",
                            headers={"Content-Encoding": "x-unheard-of"})

    async def big(request: web.Request) -> web.StreamResponse:
        return web.Response(body=png * 100, content_type="image/png",
                            headers={"Content-Encoding": "x-unheard-of"})

    base = await site({"/i.png": image, "/big.png": big})
    page = await get(quick, base + "/i.png", keep_raw=True)
    assert (page.status, page.error, page.body) == (200, None, None)  # the source wants no body
    assert page.raw is not None and page.raw.body == png  # as received, not decoded
    page = await get(quick, base + "/big.png", keep_raw=True)  # the cap holds on raw bytes
    assert page.error == f"body of {len(png) * 100} bytes exceeds the 65536-byte limit"
    assert page.permanent
    assert page.raw is None


async def test_a_compressed_body_over_the_cap_after_decoding_fails_for_good(
        quick: Settings, site: Serve) -> None:
    bomb = gzip.compress(b"<p>" + b"0" * (quick.max_body_bytes + 1))  # about 100 bytes sent

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip",
                                                "Content-Type": "text/html"})

    base = await site({"/bomb": answer})
    for keep_raw in (True, False):
        page = await get(quick, base + "/bomb", keep_raw=keep_raw)
        assert page.error == "body exceeds the 65536-byte limit" and page.permanent, keep_raw
        assert page.body is None and page.raw is None


# -- time -------------------------------------------------------------------------------------

async def test_an_answer_slower_than_the_read_timeout_times_out(
        quick: Settings, site: Serve) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(3)
        return web.Response(text="late")

    base = await site({"/slow": slow})
    t0 = time.monotonic()
    page = await get(quick, base + "/slow")
    assert page.error == "timeout" and POLICY.retryable(page) and page.status is None
    assert time.monotonic() - t0 < quick.read_timeout + 0.5


async def test_a_fetch_has_one_deadline_for_all_its_hops(quick: Settings, site: Serve) -> None:
    """Each hop answers well within readTimeout (0.7 s of 1 s), but the chain (7 s) is longer
    than connectTimeout + 2 × readTimeout (2.5 s): the fetch ends at that deadline, inside its
    host lease, with every hop answered before it recorded and the one under way cut."""
    s = quick.model_copy(update={"max_redirects": 10})
    asked: list[str] = []

    def logged(handler: Handler) -> Handler:
        async def answer(request: web.Request) -> web.StreamResponse:
            asked.append(request.path)
            return await handler(request)
        return answer

    base = await site({f"/r{i}": logged(redirect(f"/r{i + 1}", delay=0.7)) for i in range(10)})
    t0 = time.monotonic()
    page = await get(s, base + "/r0")
    took = time.monotonic() - t0
    assert page.error == "timeout" and POLICY.retryable(page)
    assert fetch_budget(s) - 0.1 <= took < s.fetch_lease
    assert 2 <= len(asked) < 10  # the chain was cut, not followed to its end
    assert page.redirects == tuple(base + p for p in asked[:-1])  # answered; the last cut


# -- Retry-After ------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "header", "expected"), [
    (429, "3", 3.0), (503, " 120 ", 120.0), (429, "soon", None), (429, "-5", None),
    (200, "3", None), (500, "3", None)])
async def test_retry_after_seconds(quick: Settings, site: Serve, status: int, header: str,
                                   expected: float | None) -> None:
    base = await site({"/": html(status=status, headers={"Retry-After": header})})
    page = await get(quick, base + "/")
    assert page.status == status and page.retry_after == expected
    assert page.headers is not None and "Retry-After" in page.headers  # for a RetryPolicy


async def test_retry_after_as_an_http_date(quick: Settings, site: Serve) -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    past = datetime.now(UTC) - timedelta(seconds=30)
    base = await site({
        "/later": html(status=503, headers={"Retry-After": email.utils.format_datetime(when, True)}),
        "/past": html(status=429, headers={"Retry-After": email.utils.format_datetime(past, True)})})
    later = await get(quick, base + "/later")
    assert later.retry_after is not None and 27 <= later.retry_after <= 30
    assert later.error == "HTTP 503 Service Unavailable" and POLICY.retryable(later)
    assert (await get(quick, base + "/past")).retry_after == 0.0


# -- failures are outcomes, never exceptions --------------------------------------------------

async def test_a_refused_connection_is_a_retryable_failure(quick: Settings) -> None:
    page = await get(quick, f"http://127.0.0.1:{free_port('127.0.0.1')}/")
    assert page.error is not None and page.error.startswith("connection failed: ")
    assert page.status is None and POLICY.retryable(page) and not page.cacheable


async def test_a_host_that_does_not_resolve(quick: Settings) -> None:
    page = await get(quick, "http://nowhere.invalid/")
    assert page.error is not None and page.error.startswith("host name not resolved: ")
    assert page.status is None and POLICY.retryable(page)


async def test_an_invalid_url_fails_for_good(quick: Settings) -> None:
    page = await get(quick, "http://[::1/")
    assert page.error is not None and page.error.startswith("invalid URL") and page.permanent


async def test_a_dropped_connection_is_a_retryable_failure(quick: Settings, site: Serve) -> None:
    async def drop(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    base = await site({"/drop": drop})
    page = await get(quick, base + "/drop")
    assert page.status is None and page.error and POLICY.retryable(page) and not page.permanent


# -- redirect hops through the gate -----------------------------------------------------------

@pytest.fixture
async def gate(quick: Settings) -> AsyncIterator[HostGate]:
    s = quick.model_copy(update={"robots": True, "host_concurrency": 1, "host_delay": 0.0})
    async with open_pool(s.database_url, max_size=4) as pool, open_session(s) as session:
        g = HostGate(s, pool, session)
        releases = asyncio.create_task(g.run_releases())
        yield g
        await g.close()
        releases.cancel()
        await asyncio.gather(releases, return_exceptions=True)


async def leases(db: asyncpg.Connection, host: str) -> int:
    return int(await db.fetchval(
        "SELECT coalesce(cardinality(leases), 0) FROM host WHERE host = $1", host) or 0)


async def test_a_hop_to_another_host_takes_a_slot_there_and_gives_it_back(
        gate: HostGate, site: Serve, db: asyncpg.Connection) -> None:
    seen: list[str] = []

    async def landing(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        assert await leases(db, other) == 1  # the hop's slot, held while it is answered
        return web.Response(text="<p>landed</p>", content_type="text/html")

    other = await site({"/robots.txt": html("User-agent: *\nDisallow: /private\n"),
                        "/land": landing, "/private/x": html()})
    base = await site({"/robots.txt": html(""), "/go": redirect(f"{other}/land"),
                       "/sneak": redirect(f"{other}/private/x")})
    page = await get(gate.settings, base + "/go", hops=gate)
    assert page.status == 200 and page.final_url == f"{other}/land" and seen == ["/land"]

    deadline = time.monotonic() + 5
    while await leases(db, other):
        assert time.monotonic() < deadline, "the hop's slot was not given back"
        await asyncio.sleep(0.02)
    page = await get(gate.settings, base + "/sneak", hops=gate)
    assert page.status == 302 and not POLICY.retryable(page) and "/private/x" not in seen
    assert page.error == f"redirect to {other}/private/x: blocked by robots.txt"


async def test_a_hop_waits_for_a_busy_hosts_slot_no_longer_than_the_fetch_deadline(
        gate: HostGate, site: Serve) -> None:
    other = await site({"/robots.txt": html(""), "/land": html()})
    base = await site({"/robots.txt": html(""), "/go": redirect(f"{other}/land")})
    taken = await gate.admit({(9, 9): other + "/land"})  # robots.txt first, then the slot
    while not taken.granted:
        await asyncio.sleep(0.05)
        taken = await gate.admit({(9, 9): other + "/land"})
    t0 = time.monotonic()
    page = await get(gate.settings, base + "/go", hops=gate)
    took = time.monotonic() - t0
    assert page.error == f"redirect to {other}/land: no free slot on the host"
    assert page.status is None and POLICY.retryable(page)  # tried again later
    assert took < fetch_budget(gate.settings) + 0.5
    gate.give_back(taken.granted[(9, 9)])
