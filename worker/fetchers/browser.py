"""The ``browser`` fetcher: pages rendered by one headless Chromium per worker process
(Playwright, driving the browser at ``Settings.browser_path``; nothing is downloaded), in
``concurrency`` reusable tabs (``worker/fetchers/tabs.py``: a browser context and its one page
each, kept across visits, cookies cleared before each). The rendered HTML is the body the job's
extractors and outputs get, as from ``http``.

Recovery (CC-7): the browser is launched again, one relaunch at a time (``Tabs.relaunch``: a
generation number makes triggers that arrive together coalesce), on a navigation timeout
(``browserRelaunchOnTimeout``), a lost browser (disconnected, killed), a crashed page, or
``browserMaxErrors`` no-answer errors in a row. The visit that saw it fails with its reason and
the retry policy tries it again; pages of the old browser finish before it is closed. A tab
lent to a task (``lease``) is closed when given back, or when held past ``browserPageLease``
(its slot reused then). Every wait of a visit comes out of its one deadline, within the fetch
budget (so within its host slot's lease); a navigation to another host takes a slot on that
host through the gate, as an HTTP redirect hop does.

The SSRF guard (issue 17): every connection of the browser (sub-resources, scripts' requests,
redirects, each resolved anew) goes through ``Tabs.relay`` (``socks_guard``). A navigation the
relay refused is blocked with the guard's reason (its own address: the reason; a redirect's:
``<reason> (redirect to <url>)``), as the http fetcher does; another failure keeps the name
Chromium gives it without a proxy. ``browserArgs`` that would bypass the relay are refused at
start. See docs/browser.md."""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urldefrag, urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

from shared.config import Settings
from shared.errors import ConfigError
from shared.mime import is_html, normalize_mime
from shared.model import FetchedPage, RawResponse
from shared.robots import BLOCKED_PREFIX
from shared.urls import DEFAULT_PORTS, host_key
from worker.fetchers import FETCHERS, FetchRequest, HopGate, refused_hop
from worker.fetchers.decode import BodyTooLarge
from worker.fetchers.http import fetch_budget, retry_after_of
from worker.fetchers.tabs import BrowserUnavailable, Tab, Tabs, Visit, first_line

if TYPE_CHECKING:
    from playwright.async_api import Page, Request

log = logging.getLogger(__name__)

# A render Playwright has not given up by the visit's deadline (a hung browser) is given up this
# much later: well within the 5 s by which a host slot's lease outlives the fetch budget.
GRACE = 2.0
TAB_WAIT = 5.0         # a tab not made in that long (or more) counts against the browser
_RAW_DROPPED = frozenset({"content-encoding", "content-length", "transfer-encoding"})
# How Chromium reports a connection the relay (``socks_guard``) did not make.
RELAY_FAILED = ("net::ERR_SOCKS_CONNECTION_FAILED", "net::ERR_PROXY_CONNECTION_FAILED")
# Switches that would route around the relay (or resolve names in the browser).
UNGUARDED_ARGS = frozenset({"--proxy-server", "--no-proxy-server", "--proxy-pac-url",
                            "--proxy-auto-detect", "--proxy-bypass-list",
                            "--host-resolver-rules", "--enable-quic"})


@dataclass(frozen=True, slots=True)
class Load:
    """How a job's pages are loaded (its ``browser`` spec, with the settings' defaults)."""
    wait: str = "load"
    selector: str | None = None
    wait_ms: int = 0
    timeout: float | None = None
    block: frozenset[str] = frozenset()
    stealth: bool = False


def load_options(options: Any, settings: Settings) -> Load:
    """A ``Load`` from a job's ``browser`` options: a mapping by alias (as stored with the job:
    ``waitMs``) or by field name (``wait_ms``), or a ``BrowserSpec``."""
    if hasattr(options, "model_dump"):
        options = options.model_dump(by_alias=True)

    def get(*names: str) -> Any:
        for name in names:
            if name in options and options[name] is not None:
                return options[name]
        return None

    block = get("block")
    timeout = get("timeout")
    return Load(wait=str(get("wait") or "load"), selector=get("selector") or None,
                wait_ms=int(get("waitMs", "wait_ms") or 0),
                timeout=float(timeout) if timeout else None,
                block=frozenset(settings.browser_block if block is None else block),
                stealth=bool(get("stealth")))


