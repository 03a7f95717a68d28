"""Fetching one URL: timeouts, a body cap, redirects recorded, status and type kept, links parsed."""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from shared.config import Settings
from shared.db.pages import FetchedPage
from shared.links import extract_links
from shared.mime import guess_mime, is_html, normalize_mime
from shared.urls import canonicalize

log = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    pass


@asynccontextmanager
async def open_session(settings: Settings) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=settings.concurrency * 2, limit_per_host=8,
                                     ttl_dns_cache=300, enable_cleanup_closed=True)
    timeout = aiohttp.ClientTimeout(total=settings.connect_timeout + settings.read_timeout * 2,
                                    sock_connect=settings.connect_timeout,
                                    sock_read=settings.read_timeout)
    headers = {"User-Agent": settings.user_agent,
               "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.5",
               "Accept-Encoding": "gzip, deflate, br"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers,
                                     cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    if resp.content_length is not None and resp.content_length > cap:
        raise BodyTooLarge(f"body of {resp.content_length} bytes exceeds the {cap}-byte limit")
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > cap:
            raise BodyTooLarge(f"body exceeds the {cap}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _retry_after(value: str | None) -> float | None:
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
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())


async def fetch(session: aiohttp.ClientSession, settings: Settings, url_id: int, url: str) -> FetchedPage:
    """Fetch and parse one page; every failure becomes a recorded outcome, never an exception."""
    try:
        async with session.get(url, allow_redirects=True,
                               max_redirects=settings.max_redirects) as resp:
            mime = normalize_mime(resp.headers.get("Content-Type"))
            final = canonicalize(str(resp.url))
            chain = tuple(canonicalize(str(h.url)) for h in resp.history)
            status = resp.status
            links: tuple[tuple[str, str], ...] = ()
            if 200 <= status < 300 and is_html(mime):
                body = await _read_capped(resp, settings.max_body_bytes)
                found = extract_links(body, final, encoding=resp.charset)
                links = tuple((u, guess_mime(u)) for u in found)
            error = f"HTTP {status} {resp.reason or ''}".strip() if status >= 400 else None
            retry_after = _retry_after(resp.headers.get("Retry-After")) if status in (429, 503) else None
            # Any HTTP answer is cached (as Scrapy's HTTP cache does by default); only failures
            # without an answer (timeouts, refused connections, oversize bodies) are tried again.
            return FetchedPage(url_id, status, mime, error, cacheable=True,
                               final_url=final if final != url else None, redirects=chain,
                               links=links, retry_after=retry_after)
    except BodyTooLarge as e:
        return FetchedPage(url_id, None, None, str(e), cacheable=False)
    except aiohttp.TooManyRedirects:
        return FetchedPage(url_id, None, None,
                           f"more than {settings.max_redirects} redirects", cacheable=False)
    except asyncio.TimeoutError:
        return FetchedPage(url_id, None, None, "timeout", cacheable=False)
    except aiohttp.ClientConnectorError as e:
        return FetchedPage(url_id, None, None, f"connection failed: {e.os_error}", cacheable=False)
    except aiohttp.InvalidURL as e:
        return FetchedPage(url_id, None, None, f"invalid URL: {e}", cacheable=False)
    except aiohttp.ClientError as e:  # disconnects, payload errors: worth another try
        return FetchedPage(url_id, None, None, f"{type(e).__name__}: {e}".rstrip(": "),
                           cacheable=False)
    except (ValueError, UnicodeError) as e:  # e.g. a redirect to a malformed URL
        return FetchedPage(url_id, None, None, f"invalid URL: {e}", cacheable=False)
