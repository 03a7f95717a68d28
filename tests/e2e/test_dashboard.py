"""The dashboard (/ui/) in real headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright): submit a job on the test site, see it complete, open it, expand the results tree,
filter it by MIME type; pause, resume and cancel a second, slow job. Screenshots go to
$HARVESTER_ARTEFACTS or test-artefacts/dashboard/. Never skipped: without chromium it fails."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Page, async_playwright, expect

from shared.config import Settings, parse_auth_tokens
from tests.e2e.site import TestSite
from tests.e2e.stack import Stack
from tests.servers import serve

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
INSTALL = ("chromium missing: run 'sudo apt-get install -y --no-install-recommends chromium' "
           "(or make browser as root); this test drives /usr/bin/chromium")
ARTEFACTS = Path(os.environ.get("HARVESTER_ARTEFACTS", "test-artefacts")) / "dashboard"
WAIT = 60_000  # ms: a deadline for a condition polled by Playwright, not a threshold


async def slow_page(request: web.Request) -> web.Response:
    """/p/<n>: five links deeper, each page a quarter of a second: a job of hundreds of pages."""
    n = int(request.match_info.get("tail", "0").rsplit("/", 1)[-1] or 0)
    await asyncio.sleep(0.25)
    links = "".join(f'<a href="/p/{n * 5 + i}">p{n * 5 + i}</a>' for i in range(1, 6))
    return web.Response(text=f"<html><body>{links}</body></html>", content_type="text/html")


@pytest_asyncio.fixture
async def page() -> AsyncIterator[Page]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(INSTALL)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield await browser.new_page(viewport={"width": 1280, "height": 1000})
        finally:
            await browser.close()


async def test_dashboard_submit_watch_browse_and_control(settings: Settings, site: TestSite,
                                                         page: Page) -> None:
    stack = await Stack(settings).start()
    slow, slow_base = await serve(slow_page)
    try:
        await page.goto(stack.base + "/ui/")
        await page.get_by_test_id("submit-urls").fill(site.a + "/")
        await page.get_by_test_id("submit-depth").fill("3")
        await page.get_by_test_id("submit-button").click()
        message = page.get_by_test_id("submit-message")
        await expect(message).to_contain_text("scheduled", timeout=WAIT)
        job = int(await message.get_attribute("data-job-id") or 0)
        assert job > 0
        await expect(page.get_by_test_id(f"job-state-{job}")).to_have_text("completed",
                                                                           timeout=WAIT)
        await expect(page.get_by_test_id(f"job-progress-{job}")).to_have_attribute("value", "1")
        await page.screenshot(path=ARTEFACTS / "jobs.png", full_page=True)

        await page.get_by_test_id(f"job-open-{job}").click()
        view = page.get_by_test_id("job-view")
        await expect(view).to_be_visible()
        await expect(page.get_by_test_id("job-state")).to_have_text("completed", timeout=WAIT)
        st = await stack.status(job)
        result = await stack.result(job)
        counters = page.get_by_test_id("counter-processed")
        await expect(counters).to_have_text(str(st["pages"]["processed"]))
        await expect(page.get_by_test_id("failure-row")).to_have_count(st["pages"]["failed"])
        tree = page.get_by_test_id("results-tree")
        await expect(tree).to_have_attribute("data-pages", str(len(result)))
        root = tree.locator(f'[data-testid="tree-node"][data-url="{site.a}/"]')
        await root.locator(":scope > summary").click()
        await expect(root).to_have_attribute("open", "")
        first = root.locator(':scope > ul > li > [data-testid="tree-node"]').first
        await expect(first).to_be_visible()
        await first.locator(":scope > summary").click()
        await expect(first).to_have_attribute("open", "")
        await page.screenshot(path=ARTEFACTS / "job-tree.png", full_page=True)

        await page.get_by_test_id("mime-filter").fill("application/x-none")
        await page.get_by_test_id("mime-apply").click()
        await expect(tree).to_have_attribute("data-pages", "0")
        await expect(page.get_by_test_id("tree-empty")).to_be_visible()
        html = await stack.result(job, mime="text/html")
        await page.get_by_test_id("mime-filter").fill("text/html")
        await page.get_by_test_id("mime-apply").click()
        await expect(tree).to_have_attribute("data-pages", str(len(html)))

        # A second, slow job: pause, resume, cancel from the job view.
        await page.get_by_test_id("submit-urls").fill(slow_base + "/p/0")
        await page.get_by_test_id("submit-depth").fill("5")
        await page.get_by_test_id("submit-button").click()
        await expect(message).not_to_have_attribute("data-job-id", str(job), timeout=WAIT)
        slow_job = int(await message.get_attribute("data-job-id") or 0)
        await page.get_by_test_id(f"job-open-{slow_job}").click()
        state = page.get_by_test_id("job-state")
        await expect(state).to_have_text("running", timeout=WAIT)
        await expect(page.get_by_test_id("counter-processed")).not_to_have_text("0",
                                                                                timeout=WAIT)
        await page.get_by_test_id("pause-button").click()
        await expect(state).to_have_text("paused", timeout=WAIT)
        await expect(page.get_by_test_id(f"job-state-{slow_job}")).to_have_text("paused",
                                                                                 timeout=WAIT)
        assert (await stack.status(slow_job))["state"] == "paused"
        await page.screenshot(path=ARTEFACTS / "paused.png", full_page=True)
        await page.get_by_test_id("resume-button").click()
        await expect(state).to_have_text("running", timeout=WAIT)
        assert (await stack.status(slow_job))["state"] == "running"
        await page.get_by_test_id("cancel-button").click()
        await expect(state).to_have_text("cancelled", timeout=WAIT)
        await expect(page.get_by_test_id(f"job-state-{slow_job}")).to_have_text("cancelled",
                                                                                 timeout=WAIT)
        st = await stack.wait_complete(slow_job)
        assert st["state"] == "cancelled" and st["pages"]["queued"] == 0
        await page.screenshot(path=ARTEFACTS / "cancelled.png", full_page=True)
    finally:
        await slow.cleanup()
        await stack.stop()


async def test_dashboard_asks_for_a_token_and_sends_it(settings: Settings, site: TestSite,
                                                       page: Page) -> None:
    """With API tokens the shell loads, asks for one on the first 401, keeps it for the tab and
    sends it on every call and on the job's event stream (a fetch, not EventSource)."""
    token = "dashboard-token-0123456789"
    s = settings.model_copy(update={"auth_tokens": parse_auth_tokens(f"ui:{token}")})
    stack = await Stack(s, token=token).start()
    try:
        await page.goto(stack.base + "/ui/")
        form = page.get_by_test_id("token-form")
        await expect(form).to_be_visible(timeout=WAIT)
        await page.get_by_test_id("token-input").fill(token)
        await page.get_by_test_id("token-button").click()
        await expect(form).to_be_hidden(timeout=WAIT)
        await page.get_by_test_id("submit-urls").fill(site.a + "/")
        await page.get_by_test_id("submit-depth").fill("1")
        await page.get_by_test_id("submit-button").click()
        message = page.get_by_test_id("submit-message")
        await expect(message).to_contain_text("scheduled", timeout=WAIT)
        job = int(await message.get_attribute("data-job-id") or 0)
        await page.get_by_test_id(f"job-open-{job}").click()
        await expect(page.get_by_test_id("job-state")).to_have_text("completed", timeout=WAIT)
        assert token not in page.url
    finally:
        await stack.stop()