@FETCHERS.register("browser")
class BrowserFetcher:
    """One Chromium and its tabs (``concurrency`` at most in use at once: ``Tabs``)."""
    kind = "browser"

    def __init__(self, settings: Settings, concurrency: int | None = None) -> None:
        self.settings = settings
        self.concurrency = max(1, concurrency or 1)
        self.tabs = Tabs(settings, self.concurrency, self._visit_timeout(None))

    @property
    def relaunches(self) -> int:
        """How many times the browser was launched again."""
        return self.tabs.relaunches

    async def __aenter__(self) -> Self:
        path = self.settings.browser_path
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise ConfigError("browserPath", f"{path} is not an executable: install Chromium "
                                             "(make browser)")
        for arg in self.settings.browser_args:
            if arg.split("=", 1)[0] in UNGUARDED_ARGS:
                raise ConfigError("browserArgs", f"{arg.split('=', 1)[0]} would take the "
                                                 "browser past the SSRF guard's relay")
        await self.tabs.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.tabs.close()

    def lease(self, timeout: float | None = None, *,
              holder: str | None = None) -> AbstractAsyncContextManager[Page]:
        """Lend a tab's Playwright ``Page`` to a task (``Tabs.lease``)."""
        return self.tabs.lease(timeout, holder=holder)

    # -- fetching --------------------------------------------------------------------------

    def _visit_timeout(self, load: Load | None) -> float:
        t = (load.timeout if load is not None else None) or self.settings.browser_timeout
        return min(t, fetch_budget(self.settings))

    async def fetch(self, req: FetchRequest, hops: HopGate | None) -> FetchedPage:
        load = load_options(req.options or {}, self.settings)
        limit = self._visit_timeout(load)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        try:
            await asyncio.wait_for(self.tabs.slots.acquire(), limit)
        except TimeoutError:
            return _failed(req, f"timeout after {limit:g}s waiting for a browser tab")
        extra = dict(self.settings.headers_for(host_key(req.url)))
        extra.update(req.headers)
        visit = Visit(host_key(req.url), hops, deadline, extra)
        try:
            page = await self._fetch(req, visit, load, limit)
        except asyncio.CancelledError:  # shutting down: nothing said of the hosts
            visit.done = True
            for slot in visit.slots.values():
                if hops is not None:
                    hops.give_back(slot)
            raise
        finally:
            self.tabs.slots.release()
        visit.done = True
        if hops is not None and visit.slots:
            _release(hops, visit.slots, req, page)
        return page

    async def _fetch(self, req: FetchRequest, visit: Visit, load: Load,
                     limit: float) -> FetchedPage:
        """The visit, every wait of it (the tab, its making, the navigation, the selector,
        ``waitMs``, the gate) within its deadline: the caller's host slot outlives it."""
        gen = self.tabs.gen
        deadline = visit.deadline
        left = deadline - asyncio.get_running_loop().time()
        try:
            # Bounded: a page asked of a browser being killed may never be answered.
            async with asyncio.timeout_at(deadline):
                tab = await self.tabs.take(load.stealth)
        except BrowserUnavailable as e:
            return _failed(req, str(e))
        except self.tabs.error as e:  # the browser went away while a tab was made
            relaunched = await self.tabs.relaunch("closed", gen)
            return _failed(req, f"browser error: {first_line(e)}"
                                + (" (browser relaunched)" if relaunched else ""))
        except TimeoutError:  # slow, or gone without a word: counted as an error in a row
            if left < TAB_WAIT:  # the visit's time ran out waiting for a tab: not the browser
                return _failed(req, f"timeout after {limit:g}s waiting for a browser tab")
            browser = self.tabs.browser
            if browser is None or not browser.is_connected():
                relaunched = await self.tabs.relaunch("closed", gen)
                return _failed(req, "browser error: no tab made in time"
                                    + (" (browser relaunched)" if relaunched else ""))
            return await self._no_answer(req, gen, "browser error: no tab made in time")
        tab.visit, tab.block = visit, load.block
        timed_out = False
        try:
            async with asyncio.timeout_at(deadline + GRACE):
                page = await self._render(tab, req, load, deadline)
            if page.status is not None:
                self.tabs.errors = 0
            return page
        except (TimeoutError, self.tabs.timeout):
            timed_out = True
        except self.tabs.error as e:
            return await self._error_page(req, tab, visit, e)
        finally:
            tab.visit = None
            if timed_out:  # its navigation may still be loading: closed now, never reused
                tab.dead = True
            self.tabs.give(tab)
        relaunched = (self.settings.browser_relaunch_on_timeout
                      and await self.tabs.relaunch("timeout", tab.gen))
        return _failed(req, f"timeout after {limit:g}s"
                            + (" (browser relaunched)" if relaunched else ""))

    async def _error_page(self, req: FetchRequest, tab: Tab, visit: Visit,
                          e: Exception) -> FetchedPage:
        why = first_line(e)
        if visit.refused is not None:
            _spent(tab, why)
            url, refusal = visit.refused
            return _refused(req, url, refusal, None)
        failed = next((name for name in RELAY_FAILED if name in why), None)
        if failed is not None:  # the relay made no connection: why, as it recorded it
            url, chain = _navigated(req, visit)
            parts = urlsplit(url)
            reason = self.tabs.relay.failure(parts.hostname or "",
                                             parts.port or DEFAULT_PORTS.get(parts.scheme, 80))
            if reason is not None and reason.startswith(BLOCKED_PREFIX):
                _spent(tab, why)
                if url == req.url:  # the page's own address (a name rebound since admission)
                    return _failed(req, reason, permanent=True)
                return _refused(req, url, reason, None, chain)
            if reason is not None:  # as Chromium says it without a proxy
                why = why.replace(failed, reason)
        if "Download is starting" in why:
            return _failed(req, "a download, not a page", permanent=True)
        browser = self.tabs.browser
        if tab.dead or browser is None or not browser.is_connected() or tab.gen != self.tabs.gen \
                or "closed" in why.lower() or "crashed" in why.lower():
            reason = "crash" if tab.dead or "crashed" in why.lower() else "closed"
            tab.dead = True
            relaunched = await self.tabs.relaunch(reason, tab.gen)
            return _failed(req, f"browser error: {why}"
                                + (" (browser relaunched)" if relaunched else ""))
        _spent(tab, why)
        if "net::ERR_INVALID_URL" in why or "Cannot navigate to invalid URL" in why:
            return _failed(req, f"invalid URL: {why}", permanent=True)
        return await self._no_answer(req, tab.gen, why)

    async def _no_answer(self, req: FetchRequest, gen: int, why: str) -> FetchedPage:
        """A failure without an answer: ``browserMaxErrors`` in a row relaunch the browser."""
        self.tabs.errors += 1
        if self.tabs.errors >= self.settings.browser_max_errors:
            self.tabs.errors = 0
            if await self.tabs.relaunch("errors", gen):
                why += " (browser relaunched)"
        return _failed(req, why)

    async def _render(self, tab: Tab, req: FetchRequest, load: Load,
                      deadline: float) -> FetchedPage:
        page, visit = tab.page, tab.visit
        assert page is not None and visit is not None
        loop = asyncio.get_running_loop()
        await tab.context.clear_cookies()  # visits are stateless
        left = deadline - loop.time()
        if left <= 0:  # (Playwright's timeout 0 is none at all)
            raise TimeoutError
        resp = await page.goto(req.url, wait_until=load.wait,  # type: ignore[arg-type]
                               timeout=left * 1000)
        if load.selector:
            left = deadline - loop.time()
            if left > 0:
                try:
                    await page.wait_for_selector(load.selector, state="attached",
                                                 timeout=left * 1000)
                except self.tabs.timeout:  # not there in time: the page as it is
                    pass
                except self.tabs.error as e:  # the job's fault, not the browser's: no retry
                    if not _bad_selector(e):
                        raise
                    return _failed(req, f"invalid browser.selector: {first_line(e)}",
                                   permanent=True)
        if load.wait_ms:
            left = deadline - loop.time()
            if left > 0:
                await page.wait_for_timeout(min(load.wait_ms, left * 1000))
        if resp is None:
            return _failed(req, "no response to the navigation")
        hops: list[Request] = []  # the HTTP redirect chain, first request first
        hop = resp.request.redirected_from
        while hop is not None:
            hops.append(hop)
            hop = hop.redirected_from
        hops.reverse()
        chain = tuple(h.url for h in hops)
        # Where the page ended: a script may have navigated on (its fragment is no new page).
        final = urldefrag(page.url if page.url.startswith(("http://", "https://"))
                          else resp.url).url
        if visit.refused is None and visit.hops is not None:  # HTTP redirects are not routed
            for url in dict.fromkeys([*chain[1:], resp.url, final]):
                if host_key(url) != visit.host and url not in visit.checked:
                    admitted = await visit.hops.admit_hop(url, False, deadline)
                    if isinstance(admitted, str):
                        visit.refused = (url, admitted)
                        break
                    visit.checked.add(url)
        if visit.refused is not None:
            url, refusal = visit.refused
            # An HTTP redirect led there: its status, as the http fetcher keeps it.
            led = [h for h, nxt in zip(hops, [*chain[1:], resp.url]) if nxt == url]
            answer = await led[0].response() if led else None
            return _refused(req, url, refusal, answer.status if answer else None, chain)
        status = resp.status
        headers = resp.headers
        mime = normalize_mime(headers.get("content-type"))
        wanted = req.wants_body(status, mime)
        body: bytes | None = None
        if wanted or req.keep_raw:
            if mime is not None and is_html(mime):
                body = (await page.content()).encode()
            else:
                body = await resp.body()
            if len(body) > self.settings.max_body_bytes:
                return _failed(req, str(BodyTooLarge(self.settings.max_body_bytes, len(body))),
                               permanent=True)
        raw = None
        if req.keep_raw:
            raw = await _raw(resp, body or b"")
        error = f"HTTP {status} {resp.status_text}".strip() if status >= 400 else None
        retry_after = retry_after_of(status, headers.get("retry-after"))
        return FetchedPage(req.url_id, status, mime, error, cacheable=True,
                           final_url=final if final != req.url else None,
                           redirects=tuple(chain), retry_after=retry_after,
                           body=body if wanted else None,
                           charset="utf-8" if wanted and body is not None and mime is not None
                           and is_html(mime) else None,
                           headers=CIMultiDictProxy(CIMultiDict(headers)), raw=raw,
                           fetcher="browser")


