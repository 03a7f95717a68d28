"""The browser fetcher (worker/fetchers/browser.py) in real headless Chromium (Debian's
/usr/bin/chromium, through its executable path): one fetcher with 2 tabs for the module.
Rendered links, wait conditions, resource blocking, stealth, stateless visits, a navigation
to another host through the gate, the rendered WARC answer, and recovery: a hung page
relaunches the browser once however many hang together (unless browserRelaunchOnTimeout is
off), a killed browser is relaunched, so are errors in a row, a leased page held too long is
reclaimed. The SSRF guard's relay: no sub-resource, script request or redirect reaches a
refused address (a connection-counting canary on 127.0.0.2), a redirect there is blocked
with the guard's reason, switches that would bypass it are refused. Never skipped: without chromium it fails (a missing browserPath is a config error)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from aiohttp import web

from harvester_ops.embedded import free_port
from shared.config import Settings
from shared.errors import ConfigError
from shared.robots import BLOCKED, BLOCKED_LOOPBACK, redirected
from shared.urls import host_key
from tests.browser_site import CHROMIUM, JsSite, anchors, chromium_pids, probe, require_chromium
from tests.integration.test_socks_guard import Canary
from tests.polling import until
from tests.servers import serve
from worker.fetchers import FetchRequest, tabs
from worker.fetchers.browser import BrowserFetcher
from worker.fetchers.http import HttpFetcher, html_2xx
from worker.retry import RetryPolicy

pytestmark = [pytest.mark.serial, pytest.mark.timeout(120)]  # serial: leases timed in seconds

UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) {} Safari/537.36"
POOL = (UA.format("HeadlessChrome/156.0.0.0"), UA.format("Chrome/156.0.0.0"))
SETTINGS = Settings(connect_timeout=2, read_timeout=5, browser_path=CHROMIUM,
                    browser_page_lease=0.5, user_agents=POOL, retries=1,
                    allow_networks=("127.0.0.0/8",))  # the test sites (SSRF guard)
POLICY = RetryPolicy.from_settings(SETTINGS)
SLACK = 2.0  # past a visit's deadline, time for Playwright to report its timeout


def request(url: str, options: Mapping[str, Any] | None = None, *,
            keep_raw: bool = False) -> FetchRequest:
    return FetchRequest(1, url, None, {}, html_2xx, keep_raw, POLICY, options or {})


@pytest.fixture(scope="module")
async def site() -> AsyncIterator[JsSite]:
    s = await JsSite(pages=7).start()
    yield s
    await s.stop()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[BrowserFetcher]:
    require_chromium()
    async with BrowserFetcher(SETTINGS, concurrency=2) as fetcher:
        yield fetcher


async def test_the_browser_finds_the_links_a_script_builds(site: JsSite,
                                                           browser: BrowserFetcher) -> None:
    async with HttpFetcher(SETTINGS) as http:
        plain = await http.fetch(request(site.url(0)), None)
    assert plain.status == 200 and plain.body is not None
    assert anchors(plain.body) == []  # as served, the page has no <a>
    page = await browser.fetch(request(site.url(0)), None)
    assert (page.status, page.error, page.fetcher, page.mime) == (200, None, "browser",
                                                                  "text/html")
    assert page.body is not None and page.charset == "utf-8" and page.cacheable
    assert [site.base + h for h in anchors(page.body)] == site.links(0)
    same = await browser.fetch(request(site.base + "/hash"), None)  # a fragment: same page
    assert same.status == 200 and same.final_url is None
    missing = await browser.fetch(request(site.base + "/p/99"), None)
    assert (missing.status, missing.error, missing.body) == (404, "HTTP 404 Not Found", None)


async def test_wait_conditions_see_a_late_link(site: JsSite, browser: BrowserFetcher) -> None:
    early = await browser.fetch(request(site.base + "/late", {"wait": "domcontentloaded"}),
                                None)
    assert early.body is not None and anchors(early.body) == []
    by_selector = await browser.fetch(request(site.base + "/late", {"selector": "a#late"}), None)
    assert by_selector.body is not None and anchors(by_selector.body) == ["/p/1"]
    by_time = await browser.fetch(request(site.base + "/late", {"waitMs": 1500}), None)
    assert by_time.body is not None and anchors(by_time.body) == ["/p/1"]


async def test_a_selector_chromium_cannot_parse_fails_the_visit_for_good(
        site: JsSite, browser: BrowserFetcher) -> None:
    # Jobs stored before the spec checked it, or CSS selectolax takes and Playwright does not:
    # the visit fails for good, and the browser is not blamed (no error in a row, no relaunch).
    before, errors = browser.relaunches, browser.tabs.errors
    for selector in ("a[[", "nope=foo", "a[["):
        page = await browser.fetch(request(site.url(1), {"selector": selector}), None)
        assert page.status is None and page.permanent and not POLICY.retryable(page), page
        assert page.error and page.error.startswith("invalid browser.selector: "), page.error
    assert (browser.relaunches, browser.tabs.errors) == (before, errors)
    ok = await browser.fetch(request(site.base + "/late", {"selector": "a#late"}), None)
    assert ok.body is not None and anchors(ok.body) == ["/p/1"]


async def test_images_are_blocked_by_default(site: JsSite, browser: BrowserFetcher) -> None:
    site.hits["/pixel.png"] = 0
    page = await browser.fetch(request(site.base + "/img"), None)
    assert page.status == 200 and site.hits["/pixel.png"] == 0
    page = await browser.fetch(request(site.base + "/img", {"block": []}), None)
    assert page.status == 200 and site.hits["/pixel.png"] == 1


async def test_stealth_is_opt_in(site: JsSite, browser: BrowserFetcher) -> None:
    plain = await browser.fetch(request(site.base + "/probe"), None)
    assert plain.body is not None
    seen = probe(plain.body)
    assert seen["ua"] == SETTINGS.user_agent and seen["webdriver"] is True  # says what it is
    hidden = await browser.fetch(request(site.base + "/probe", {"stealth": True}), None)
    assert hidden.body is not None
    seen = probe(hidden.body)
    assert not seen["webdriver"] and seen["chrome"] is True
    assert seen["languages"] == ["en-US", "en"] and seen["plugins"] > 0
    assert seen["ua"] == POOL[1] and "HeadlessChrome" not in seen["ua"]
    again = await browser.fetch(request(site.base + "/probe"), None)  # the flip back
    assert again.body is not None and probe(again.body)["ua"] == SETTINGS.user_agent


async def test_a_visit_starts_without_cookies(site: JsSite, browser: BrowserFetcher) -> None:
    site.cookies.clear()
    first = await browser.fetch(request(site.base + "/set-cookie"), None)
    assert first.status == 200
    assert site.cookies["/cookie.js"] == ["sid=42"]  # the page's own request had it
    second = await browser.fetch(request(site.base + "/echo-cookie"), None)
    assert second.body is not None and '<pre id="cookie">[]</pre>' in second.body.decode()
    assert site.cookies["/echo-cookie"] == [""]


class RefusingGate:
    """A gate that refuses every URL under ``prefix`` (as robots.txt would), gives a slot
    (its host, a number) when one is asked for, and records what it was asked and given back."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.asked: list[tuple[str, bool]] = []
        self.held: list[tuple[str, int]] = []          # slots given, not yet back
        self.released: list[tuple[str, bool]] = []     # (host, trouble) of slots back

    async def admit_hop(self, url: str, slot: bool, deadline: float) -> Any:
        self.asked.append((url, slot))
        if url.startswith(self.prefix):
            return BLOCKED
        if not slot:
            return None
        given = (host_key(url), len(self.asked))
        self.held.append(given)
        return given

    def release(self, slot: Any, trouble: bool, retry_after: float | None) -> None:
        self.held.remove(slot)
        self.released.append((slot[0], trouble))

    def give_back(self, slot: Any) -> None:
        self.held.remove(slot)
        self.released.append((slot[0], False))


