"""The ``http`` fetcher: one URL over HTTP(S) with aiohttp. Timeouts, a body cap, redirects
recorded, status and type kept, the body kept (when the source wants it) for the job's
extractors, which run after the fetch (the links off the event loop: ``worker.extractors.lanes``)."""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Self

import aiohttp
import yarl

from shared.config import Settings
from shared.mime import is_html, normalize_mime
from shared.model import FetchedPage, RawResponse
from shared.netguard import NetGuard, refused
from shared.robots import redirected
from shared.streams import read_capped
from shared.urls import host_key, resolve
from worker.fetchers import FETCHERS, FetchRequest, HopGate, Validators, refused_hop
from worker.fetchers.decode import BodyTooLarge, DecodeError, UnsupportedEncoding, read_raw
from worker.retry import RetryPolicy

log = logging.getLogger(__name__)
# Hosts whose encoding yarl keeps (its encode_host and IDNA caches; 512 and 256 by default): a
# crawl over more hosts than that encoded every request's host anew (over 1,000 hosts: 7.8
# against 4.3 us a URL built); a few hundred bytes a host. Process-wide, set once here (each
# call empties the caches).
YARL_HOSTS = 8192
yarl.cache_configure(idna_encode_size=YARL_HOSTS, idna_decode_size=YARL_HOSTS,
                     encode_host_size=YARL_HOSTS)