async def _raw(resp: Any, body: bytes) -> RawResponse:
    """The answer for a WARC record: its status line and headers (without those about the
    wire encoding, with the rendered length), the rendered body, the request's headers."""
    line = f"HTTP/1.1 {resp.status} {resp.status_text}".rstrip()
    headers = tuple((h["name"].encode("latin-1", "replace"), h["value"].encode("latin-1", "replace"))
                    for h in await resp.headers_array()
                    if h["name"].lower() not in _RAW_DROPPED)
    headers += ((b"Content-Length", str(len(body)).encode()),)
    sent = tuple((await resp.request.all_headers()).items())
    return RawResponse(line.encode("latin-1", "replace"), headers, body, sent)


def _release(hops: HopGate, slots: dict[str, Any], req: FetchRequest,
             page: FetchedPage) -> None:
    """Give back the slots a visit's navigations took on other hosts: the one the page ended
    on, backed off as the job's retry rule says of its answer (as the http fetcher's last hop);
    the others said nothing of their hosts (as a redirect)."""
    ended = host_key(page.final_url) if page.final_url else None
    for host, slot in slots.items():
        if host == ended:
            hops.release(slot, req.policy.trouble(page), req.policy.pause(page))
        else:
            hops.release(slot, False, None)


def _spent(tab: Tab, why: str) -> None:
    """After a navigation's network error Chromium commits its error page late, which would
    interrupt the tab's next navigation ("interrupted by another navigation to
    chrome-error://chromewebdata/"): such a tab is closed when given back, not reused.
    ``ERR_ABORTED`` commits no error page (and a crashed page's tab waits for its event)."""
    if "net::ERR_" in why and "net::ERR_ABORTED" not in why:
        tab.dead = True