async def test_a_window_a_page_opens_is_closed(site: JsSite, browser: BrowserFetcher) -> None:
    site.hits["/p/1"] = 0
    page = await browser.fetch(request(site.base + "/popup"), None)
    assert page.status == 200
    await until(lambda: site.hits["/p/1"] > 0, what="the popup's request")
    live = browser.tabs.browser
    assert live is not None

    await until(lambda: all(len(c.pages) == 1 for c in live.contexts),
                what="the popup closed")  # a tab is one context with one page


async def test_a_script_navigation_to_another_host_goes_through_the_gate(
        site: JsSite, browser: BrowserFetcher) -> None:
    other = site.base.replace("127.0.0.1", "localhost")
    site.hits["/p/2"] = 0
    gate = RefusingGate(other + "/p/2")
    page = await browser.fetch(request(f"{site.base}/jump?to={other}/p/2"), gate)
    assert page.error == f"redirect to {other}/p/2: {BLOCKED}", page
    assert page.permanent and site.hits["/p/2"] == 0
    assert gate.asked == [(f"{other}/p/2", True)]  # a slot asked for, as for an HTTP hop
    gate.asked.clear()
    # An HTTP redirect, followed by Chromium before the gate can see it, still fails the visit.
    moved = await browser.fetch(request(f"{site.base}/moved?to={other}/p/2"), gate)
    assert moved.error == f"redirect to {other}/p/2: {BLOCKED}", moved
    assert moved.status == 302 and moved.permanent and moved.body is None
    assert moved.redirects == (f"{site.base}/moved?to={other}/p/2",)
    gate.asked.clear()
    allowed = await browser.fetch(request(f"{site.base}/jump?to={other}/p/1"), gate)
    assert allowed.error is None and allowed.final_url == f"{other}/p/1"
    assert allowed.body is not None and "/p/3" in anchors(allowed.body)
    assert gate.asked == [(f"{other}/p/1", True)]  # asked once, with its slot
    assert gate.held == [] and gate.released == [(host_key(other), False)]  # back at the end
    # A second navigation on that host within the visit goes under the slot held for it.
    gate.asked.clear()
    gate.released.clear()
    twice = await browser.fetch(request(f"{site.base}/jump?to={other}/jump?to={other}/p/1"),
                                gate)
    assert twice.error is None and twice.final_url == f"{other}/p/1", twice
    assert gate.asked == [(f"{other}/jump?to={other}/p/1", True), (f"{other}/p/1", False)]
    assert gate.held == [] and gate.released == [(host_key(other), False)]


