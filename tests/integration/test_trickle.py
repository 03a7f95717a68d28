"""A body that arrives too slowly (headers at once, then a trickle or a stall) fails for good
after one attempt: another attempt would be as slow, and would hold a slot for the whole fetch
budget again (plan safety.md §3.5). A slow answer before its headers is still retried."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from shared.config import Settings
from tests.servers import serve
from worker.fetchers.http import TRICKLE, fetch, open_session
from worker.retry import RetryPolicy


async def trickle(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/html"})
    await resp.prepare(request)
    for _ in range(20):  # a byte every 0.3 s: each read in time, the whole not (2.5 s budget)
        await resp.write(b"<")
        await asyncio.sleep(0.3)
    return resp


async def stall(request: web.Request, release: asyncio.Event) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/html"})
    await resp.prepare(request)
    await resp.write(b"<html>")
    await release.wait()  # until the test is over
    return resp


@pytest.fixture
async def base() -> AsyncIterator[str]:
    release = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/trickle":
            return await trickle(request)
        if request.path.startswith("/slow-redirect/"):  # 0.6 s, then on to the next
            left = int(request.path.rsplit("/", 1)[1])
            await asyncio.sleep(0.6)
            raise web.HTTPFound(f"/slow-redirect/{left - 1}" if left > 1 else "/trickle")
        return await stall(request, release)

    runner, url = await serve(handle)
    yield url
    release.set()
    await runner.cleanup()


@pytest.mark.parametrize("path", ["/trickle", "/stall"])
async def test_a_body_too_slow_after_its_headers_fails_for_good(
        settings: Settings, base: str, path: str) -> None:
    s = settings.model_copy(update={"connect_timeout": 0.5, "read_timeout": 1.0})
    async with open_session(s) as session:
        page = await fetch(session, s, 1, base + path)
    assert (page.status, page.error, page.permanent) == (None, TRICKLE, True)
    assert not RetryPolicy.from_settings(s).retryable(page)


async def test_a_body_too_slow_only_for_what_redirects_left_of_the_budget_is_tried_again(
        settings: Settings, base: str) -> None:
    """Three slow redirect hops leave the final answer less than ``readTimeout``: its body
    running out of the fetch budget says nothing of its speed, so it is not a trickle."""
    s = settings.model_copy(update={"connect_timeout": 0.5, "read_timeout": 1.0})
    async with open_session(s) as session:
        page = await fetch(session, s, 1, base + "/slow-redirect/3")
    assert (page.status, page.error, page.permanent) == (None, "timeout", False)
    assert page.final_url == base + "/trickle" and len(page.redirects) == 3
    assert RetryPolicy.from_settings(s).retryable(page)