def _navigated(req: FetchRequest, visit: Visit) -> tuple[str, tuple[str, ...]]:
    """Where the visit's last main-frame navigation went (its HTTP redirects, which are not
    routed, followed) and the redirect chain that led there."""
    nav = visit.navigation
    if nav is None:
        return req.url, ()
    chain: list[str] = []
    while nav.redirected_to is not None:
        chain.append(nav.url)
        nav = nav.redirected_to
    return nav.url, tuple(chain)


def _bad_selector(e: Exception) -> bool:
    """Whether Playwright refused a selector it cannot parse ("Unexpected token ... while
    parsing css selector", "Unknown engine ... while parsing selector")."""
    why = str(e)
    return "while parsing" in why and "selector" in why


def _failed(req: FetchRequest, error: str, permanent: bool = False) -> FetchedPage:
    return FetchedPage(req.url_id, None, None, error, cacheable=False, permanent=permanent,
                       fetcher="browser")


def _refused(req: FetchRequest, url: str, why: str, status: int | None,
             chain: tuple[str, ...] = ()) -> FetchedPage:
    """A navigation to ``url`` the gate refused (``refused_hop``, as the http fetcher's
    redirect hops)."""
    return refused_hop(req.url_id, url, why, status, chain, fetcher="browser")


__all__ = ["BrowserFetcher", "BrowserUnavailable", "Load", "load_options"]