async def test_the_raw_answer_holds_the_rendered_page(site: JsSite,
                                                      browser: BrowserFetcher) -> None:
    page = await browser.fetch(request(site.url(0), keep_raw=True), None)
    assert page.raw is not None and page.body is not None
    assert page.raw.status_line == b"HTTP/1.1 200 OK"
    assert page.raw.body == page.body and b'<a href="/p/1">' in page.raw.body
    headers = {k.lower(): v for k, v in page.raw.headers}
    assert headers[b"content-length"] == str(len(page.body)).encode()
    assert b"content-encoding" not in headers
    assert any(k.lower() == "user-agent" for k, _ in page.raw.request_headers)


async def test_a_hung_page_times_out_and_relaunches_the_browser_once(
        site: JsSite, browser: BrowserFetcher) -> None:
    before = browser.relaunches
    pids = chromium_pids()
    page = await browser.fetch(request(site.base + "/hang", {"timeout": 1}), None)
    assert page.status is None and page.error is not None
    assert page.error.startswith("timeout after 1s") and "relaunched" in page.error
    assert POLICY.retryable(page)
    assert browser.relaunches == before + 1
    ok = await browser.fetch(request(site.url(1)), None)
    assert ok.status == 200 and ok.body is not None and anchors(ok.body)
    await until(lambda: not (chromium_pids() & pids), what="the old browser closed")
    # Four hanging at once (two tabs): one relaunch.
    pages = await asyncio.gather(*(browser.fetch(request(site.base + f"/hang?{i}",
                                                         {"timeout": 1}), None)
                                   for i in range(4)))
    assert all(p.error and p.error.startswith("timeout") for p in pages), pages
    assert browser.relaunches == before + 2
    assert (await browser.fetch(request(site.url(2)), None)).status == 200


