"""The SSRF guard end to end: with only 127.0.0.1 allowed, a job URL on 127.0.0.2 (a canary
counting hits, standing for any refused address), a link to it and a redirect to it end blocked
with their reasons, in /status and /result?status=blocked; a webhook to it is refused once and
given up; the canary is never reached."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from shared.config import Settings
from shared.robots import BLOCKED_LOOPBACK, redirected
from tests.e2e.stack import Stack
from tests.polling import until
from tests.servers import serve


class Canary:
    def __init__(self) -> None:
        self.paths: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        return web.Response(text="<a href='/deeper'>secret</a>", content_type="text/html")


@pytest.fixture
async def narrow_stack(settings: Settings) -> AsyncIterator[Stack]:
    s = settings.model_copy(update={"allow_networks": ("127.0.0.1/32",),
                                    "webhook_secret": "a-secret-for-the-test"})
    stack = await Stack(s).start()
    yield stack
    await stack.stop()


async def test_a_refused_address_ends_blocked_with_its_reason(
        narrow_stack: Stack, db: asyncpg.Connection) -> None:
    canary = Canary()
    canary_runner, secret = await serve(canary.handle, "127.0.0.2")
    target = secret + "/via-redirect"

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/go":
            raise web.HTTPFound(target)
        return web.Response(text=f"<a href='{secret}/linked'>l</a><a href='/go'>g</a>",
                            content_type="text/html")

    runner, base = await serve(handle)
    try:
        job = await narrow_stack.post_job([base + "/", secret + "/direct"],
                                          webhook=secret + "/hook")
        st = await narrow_stack.wait_complete(job, timeout=30)
        assert st["pages"]["blocked"] == 3 and st["pages"]["fetched"] == 1, st
        blocked: dict[str, Any] = dict(await narrow_stack.result(job, status="blocked"))
        assert blocked == {
            secret + "/direct": {"status": None, "reason": BLOCKED_LOOPBACK, "attempts": 0},
            secret + "/linked": {"status": None, "reason": BLOCKED_LOOPBACK, "attempts": 0},
            base + "/go": {"status": None, "reason": redirected(BLOCKED_LOOPBACK, target),
                           "attempts": 1}}


        async def given_up() -> bool:  # the webhook: refused once, its retries ended
            row = await db.fetchrow("SELECT attempts, last_error FROM job_webhook "
                                    "WHERE job_id = $1", job)
            return (row["attempts"], row["last_error"]) == (
                narrow_stack.settings.webhook_max_attempts, BLOCKED_LOOPBACK)

        await until(given_up, 20, "webhook given up")
        assert canary.paths == []
    finally:
        await runner.cleanup()
        await canary_runner.cleanup()
