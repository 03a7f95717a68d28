"""The ``browser`` fetcher: pages rendered by one headless Chromium per worker process
(Playwright, driving the browser at ``Settings.browser_path``; nothing is downloaded), in
``concurrency`` reusable tabs. A tab is a browser context and its one page, kept across visits
(cookies cleared before each) and made anew after ``RECYCLE`` visits or when a job's stealth
differs. The rendered HTML is the body the job's extractors and outputs get, as from ``http``.

Recovery (CC-7): the browser is launched again, one relaunch at a time (a generation number
makes triggers that arrive together coalesce), on a navigation timeout
(``browserRelaunchOnTimeout``), a lost browser (disconnected, killed), a crashed page, or
``browserMaxErrors`` no-answer errors in a row. The visit that saw it fails with its reason and
the retry policy tries it again; pages of the old browser finish before it is closed. A tab
lent to a task (``lease``) and held past ``browserPageLease`` is closed and its slot reused.
See docs/browser.md."""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from multidict import CIMultiDict, CIMultiDictProxy

from shared import metrics
from shared.config import Settings
from shared.errors import ConfigError
from shared.mime import is_html, normalize_mime
from shared.model import FetchedPage, RawResponse
from shared.robots import REFUSALS
from shared.urls import host_key
from worker.fetchers import FETCHERS, FetchRequest, HopGate
from worker.fetchers import stealth as stealthy
from worker.fetchers.decode import BodyTooLarge
from worker.fetchers.http import _retry_after, fetch_budget

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page, Playwright, Request, Route

log = logging.getLogger(__name__)

RECYCLE = 500          # visits after which a tab's context is made anew
GRACE = 5.0            # past a visit's timeout, a render still under way is given up
RETRY_BROKEN = 10.0    # seconds between launch attempts once relaunching has failed
_RAW_DROPPED = frozenset({"content-encoding", "content-length", "transfer-encoding"})


class BrowserUnavailable(Exception):
    """No browser to fetch with (its relaunch failed)."""


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


@dataclass(eq=False)
class _Visit:
    """The visit a tab is making, for its route handler."""
    host: str
    hops: HopGate | None
    deadline: float
    headers: Mapping[str, str]
    refused: tuple[str, str] | None = None  # (url, why) of a navigation the gate refused
    checked: set[str] = field(default_factory=set)  # URLs of other hosts the gate allowed


@dataclass(eq=False)
class _Tab:
    gen: int                   # the browser generation it belongs to
    context: BrowserContext
    stealth: bool
    page: Page | None = None
    visits: int = 0
    block: frozenset[str] = frozenset()
    visit: _Visit | None = None
    dead: bool = False         # crashed or reclaimed: closed, never used again
    leased_until: float | None = None
    holder: str = ""
    reclaimed: bool = False