async def test_a_killed_browser_is_relaunched(site: JsSite, browser: BrowserFetcher) -> None:
    before = browser.relaunches
    await until(lambda: len(chromium_pids()) == 1, what="one browser (old ones closed)")
    (pid,) = chromium_pids()
    site.hits["/hang?kill"] = 0
    inflight = asyncio.create_task(browser.fetch(request(site.base + "/hang?kill",
                                                         {"timeout": 10}), None))
    await until(lambda: site.hits["/hang?kill"] > 0, what="the hanging request")
    os.kill(pid, signal.SIGKILL)
    page = await asyncio.wait_for(inflight, 15)
    assert page.status is None and page.error is not None and POLICY.retryable(page)
    assert not page.error.startswith("timeout"), page.error  # seen at once, not at 10 s
    nxt = await browser.fetch(request(site.url(3)), None)
    assert nxt.status == 200 and nxt.error is None
    assert browser.relaunches == before + 1
    assert pid not in chromium_pids()


async def test_a_page_leased_too_long_is_reclaimed(site: JsSite,
                                                   browser: BrowserFetcher) -> None:
    async with browser.lease(30) as lent:  # a lease of its own length: a usable page
        await lent.goto(site.url(4))
        assert await lent.title() == "Page 4"
    async with browser.lease() as one, browser.lease() as two:  # both tabs, 0.5 s each
        # Every slot is leased: a fetch gets one only once the leases (0.5 s) are reclaimed.
        page = await browser.fetch(request(site.url(5), {"timeout": 8}), None)
        assert page.status == 200, page
        # Reclaimed together, each tab is closed by a task of its own: the fetch that took the
        # first slot freed may end before the second close has (seen once in CI, on 2 cores).
        await until(lambda: one.is_closed() and two.is_closed(), 10, "both leases closed")
        with pytest.raises(Exception, match="closed"):
            await one.goto(site.url(6))
    # Given back after its reclaim, a lease frees nothing twice: two fetches still share 2 tabs.
    pages = await asyncio.gather(*(browser.fetch(request(site.url(i)), None) for i in (1, 2)))
    assert [p.status for p in pages] == [200, 200]
    assert browser.tabs.slots._value == 2  # no slot released twice


async def test_a_tab_lent_to_a_task_goes_back_clean(site: JsSite,
                                                   browser: BrowserFetcher) -> None:
    async with browser.lease(30) as lent:
        await lent.goto(site.base + "/storage")
        await lent.evaluate("() => { localStorage.setItem('k', 'lent'); window.open('/p/1'); }")
        await until(lambda: len(lent.context.pages) == 2, what="the lent page's window")
    # The next visit (taking the most recently idle tab) sees none of it.
    page = await browser.fetch(request(site.base + "/storage"), None)
    assert page.body is not None and '<pre id="storage">null</pre>' in page.body.decode(), \
        page.body
    live = browser.tabs.browser
    assert live is not None
    await until(lambda: all(len(c.pages) == 1 for c in live.contexts),
                what="the lent page's window closed")