@asynccontextmanager
async def open_session(settings: Settings, concurrency: int | None = None,
                       guard: NetGuard | None = None) -> AsyncIterator[aiohttp.ClientSession]:
    """A session for ``concurrency`` fetches at once (default: ``settings.concurrency``), its
    every connection through the SSRF guard (default: ``NetGuard.from_settings``): a refused
    address is never connected to (``AddressBlocked``, in a ``ClientConnectorError``)."""
    guard = guard if guard is not None else NetGuard.from_settings(settings)
    # No cap per host here: the host gate's (cluster-wide, ``hostConcurrency``) is the one. A
    # lower one here (aiohttp's 8 of old) left the visits past it holding their host slots
    # while they waited in the pool, their time-out running.
    connector = guard.connector(limit=(concurrency or settings.concurrency) * 2,
                                limit_per_host=0, enable_cleanup_closed=True)
    timeout = aiohttp.ClientTimeout(total=settings.connect_timeout + settings.read_timeout * 2,
                                    sock_connect=settings.connect_timeout,
                                    sock_read=settings.read_timeout)
    headers = {"User-Agent": settings.user_agent,
               "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.5",
               "Accept-Encoding": "gzip, deflate, br"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers,
                                     cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


def fetch_budget(settings: Settings) -> float:
    """Longest a whole fetch may take, redirect hops and the waits for their slots included:
    ``connectTimeout + 2 × readTimeout``. A host slot's lease (``Settings.fetch_lease``) is
    5 s longer, so a fetch never outlives its slot."""
    return settings.connect_timeout + 2 * settings.read_timeout


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    if resp.content_length is not None and resp.content_length > cap:
        raise BodyTooLarge(cap, resp.content_length)
    body = await read_capped(resp.content, cap)
    if body is None:
        raise BodyTooLarge(cap)
    return body


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


def retry_after_of(status: int, value: str | None) -> float | None:
    """The Retry-After (``value``) an answer's ``status`` heeds it on (429, 503), else None."""
    return retry_after_seconds(value) if status in (429, 503) else None


REDIRECTS = (301, 302, 303, 307, 308)
TRICKLE = "timeout: the body came too slowly"


def request_headers(settings: Settings, url: str, validators: Validators | None) -> dict[str, str]:
    """Headers for one request: a User-Agent (from the pool, if any), the host's own extra
    headers (never sent to any other host, redirects included) and conditional headers."""
    headers = dict(settings.headers_for(host_key(url)))
    if settings.user_agents:
        headers["User-Agent"] = random.choice(settings.user_agents)
    if validators is not None:
        if validators.etag:
            headers["If-None-Match"] = validators.etag
        if validators.last_modified:
            headers["If-Modified-Since"] = validators.last_modified
    return headers


def html_2xx(status: int, mime: str | None) -> bool:
    """Whether to read an answer's body by default: a 2xx HTML page (its links are wanted)."""
    return 200 <= status < 300 and mime is not None and is_html(mime)


NO_HEADERS: Mapping[str, str] = {}


@FETCHERS.register("http")
class HttpFetcher:
    """The ``http`` fetcher: owns the aiohttp session (``open_session``) its fetches share,
    sized for the kind's ``concurrency``."""
    kind = "http"

    def __init__(self, settings: Settings, concurrency: int | None = None) -> None:
        self.settings = settings
        self.concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None
        self._stack = AsyncExitStack()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "HttpFetcher used outside its async with"
        return self._session

    async def __aenter__(self) -> Self:
        self._session = await self._stack.enter_async_context(open_session(self.settings,
                                                                          self.concurrency))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._session = None
        await self._stack.aclose()

    async def fetch(self, req: FetchRequest, hops: HopGate | None) -> FetchedPage:
        return await fetch(self.session, self.settings, req.url_id, req.url, req.validators,
                           hops, req.policy, wants_body=req.wants_body, headers=req.headers,
                           keep_raw=req.keep_raw)


async def fetch(session: aiohttp.ClientSession, settings: Settings, url_id: int, url: str,
                validators: Validators | None = None, hops: HopGate | None = None,
                policy: RetryPolicy | None = None, *,
                wants_body: Callable[[int, str | None], bool] = html_2xx,
                headers: Mapping[str, str] = NO_HEADERS, keep_raw: bool = False) -> FetchedPage:
    """Fetch one page, following redirects one hop at a time (so each hop gets its
    own host's headers); every failure becomes a recorded outcome, never an exception.
    The body is read when ``wants_body(status, mime)`` says so (default: a 2xx HTML page);
    ``headers`` (a source's additions) go with every request to the page's own host.
    ``keep_raw``: the final answer is also kept as received (``FetchedPage.raw``): aiohttp
    leaves its Content-Encoding alone and ``decode.read_raw`` undoes it, the body cap holding
    on the decoded bytes; a body nobody wants is read as received only, never decoded (the
    cap holding on the raw bytes).

    With ``hops``, every redirect hop is admitted like a visit: robots.txt must allow it and,
    on a host other than the page's own (whose slot the caller holds), a request slot must be
    free; that slot is released as soon as its request is answered, the answer backing that
    host off as ``policy`` says (default: ``RetryPolicy.from_settings``).

    The whole fetch, every hop and every wait for a hop's slot, has one deadline
    (``fetch_budget``): past it, the fetch fails with "timeout"."""
    chain: list[str] = []
    slot: Any = None  # the slot of the current hop, when it is on another host
    reading = False  # the final answer's headers arrived: its body is being read
    current = url
    loop = asyncio.get_running_loop()
    deadline = loop.time() + fetch_budget(settings)
    rules = policy if policy is not None else RetryPolicy.from_settings(settings)

    def failed(error: str, permanent: bool = False) -> FetchedPage:
        """No answer (or an unusable one): where it happened, if a redirect led elsewhere."""
        return FetchedPage(url_id, None, None, error, cacheable=False,
                           final_url=current if current != url else None,
                           redirects=tuple(chain), permanent=permanent)

    try:
        for _ in range(settings.max_redirects + 1):
            sent = request_headers(settings, current, validators if not chain else None)
            if headers and host_key(current) == host_key(url):
                sent.update(headers)
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError
            timeout = aiohttp.ClientTimeout(total=left, sock_read=settings.read_timeout,
                                            sock_connect=min(settings.connect_timeout, left))
            async with session.get(current, allow_redirects=False, headers=sent,
                                   timeout=timeout,
                                   auto_decompress=False if keep_raw else None) as resp:
                location = resp.headers.get("Location")
                if not (resp.status in REDIRECTS and location):
                    reading = True
                    page = await _answer(resp, settings, url_id, url, current, tuple(chain),
                                         wants_body, keep_raw)
                    _release(hops, slot, rules, page)
                    return page
                status = resp.status
            if hops is not None and slot is not None:  # a redirect says nothing bad of the host
                hops.release(slot, False, None)
            slot = None
            nxt = resolve(current, location)
            if nxt is None:
                return FetchedPage(url_id, status, None,
                                   f"redirect to an unsupported URL: {location}",
                                   cacheable=True, redirects=tuple(chain))
            chain.append(current)
            if hops is not None:
                admitted = await hops.admit_hop(nxt, host_key(nxt) != host_key(url), deadline)
                if isinstance(admitted, str):  # never connected to
                    return refused_hop(url_id, nxt, admitted, status, tuple(chain))
                slot = admitted
            current = nxt
        page = failed(f"more than {settings.max_redirects} redirects", permanent=True)
    except asyncio.CancelledError:
        if hops is not None and slot is not None:  # shutting down: nothing said of the host
            hops.give_back(slot)
        raise
    except (BodyTooLarge, UnsupportedEncoding) as e:  # the same answer next time
        page = failed(str(e), permanent=True)
    except DecodeError as e:  # corrupt or cut short: worth another try, as aiohttp's own
        page = failed(str(e))
    except TimeoutError:
        # After the headers, a body too slow to arrive in time (a trickle, a stall) would be
        # as slow again: one attempt, not a retry per attempt of the whole fetch budget. Not
        # when redirect hops left its request less than a read's timeout: that says nothing.
        page = (failed(TRICKLE, permanent=True) if reading and left >= settings.read_timeout
                else failed("timeout"))
    except aiohttp.ClientConnectorError as e:
        reason = refused(e)
        if reason is not None:  # the guard refused the address: for good
            page = failed(reason if current == url else redirected(reason, current),
                          permanent=True)
        else:
            page = failed(connect_error(e))
    except aiohttp.InvalidURL as e:
        page = failed(f"invalid URL: {e}", permanent=True)
    except aiohttp.ClientError as e:  # disconnects, payload errors: worth another try
        page = failed(f"{type(e).__name__}: {e}".rstrip(": "))
    except (ValueError, UnicodeError) as e:  # e.g. a malformed URL
        page = failed(f"invalid URL: {e}", permanent=True)
    # A hop's slot still held: its request got no answer (trouble), or was never made.
    _release(hops, slot, rules, page)
    return page


def connect_error(e: aiohttp.ClientConnectorError) -> str:
    """Why no connection could be made, as a failure reason (not the guard's refusal:
    ``shared.netguard.refused`` reads that first)."""
    if isinstance(e, aiohttp.ClientConnectorDNSError):
        return f"host name not resolved: {e.os_error}"
    return f"connection failed: {e.os_error}"


def _release(hops: HopGate | None, slot: Any, policy: RetryPolicy, page: FetchedPage) -> None:
    """Give a hop's slot back after ``page`` (None: there is none), in trouble as ``policy``
    says: a 429 or a 503 (paused for its Retry-After, capped), no answer that may mend."""
    if hops is not None and slot is not None:
        hops.release(slot, policy.trouble(page), policy.pause(page))


async def _answer(resp: aiohttp.ClientResponse, settings: Settings, url_id: int, url: str,
                  final: str, chain: tuple[str, ...],
                  wants_body: Callable[[int, str | None], bool], keep_raw: bool) -> FetchedPage:
    status = resp.status
    raw = None
    if status == 304:  # unchanged since the stored copy: keep its type, links and validators
        if keep_raw:
            raw = _raw(resp, b"")
        return FetchedPage(url_id, 304, None, None, cacheable=True, not_modified=True,
                           headers=resp.headers, raw=raw)
    mime = normalize_mime(resp.headers.get("Content-Type"))
    body = None  # for the job's extractors, which run after the fetch
    if keep_raw:  # every answer, for an output such as WARC; the body only if wanted
        if wants_body(status, mime):
            received, body = await read_raw(resp, settings.max_body_bytes)
        else:  # not decoded: an encoding it cannot undo fails no fetch that never reads it
            received = await _read_capped(resp, settings.max_body_bytes)
        raw = _raw(resp, received)
    elif wants_body(status, mime):
        body = await _read_capped(resp, settings.max_body_bytes)
    error = f"HTTP {status} {resp.reason or ''}".strip() if status >= 400 else None
    retry_after = retry_after_of(status, resp.headers.get("Retry-After"))
    ok = 200 <= status < 300
    # Any HTTP answer is cached (as Scrapy's HTTP cache does by default); only failures
    # without an answer (timeouts, refused connections, oversize bodies) are tried again.
    return FetchedPage(url_id, status, mime, error, cacheable=True,
                       final_url=final if final != url else None, redirects=chain,
                       retry_after=retry_after, body=body,
                       charset=resp.charset if body is not None else None,
                       etag=resp.headers.get("ETag") if ok else None,
                       last_modified=resp.headers.get("Last-Modified") if ok else None,
                       headers=resp.headers, raw=raw)


def _raw(resp: aiohttp.ClientResponse, body: bytes) -> RawResponse:
    """The answer as received: status line, header lines as sent (aiohttp's ``raw_headers``),
    body before its Content-Encoding was undone, and the request's headers as sent."""
    version = resp.version or aiohttp.HttpVersion11
    line = f"HTTP/{version.major}.{version.minor} {resp.status} {resp.reason or ''}".rstrip()
    return RawResponse(line.encode("latin-1"), tuple(resp.raw_headers), body,
                       tuple(resp.request_info.headers.items()))
