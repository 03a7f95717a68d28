"""A worker's browser and its tabs (``Tabs``): one Chromium launched through Playwright, its
tabs (a browser context and its one page each) lent one use at a time, within ``concurrency``
slots, and the recovery of the browser (CC-7): one relaunch at a time, by generation, on what
the fetcher or Playwright reports; tabs lent to tasks and held past their lease reclaimed.
Every connection the browser makes goes through the SSRF guard's SOCKS relay
(``worker/fetchers/socks_guard.py``, started before the browser and kept across relaunches).
The fetcher that uses them: ``worker/fetchers/browser.py``; docs/browser.md."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared import metrics
from shared.config import Settings
from shared.netguard import NetGuard
from shared.urls import host_key
from worker.fetchers import HopGate
from worker.fetchers import stealth as stealthy
from worker.fetchers.socks_guard import SocksGuard

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page, Playwright, Request, Route

log = logging.getLogger(__name__)

RECYCLE = 500          # visits after which a tab's context is made anew
RETRY_BROKEN = 10.0    # seconds between launch attempts once relaunching has failed
# Every connection through the SSRF guard's relay (loopback too, which Chromium would bypass),
# no QUIC (UDP, past a SOCKS proxy) and no WebRTC UDP outside the proxy. Last on the command
# line: Chromium takes a switch's last value.
GUARDED_ARGS = ("--proxy-bypass-list=<-loopback>", "--disable-quic",
                "--force-webrtc-ip-handling-policy=disable_non_proxied_udp")


class BrowserUnavailable(Exception):
    """No browser to fetch with (its relaunch failed)."""


@dataclass(eq=False)
class Visit:
    """The visit a tab is making, for its route handler."""
    host: str
    hops: HopGate | None
    deadline: float
    headers: Mapping[str, str]
    refused: tuple[str, str] | None = None  # (url, why) of a navigation the gate refused
    navigation: Request | None = None  # the last main-frame navigation routed (its redirects:
    #                                    ``redirected_to``), for a failure through the relay
    checked: set[str] = field(default_factory=set)  # URLs of other hosts the gate allowed
    slots: dict[str, Any] = field(default_factory=dict)  # other hosts' slots, held to the end
    done: bool = False                                   # ended: its slots went back


@dataclass(eq=False)
class Tab:
    """A browser context and its one page, reused visit after visit."""
    gen: int                   # the browser generation it belongs to
    context: BrowserContext
    stealth: bool
    page: Page | None = None
    visits: int = 0
    block: frozenset[str] = frozenset()
    visit: Visit | None = None
    dead: bool = False         # crashed or reclaimed: closed, never used again
    leased_until: float | None = None
    holder: str = ""
    reclaimed: bool = False


class Tabs:
    """The browser (generation ``gen``, launched anew by ``relaunch``) and its tabs: ``take`` one
    for a visit and ``give`` it back, holding one of ``slots``; ``lease`` lends one to a task."""

    def __init__(self, settings: Settings, concurrency: int, drain_timeout: float) -> None:
        self.settings = settings
        self.drain_timeout = drain_timeout  # how long an old browser's pages may run on
        self.relaunches = 0  # how many times the browser was launched again
        self.gen = 0
        self.errors = 0      # no-answer errors in a row (the fetcher counts them)
        self.slots = asyncio.Semaphore(concurrency)
        self.error: type[Exception] = Exception   # Playwright's, once imported
        self.timeout: type[Exception] = TimeoutError
        self._pw: Playwright | None = None
        self._browser: Browser | None = None
        self._lock = asyncio.Lock()
        self._idle: list[Tab] = []
        self._busy: Counter[int] = Counter()       # tabs in use, by generation
        self._drained: dict[int, asyncio.Event] = {}
        self._leased: set[Tab] = set()
        self._closing = False
        self._broken: tuple[str, float] | None = None  # why no browser, since when
        self._jobs: set[asyncio.Task[Any]] = set()
        self._watch: asyncio.Task[None] | None = None
        # The SSRF guard's SOCKS relay every browser generation connects through.
        guard = NetGuard.from_settings(settings)
        self.relay = SocksGuard(guard, settings.connect_timeout + guard.policy.lookup_timeout)
        self._stack = AsyncExitStack()

    @property
    def browser(self) -> Browser | None:
        return self._browser

    async def start(self) -> None:
        """Start the relay, Playwright, the browser and the lease watchdog."""
        from playwright.async_api import Error, TimeoutError, async_playwright
        self.error, self.timeout = Error, TimeoutError
        await self._stack.enter_async_context(self.relay)  # before the browser, closed after
        try:
            self._pw = await async_playwright().start()
            self._browser = await self._launch(0)
        except BaseException:
            if self._pw is not None:
                await self._pw.stop()
                self._pw = None
            await self._stack.aclose()
            raise
        self._watch = asyncio.create_task(self._watchdog(), name="browser-page-leases")

    async def close(self) -> None:
        """Stop: no relaunch any more, the browser closed, Playwright stopped, the relay
        closed."""
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
        await self._stack.aclose()

    async def _launch(self, gen: int) -> Browser:
        assert self._pw is not None
        browser = await self._pw.chromium.launch(
            executable_path=self.settings.browser_path,
            args=[*self.settings.browser_args, *GUARDED_ARGS],
            proxy={"server": self.relay.server}, headless=True)
        browser.on("disconnected", lambda _: self._lost(gen))
        return browser

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        job = asyncio.create_task(coro)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return job

    def _lost(self, gen: int) -> None:
        """The browser of generation ``gen`` went away (closed, killed, crashed)."""
        if not self._closing and gen == self.gen:
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
            if seen < self.gen or self._closing:
                return False
            old, gen = self._browser, self.gen + 1
            try:
                new = await self._launch(gen)
            except Exception as e:  # noqa: BLE001 - any launch failure: Playwright restarted
                log.error("browser launch failed (%s); restarting Playwright", first_line(e))
                try:
                    await self._restart_playwright()
                    new = await self._launch(gen)
                except Exception as e2:  # noqa: BLE001 - reported by every fetch meanwhile
                    why = f"browser unavailable: {first_line(e2)}"
                    log.error("%s", why)
                    self._broken = (why, asyncio.get_running_loop().time())
                    self._browser, self.gen = None, gen
                    self._retire(old, gen - 1)
                    return False
            self._browser, self.gen, self._broken, self.errors = new, gen, None, 0
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
                await asyncio.wait_for(drained.wait(), self.drain_timeout)
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
        # Shielded: a visit whose time runs out meanwhile does not cut a launch in half.
        await asyncio.shield(self._spawn(self.relaunch(
            "disconnected" if browser is not None else "unavailable", self.gen)))
        if self._browser is None:
            raise BrowserUnavailable(self._broken[0] if self._broken else "browser unavailable")
        return self._browser

    async def take(self, stealth: bool) -> Tab:
        """A tab for one use (the caller holds a slot): an idle one of this browser and this
        stealth, else a new one (closing an idle one of the other stealth to keep the count)."""
        browser = await self._ensure()
        for i in range(len(self._idle) - 1, -1, -1):
            tab = self._idle[i]
            if tab.gen == self.gen and tab.stealth == stealth and not tab.dead:
                del self._idle[i]
                break
        else:
            if self._idle:
                self._spawn(self._close_tab(self._idle.pop(0)))
            tab = await self._new_tab(browser, self.gen, stealth)
        self._busy[tab.gen] += 1
        return tab

    async def _new_tab(self, browser: Browser, gen: int, stealth: bool) -> Tab:
        if stealth:
            context = await browser.new_context(
                user_agent=stealthy.pick_user_agent(self.settings.user_agents, browser.version),
                locale=stealthy.LOCALE,
                extra_http_headers={"Accept-Language": stealthy.ACCEPT_LANGUAGE},
                service_workers="block", accept_downloads=False)
        else:
            context = await browser.new_context(user_agent=self.settings.user_agent,
                                                service_workers="block", accept_downloads=False)
        tab = Tab(gen, context, stealth)

        async def route(r: Route) -> None:
            await self._route(tab, r)

        try:
            if stealth:
                await context.add_init_script(stealthy.INIT_SCRIPT)
            # Always routed (even with nothing to block): a routed context has no HTTP cache, so
            # a page fetched again is answered in full, never with a 304 of Chromium's making.
            await context.route("**/*", route)
            page = await context.new_page()
        except BaseException:  # a browser gone meanwhile, or the wait given up
            self._spawn(self._close_tab(tab))
            raise
        page.on("crash", lambda _: self._crashed(tab))
        context.on("page", lambda p: self._opened(tab, p))
        tab.page = page
        return tab

    def _opened(self, tab: Tab, page: Page) -> None:
        """A window a visited page opened (``window.open``): closed, a tab stays one page. A
        task's leased page keeps what it opens, until the lease ends (the tab is closed)."""
        if page is not tab.page and tab.leased_until is None:
            self._spawn(_close_quietly(page))

    def _crashed(self, tab: Tab) -> None:
        tab.dead = True
        if not self._closing:
            log.warning("browser page crashed (generation %d)", tab.gen)
            self._spawn(self.relaunch("crash", tab.gen))

    def give(self, tab: Tab) -> None:
        """A tab back after its use: idle again, or closed (dead, old, worn or closing)."""
        self._busy[tab.gen] -= 1
        if self._busy[tab.gen] <= 0 and tab.gen in self._drained:
            self._drained[tab.gen].set()
        tab.visits += 1
        if tab.dead or tab.gen != self.gen or tab.visits >= RECYCLE or self._closing:
            self._spawn(self._close_tab(tab))
        else:
            self._idle.append(tab)

    async def _close_tab(self, tab: Tab) -> None:
        tab.dead = True
        with suppress(Exception):
            await asyncio.wait_for(tab.context.close(), 10)

    async def _route(self, tab: Tab, route: Route) -> None:
        """Every request of a tab: a blocked resource type is aborted; a main-frame navigation
        to another host than the visit's (a link, a script's ``location``) must be allowed by
        robots.txt and take a slot on that host (``HopGate.admit_hop``, waited for within the
        visit's deadline, as an HTTP redirect hop's), held until the visit ends (the fetcher
        releases ``Visit.slots``); a later navigation to a host already held goes under its
        slot. The source's extra headers go to the visit's own host only. The visit's
        main-frame navigation is noted (``Visit.navigation``): where it failed, if the relay
        refused the address (redirects and sub-resources are the relay's alone)."""
        try:
            request = route.request
            if request.resource_type in tab.block:
                await route.abort("blockedbyclient")
                return
            visit = tab.visit
            if visit is None:
                await route.continue_()
                return
            if request.resource_type == "document" and tab.page is not None:
                with suppress(self.error):  # a popup's first request: its frame is not known yet
                    if request.frame is tab.page.main_frame:
                        visit.navigation = request
            host = host_key(request.url)
            if (host != visit.host and visit.hops is not None
                    and request.resource_type == "document" and request.is_navigation_request()
                    and request.frame.parent_frame is None):
                admitted = await visit.hops.admit_hop(request.url, host not in visit.slots,
                                                      visit.deadline)
                if isinstance(admitted, str):
                    visit.refused = (request.url, admitted)
                    await route.abort("blockedbyclient")
                    return
                if admitted is not None:
                    if visit.done or host in visit.slots:  # ended meanwhile, or a second one
                        visit.hops.give_back(admitted)
                    else:
                        visit.slots[host] = admitted
                if visit.done:  # its slots went back: nothing more to that host
                    await route.abort("blockedbyclient")
                    return
                visit.checked.add(request.url)
            if visit.headers and host == visit.host:
                await route.continue_(headers={**await request.all_headers(), **visit.headers})
                return
            await route.continue_()
        except self.error:
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
                    self.give(tab)
                    self.slots.release()

    @asynccontextmanager
    async def lease(self, timeout: float | None = None, *,
                    holder: str | None = None) -> AsyncIterator[Page]:
        """Lend a tab's Playwright ``Page`` to a task for the block; it takes one of the
        fetcher's slots. Held longer than ``timeout`` (default ``browserPageLease``) it is
        closed and its slot reused (the holder's next call on it fails). Cookies are cleared
        first; the settings' blocked resource types apply. Given back, the tab is closed (the
        windows it opened, its storage and its routes with it), never lent or visited again."""
        await self.slots.acquire()
        tab: Tab | None = None
        try:
            async with asyncio.timeout(self.settings.browser_timeout):
                tab = await self.take(False)
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
                self.slots.release()
            elif not tab.reclaimed:
                self._leased.discard(tab)
                tab.leased_until = None
                # Closed, not reused: its windows, localStorage and routes stay with the task.
                tab.dead = True
                self.give(tab)
                self.slots.release()


async def _close_quietly(page: Page) -> None:
    with suppress(Exception):
        await asyncio.wait_for(page.close(), 10)


def first_line(e: BaseException) -> str:
    """An exception's message, its first line, without Playwright's "Page.goto: " prefix."""
    text = (getattr(e, "message", None) or str(e) or type(e).__name__).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    for prefix in ("Page.goto: ", "Page.content: ", "Page.wait_for_selector: ",
                   "BrowserContext.new_page: ", "Browser.new_context: "):
        line = line.removeprefix(prefix)
    return line