async def test_a_visit_that_waited_for_a_tab_still_ends_by_its_deadline(
        site: JsSite, browser: BrowserFetcher, monkeypatch: pytest.MonkeyPatch) -> None:
    # The host slot is leased for the fetch budget + 5 s: the tab wait, the tab's making and
    # the navigation all come out of the visit's one timeout, never a fresh one each.
    loop = asyncio.get_running_loop()
    ended: list[float] = []
    relaunch = browser.tabs.relaunch

    async def spy(reason: str, seen: int) -> bool:  # the navigation given up: when
        ended.append(loop.time())
        return await relaunch(reason, seen)

    monkeypatch.setattr(browser.tabs, "relaunch", spy)
    async with browser.lease(3), browser.lease(3):  # both tabs, reclaimed after 3 s
        start = loop.time()
        page = await browser.fetch(request(site.base + "/hang?late", {"timeout": 4}), None)
    ended.append(loop.time())
    assert page.error and page.error.startswith("timeout after 4s"), page
    assert ended[0] - start < 4 + SLACK, ended[0] - start  # not 3 s + a full 4 s
    monkeypatch.undo()
    assert (await browser.fetch(request(site.url(2)), None)).status == 200


async def test_a_crashed_page_relaunches_the_browser(site: JsSite,
                                                    browser: BrowserFetcher) -> None:
    before = browser.relaunches
    page = await browser.fetch(request("chrome://crash"), None)  # the renderer dies
    assert page.status is None and page.error and POLICY.retryable(page), page
    await until(lambda: browser.relaunches == before + 1, what="the relaunch")
    assert (await browser.fetch(request(site.url(2)), None)).status == 200
    assert browser.relaunches == before + 1


async def test_a_browser_that_cannot_be_launched_fails_fetches_at_once(
        site: JsSite, browser: BrowserFetcher, monkeypatch: pytest.MonkeyPatch) -> None:
    before = browser.relaunches
    monkeypatch.setattr(browser.tabs, "settings",
                        SETTINGS.model_copy(update={"browser_path": "/bin/false"}))
    for pid in chromium_pids():
        os.kill(pid, signal.SIGKILL)
    await until(lambda: browser.tabs.browser is None, what="the failed relaunch")
    page = await browser.fetch(request(site.url(1)), None)
    assert page.error and page.error.startswith("browser unavailable: "), page
    assert POLICY.retryable(page) and browser.relaunches == before
    # Launchable again, the next fetch past RETRY_BROKEN launches it.
    monkeypatch.setattr(browser.tabs, "settings", SETTINGS)
    monkeypatch.setattr(tabs, "RETRY_BROKEN", 0.0)
    assert (await browser.fetch(request(site.url(1)), None)).status == 200
    assert browser.relaunches == before + 1


async def test_errors_in_a_row_relaunch_the_browser(browser: BrowserFetcher) -> None:
    closed = f"http://127.0.0.1:{free_port('127.0.0.1')}/"  # nothing listens there
    before = browser.relaunches
    pages = [await browser.fetch(request(closed), None)
             for _ in range(SETTINGS.browser_max_errors)]
    assert all(p.status is None and p.error and "ERR_CONNECTION_REFUSED" in p.error
               for p in pages), pages
    assert pages[-1].error and pages[-1].error.endswith("(browser relaunched)")
    assert browser.relaunches == before + 1


async def test_without_relaunch_on_timeout_a_timeout_is_only_a_failure(site: JsSite) -> None:
    calm = SETTINGS.model_copy(update={"browser_relaunch_on_timeout": False})
    async with BrowserFetcher(calm, concurrency=1) as fetcher:
        page = await fetcher.fetch(request(site.base + "/hang?calm", {"timeout": 1}), None)
        assert page.error == "timeout after 1s" and fetcher.relaunches == 0
        assert (await fetcher.fetch(request(site.url(1)), None)).status == 200


async def test_a_missing_browser_is_a_config_error() -> None:
    missing = SETTINGS.model_copy(update={"browser_path": "/nonexistent/chromium"})
    with pytest.raises(ConfigError, match="make browser"):
        async with BrowserFetcher(missing, concurrency=1):
            pass