@FETCHERS.register("browser")
class BrowserFetcher:
    """One Chromium and its tabs (``concurrency`` at most in use at once)."""
    kind = "browser"

    def __init__(self, settings: Settings, concurrency: int | None = None) -> None:
        self.settings = settings
        self.concurrency = max(1, concurrency or 1)
        self.relaunches = 0  # how many times the browser was launched again
        self._pw: Playwright | None = None
        self._browser: Browser | None = None
        self._gen = 0
        self._lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._idle: list[_Tab] = []
        self._busy: Counter[int] = Counter()       # tabs in use, by generation
        self._drained: dict[int, asyncio.Event] = {}
        self._leased: set[_Tab] = set()
        self._errors = 0                           # no-answer errors in a row
        self._closing = False
        self._broken: tuple[str, float] | None = None  # why no browser, since when
        self._jobs: set[asyncio.Task[Any]] = set()
        self._loads: dict[int, tuple[Any, Load]] = {}
        self._error: type[Exception] = Exception   # playwright's, once imported
        self._timeout: type[Exception] = TimeoutError
        self._watch: asyncio.Task[None] | None = None

    # -- life cycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        path = self.settings.browser_path
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise ConfigError("browserPath", f"{path} is not an executable: install Chromium "
                                             "(make browser)")
        from playwright.async_api import Error, TimeoutError, async_playwright
        self._error, self._timeout = Error, TimeoutError
        self._pw = await async_playwright().start()
        try:
            self._browser = await self._launch(0)
        except BaseException:
            await self._pw.stop()
            raise
        self._watch = asyncio.create_task(self._watchdog(), name="browser-page-leases")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True
        if self._watch is not None:
            self._watch.cancel()
        for job in list(self._jobs):
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        if self._browser is not None:
            with suppress(Exception):
                await asyncio.wait_for(self._browser.close(), 10)
        self._browser = None
        if self._pw is not None:
            with suppress(Exception):
                await asyncio.wait_for(self._pw.stop(), 10)
        self._pw = None

    async def _launch(self, gen: int) -> Browser:
        assert self._pw is not None
        browser = await self._pw.chromium.launch(
            executable_path=self.settings.browser_path, args=list(self.settings.browser_args),
            headless=True)
        browser.on("disconnected", lambda _: self._lost(gen))
        return browser

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        job = asyncio.create_task(coro)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    def _lost(self, gen: int) -> None:
        """The browser of generation ``gen`` went away (closed, killed, crashed)."""
        if not self._closing and gen == self._gen:
            log.warning("browser disconnected (generation %d)", gen)
            self._spawn(self.relaunch("disconnected", gen))

    async def relaunch(self, reason: str, seen: int) -> bool:
        """Launch a new browser in place of generation ``seen``'s; a no-op (False) if that one
        was replaced already, so that triggers arriving together make one relaunch. The old
        browser closes once its pages in use are given back (or after a visit's timeout). A
        launch that fails restarts Playwright and tries once more; if that fails too, fetches
        fail at once ("browser unavailable") and a launch is tried again at most every
        ``RETRY_BROKEN`` seconds."""
        async with self._lock:
            if seen < self._gen or self._closing:
                return False
            old, gen = self._browser, self._gen + 1
            try:
                new = await self._launch(gen)
            except Exception as e:  # noqa: BLE001 - any launch failure: Playwright restarted
                log.error("browser launch failed (%s); restarting Playwright", _first_line(e))
                try:
                    await self._restart_playwright()
                    new = await self._launch(gen)
                except Exception as e2:  # noqa: BLE001 - reported by every fetch meanwhile
                    why = f"browser unavailable: {_first_line(e2)}"
                    log.error("%s", why)
                    self._broken = (why, asyncio.get_running_loop().time())
                    self._browser, self._gen = None, gen
                    self._retire(old, gen - 1)
                    return False
            self._browser, self._gen, self._broken, self._errors = new, gen, None, 0
            self.relaunches += 1
            metrics.BROWSER_RELAUNCHES.labels(reason).inc()
            log.warning("browser relaunched (%s): generation %d", reason, gen)
            self._retire(old, gen - 1)
            return True

    async def _restart_playwright(self) -> None:
        from playwright.async_api import async_playwright
        if self._pw is not None:
            with suppress(Exception):
                await asyncio.wait_for(self._pw.stop(), 5)
        self._pw = await async_playwright().start()

    def _retire(self, browser: Browser | None, gen: int) -> None:
        self._idle = [t for t in self._idle if t.gen > gen]
        if browser is not None:
            self._spawn(self._close_when_drained(browser, gen))

    async def _close_when_drained(self, browser: Browser, gen: int) -> None:
        if self._busy[gen] > 0:
            drained = self._drained.setdefault(gen, asyncio.Event())
            with suppress(TimeoutError):
                await asyncio.wait_for(drained.wait(), self._visit_timeout(None))
        self._drained.pop(gen, None)
        self._busy.pop(gen, None)
        with suppress(Exception):
            await asyncio.wait_for(browser.close(), 10)

    # -- tabs ------------------------------------------------------------------------------

    async def _ensure(self) -> Browser:
        """The browser, relaunched first if it is gone."""
        browser = self._browser
        if browser is not None and browser.is_connected():
            return browser
        if browser is None and self._broken is not None:
            why, since = self._broken
            if asyncio.get_running_loop().time() - since < RETRY_BROKEN:
                raise BrowserUnavailable(why)
        await self.relaunch("disconnected" if browser is not None else "unavailable",
                            self._gen)
        if self._browser is None:
            raise BrowserUnavailable(self._broken[0] if self._broken else "browser unavailable")
        return self._browser

    async def _take(self, stealth: bool) -> _Tab:
        """A tab for one use (the caller holds a slot): an idle one of this browser and this
        stealth, else a new one (closing an idle one of the other stealth to keep the count)."""
        browser = await self._ensure()
        for i in range(len(self._idle) - 1, -1, -1):
            tab = self._idle[i]
            if tab.gen == self._gen and tab.stealth == stealth and not tab.dead:
                del self._idle[i]
                break
        else:
            if self._idle:
                self._spawn(self._close_tab(self._idle.pop(0)))
            tab = await self._new_tab(browser, self._gen, stealth)
        self._busy[tab.gen] += 1
        return tab

    async def _new_tab(self, browser: Browser, gen: int, stealth: bool) -> _Tab:
        if stealth:
            context = await browser.new_context(
                user_agent=stealthy.pick_user_agent(self.settings.user_agents, browser.version),
                locale=stealthy.LOCALE,
                extra_http_headers={"Accept-Language": stealthy.ACCEPT_LANGUAGE},
                service_workers="block", accept_downloads=False)
        else:
            context = await browser.new_context(user_agent=self.settings.user_agent,
                                                service_workers="block", accept_downloads=False)
        tab = _Tab(gen, context, stealth)

        async def route(r: Route) -> None:
            await self._route(tab, r)

        try:
            if stealth:
                await context.add_init_script(stealthy.INIT_SCRIPT)
            await context.route("**/*", route)
            page = await context.new_page()
        except BaseException:  # a browser gone meanwhile, or the wait given up
            self._spawn(self._close_tab(tab))
            raise
        page.on("crash", lambda _: self._crashed(tab))
        tab.page = page
        return tab

    def _crashed(self, tab: _Tab) -> None:
        tab.dead = True
        if not self._closing:
            log.warning("browser page crashed (generation %d)", tab.gen)
            self._spawn(self.relaunch("crash", tab.gen))

    def _give(self, tab: _Tab) -> None:
        """A tab back after its use: idle again, or closed (dead, old, worn or closing)."""
        self._busy[tab.gen] -= 1
        if self._busy[tab.gen] <= 0 and tab.gen in self._drained:
            self._drained[tab.gen].set()
        tab.visits += 1
        if tab.dead or tab.gen != self._gen or tab.visits >= RECYCLE or self._closing:
            self._spawn(self._close_tab(tab))
        else:
            self._idle.append(tab)

    async def _close_tab(self, tab: _Tab) -> None:
        tab.dead = True
        with suppress(Exception):
            await asyncio.wait_for(tab.context.close(), 10)

    async def _route(self, tab: _Tab, route: Route) -> None:
        """Every request of a tab: a blocked resource type is aborted; a main-frame navigation
        to another host than the visit's (a link, a script's ``location``) must be allowed by
        robots.txt (``HopGate.admit_hop``, no slot); the source's extra headers go to the
        visit's own host only."""
        try:
            request = route.request
            if request.resource_type in tab.block:
                await route.abort("blockedbyclient")
                return
            visit = tab.visit
            if visit is None:
                await route.continue_()
                return
            host = host_key(request.url)
            if (host != visit.host and visit.hops is not None
                    and request.resource_type == "document" and request.is_navigation_request()
                    and request.frame.parent_frame is None):
                admitted = await visit.hops.admit_hop(request.url, False, visit.deadline)
                if isinstance(admitted, str):
                    visit.refused = (request.url, admitted)
                    await route.abort("blockedbyclient")
                    return
                visit.checked.add(request.url)
            if visit.headers and host == visit.host:
                await route.continue_(headers={**await request.all_headers(), **visit.headers})
                return
            await route.continue_()
        except self._error:
            pass  # the page or the browser went away meanwhile
        except Exception as e:  # noqa: BLE001 - never leave a request hanging
            log.warning("browser route handler failed: %s", e)
            with suppress(Exception):
                await route.continue_()

    async def _watchdog(self) -> None:
        """Reclaim tabs lent (``lease``) for longer than their lease: closed, slot freed."""
        tick = min(1.0, self.settings.browser_page_lease / 2)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for tab in list(self._leased):
                if tab.leased_until is not None and now > tab.leased_until:
                    self._leased.discard(tab)
                    tab.reclaimed = True
                    log.warning("page leaked by task %s; reclaimed", tab.holder)
                    metrics.BROWSER_PAGES_RECLAIMED.inc()
                    tab.dead = True
                    self._give(tab)
                    self._slots.release()

    @asynccontextmanager
    async def lease(self, timeout: float | None = None, *,
                    holder: str | None = None) -> AsyncIterator[Page]:
        """Lend a tab's Playwright ``Page`` to a task for the block; it takes one of the
        fetcher's slots. Held longer than ``timeout`` (default ``browserPageLease``) it is
        closed and its slot reused (the holder's next call on it fails). Cookies are cleared
        first; the settings' blocked resource types apply."""
        await self._slots.acquire()
        tab: _Tab | None = None
        try:
            async with asyncio.timeout(self.settings.browser_timeout):
                tab = await self._take(False)
            tab.block = frozenset(self.settings.browser_block)
            assert tab.page is not None
            await tab.context.clear_cookies()
            current = asyncio.current_task()
            tab.holder = holder or (current.get_name() if current else "?")
            tab.leased_until = (asyncio.get_running_loop().time()
                                + (timeout or self.settings.browser_page_lease))
            self._leased.add(tab)
            yield tab.page
        finally:
            if tab is None:
                self._slots.release()
            elif not tab.reclaimed:
                self._leased.discard(tab)
                tab.leased_until = None
                self._give(tab)
                self._slots.release()

    # -- fetching --------------------------------------------------------------------------

    def _load(self, options: Any) -> Load:
        """The job's options, parsed once per options object (a job's plan keeps it)."""
        if not options:
            options = {}
        known = self._loads.get(id(options))
        if known is not None and known[0] is options:
            return known[1]
        load = load_options(options, self.settings)
        if len(self._loads) >= 256:
            self._loads.clear()
        self._loads[id(options)] = (options, load)  # holds the object: its id stays its own
        return load

    def _visit_timeout(self, load: Load | None) -> float:
        t = (load.timeout if load is not None else None) or self.settings.browser_timeout
        return min(t, fetch_budget(self.settings))

    async def fetch(self, req: FetchRequest, hops: HopGate | None) -> FetchedPage:
        load = self._load(req.options)
        limit = self._visit_timeout(load)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        try:
            await asyncio.wait_for(self._slots.acquire(), limit)
        except TimeoutError:
            return _failed(req, f"timeout after {limit:g}s waiting for a browser tab")
        try:
            return await self._fetch(req, hops, load, limit, deadline)
        finally:
            self._slots.release()

    async def _fetch(self, req: FetchRequest, hops: HopGate | None, load: Load, limit: float,
                     deadline: float) -> FetchedPage:
        gen = self._gen
        try:
            # Bounded: a page asked of a browser being killed may never be answered.
            async with asyncio.timeout(max(deadline - asyncio.get_running_loop().time(), 1.0)):
                tab = await self._take(load.stealth)
        except BrowserUnavailable as e:
            return _failed(req, str(e))
        except (self._error, TimeoutError) as e:  # the browser went away while a tab was made
            why = _first_line(e) if isinstance(e, self._error) else "no tab made in time"
            relaunched = await self.relaunch("closed", gen)
            return _failed(req, f"browser error: {why}"
                                + (" (browser relaunched)" if relaunched else ""))
        extra = dict(self.settings.headers_for(host_key(req.url)))
        extra.update(req.headers)
        visit = _Visit(host_key(req.url), hops, deadline, extra)
        tab.visit, tab.block = visit, load.block
        try:
            async with asyncio.timeout(limit + GRACE):
                page = await self._render(tab, req, load, limit, deadline)
            if page.status is not None:
                self._errors = 0
            return page
        except (TimeoutError, self._timeout):
            relaunched = (self.settings.browser_relaunch_on_timeout
                          and await self.relaunch("timeout", tab.gen))
            return _failed(req, f"timeout after {limit:g}s"
                                + (" (browser relaunched)" if relaunched else ""))
        except self._error as e:
            return await self._error_page(req, tab, visit, e)
        finally:
            tab.visit = None
            self._give(tab)

    async def _error_page(self, req: FetchRequest, tab: _Tab, visit: _Visit,
                          e: Exception) -> FetchedPage:
        why = _first_line(e)
        if visit.refused is not None:
            url, refusal = visit.refused
            return _refused(req, url, refusal, None)
        if "Download is starting" in why:
            return _failed(req, "a download, not a page", permanent=True)
        browser = self._browser
        if tab.dead or browser is None or not browser.is_connected() or tab.gen != self._gen \
                or "closed" in why.lower() or "crash" in why.lower():
            tab.dead = True
            reason = "crash" if "crash" in why.lower() else "closed"
            relaunched = await self.relaunch(reason, tab.gen)
            return _failed(req, f"browser error: {why}"
                                + (" (browser relaunched)" if relaunched else ""))
        if "net::ERR_INVALID_URL" in why or "Cannot navigate to invalid URL" in why:
            return _failed(req, f"invalid URL: {why}", permanent=True)
        self._errors += 1
        if self._errors >= self.settings.browser_max_errors:
            self._errors = 0
            if await self.relaunch("errors", tab.gen):
                why += " (browser relaunched)"
        return _failed(req, why)

    async def _render(self, tab: _Tab, req: FetchRequest, load: Load, limit: float,
                      deadline: float) -> FetchedPage:
        page, visit = tab.page, tab.visit
        assert page is not None and visit is not None
        loop = asyncio.get_running_loop()
        await tab.context.clear_cookies()  # visits are stateless
        resp = await page.goto(req.url, wait_until=load.wait,  # type: ignore[arg-type]
                               timeout=limit * 1000)
        if load.selector:
            left = deadline - loop.time()
            if left > 0:
                try:
                    await page.wait_for_selector(load.selector, state="attached",
                                                 timeout=left * 1000)
                except self._timeout:  # not there in time: the page as it is
                    pass
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
        final = page.url if page.url.startswith(("http://", "https://")) else resp.url
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
        retry_after = _retry_after(headers.get("retry-after")) if status in (429, 503) else None
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


def _failed(req: FetchRequest, error: str, permanent: bool = False) -> FetchedPage:
    return FetchedPage(req.url_id, None, None, error, cacheable=False, permanent=permanent,
                       fetcher="browser")


def _refused(req: FetchRequest, url: str, why: str, status: int | None,
             chain: tuple[str, ...] = ()) -> FetchedPage:
    """A navigation to ``url`` the gate refused: final (robots.txt) keeps the redirect's
    status, if any, and is not tried again; the others are."""
    final = why in REFUSALS
    return FetchedPage(req.url_id, status if final else None, None, f"redirect to {url}: {why}",
                       cacheable=final, final_url=url, redirects=chain, permanent=final,
                       fetcher="browser")


def _first_line(e: BaseException) -> str:
    text = (getattr(e, "message", None) or str(e) or type(e).__name__).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    for prefix in ("Page.goto: ", "Page.content: ", "BrowserContext.new_page: ",
                   "Browser.new_context: "):
        line = line.removeprefix(prefix)
    return line


__all__ = ["BrowserFetcher", "BrowserUnavailable", "Load", "load_options"]