# -- the SSRF guard's relay (worker/fetchers/socks_guard.py) -----------------------------------
# Only 127.0.0.1 allowed: a connection-counting canary on 127.0.0.2 stands for every address the
# guard refuses. Chromium reaches it neither by a sub-resource, nor a script, nor a redirect.
NARROW = SETTINGS.model_copy(update={"allow_networks": ("127.0.0.1/32",)})
SUBRESOURCES = """<!doctype html><html><head><title>Sub</title><script>
function mark(t) { const p = document.createElement('p'); p.className = 'mark';
                   p.textContent = t; document.body.appendChild(p); }
</script></head><body><a href="/p/1">one</a>
<img src="{canary}/img" onload="mark('img loaded')" onerror="mark('img failed')">
<iframe src="{canary}/frame"></iframe>
<script>
fetch('{canary}/fetch').then(() => mark('fetch answered'), () => mark('fetch failed'))
  .finally(() => { const d = document.createElement('div'); d.id = 'done';
                   document.body.appendChild(d); });
</script></body></html>"""


@pytest.fixture
async def canary() -> AsyncIterator[Canary]:
    c = await Canary("127.0.0.2").start()
    yield c
    await c.stop()


async def test_a_pages_requests_never_reach_a_refused_address(site: JsSite,
                                                              canary: Canary) -> None:
    async def page(_: web.Request) -> web.Response:
        return web.Response(text=SUBRESOURCES.replace("{canary}", canary.base),
                            content_type="text/html")

    runner, base = await serve(page)
    try:
        async with BrowserFetcher(NARROW, concurrency=1) as narrow:
            port = narrow.tabs.relay.port
            for _ in range(2):  # the second time in a relaunched browser: the same relay
                sub = await narrow.fetch(request(base + "/sub",
                                                 {"block": [], "selector": "#done"}), None)
                assert sub.status == 200 and sub.body is not None, sub
                text = sub.body.decode()
                assert "fetch failed" in text and "img failed" in text, text
                assert anchors(sub.body) == ["/p/1"]
                assert canary.hits == 0
                assert narrow.tabs.relay.failure("127.0.0.2", canary.port) == BLOCKED_LOOPBACK
                assert await narrow.tabs.relaunch("test", narrow.tabs.gen)
                assert narrow.tabs.relay.port == port
    finally:
        await runner.cleanup()
    assert canary.hits == 0


async def test_a_redirect_to_a_refused_address_is_blocked(site: JsSite, canary: Canary) -> None:
    target = canary.base + "/x"
    async with BrowserFetcher(NARROW, concurrency=1) as narrow:
        moved = await narrow.fetch(request(f"{site.base}/moved?to={target}"), None)
        assert moved.error == redirected(BLOCKED_LOOPBACK, target), moved
        assert moved.status is None and moved.permanent and moved.body is None
        assert moved.final_url == target
        assert moved.redirects == (f"{site.base}/moved?to={target}",)
        # The page's own address refused when Chromium connects (a name rebound since the
        # gate admitted it): blocked, not failed.
        own = await narrow.fetch(request(target), None)
        assert (own.status, own.error, own.permanent) == (None, BLOCKED_LOOPBACK, True), own
        # An allowed page still renders, its script's links found.
        page = await narrow.fetch(request(site.url(0)), None)
        assert page.status == 200 and page.body is not None, page
        assert [site.base + h for h in anchors(page.body)] == site.links(0)
    assert canary.hits == 0


async def test_args_that_would_bypass_the_relay_are_a_config_error() -> None:
    for arg in ("--proxy-server=direct://", "--no-proxy-server", "--proxy-bypass-list=*"):
        bypass = SETTINGS.model_copy(update={"browser_args": ("--disable-gpu", arg)})
        with pytest.raises(ConfigError, match="SSRF guard"):
            async with BrowserFetcher(bypass, concurrency=1):
                pass
