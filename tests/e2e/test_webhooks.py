"""End to end: a job that names a webhook gets one signed POST when it completes (issue 16),
retried with backoff until the receiver answers 2xx."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from harvester_ops.embedded import free_port
from shared.config import Settings
from tests.e2e.site import TestSite
from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e

SECRET = "s3cret-for-the-test"


def verify(secret: str, header: str, body: bytes) -> bool:
    """What a receiver does with ``X-Harvester-Signature: t=<unix>,v1=<hex>``."""
    parts = dict(p.split("=", 1) for p in header.split(","))
    mac = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, parts["v1"]) and abs(time.time() - int(parts["t"])) < 300


async def test_a_completed_job_is_posted_signed_and_retried_until_accepted(
        settings: Settings, db: asyncpg.Connection, site: TestSite,
        caplog: pytest.LogCaptureFixture) -> None:
    got: list[tuple[int, dict[str, Any], bool, str]] = []

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        status = 500 if not got else 200  # the first delivery fails
        got.append((status, json.loads(body),
                    verify(SECRET, request.headers["X-Harvester-Signature"], body),
                    request.headers["X-Harvester-Delivery"]))
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port("127.0.0.1")
    await web.TCPSite(runner, "127.0.0.1", port).start()
    receiver = f"http://127.0.0.1:{port}"
    s = settings.model_copy(update={"webhook_secret": SECRET, "webhook_retry_cap": 0.2})
    stack = await Stack(s).start()
    try:
        job = await stack.post_job([site.a + "/"], depth="1", webhook=receiver + "/hook")
        st = await stack.wait_complete(job)
        deadline = time.monotonic() + 20
        while await db.fetchval("SELECT sent_on FROM job_webhook WHERE job_id = $1", job) is None:
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.05)
    finally:
        await stack.stop()
        await runner.cleanup()
    assert [g[0] for g in got] == [500, 200]
    sent = got[-1][1]
    assert sent == {"event": "job.completed", "job": job, "state": "completed",
                    "pages": {"processed": st["pages"]["processed"],
                              "fetched": st["pages"]["fetched"], "cached": st["pages"]["cached"],
                              "failed": st["pages"]["failed"], "blocked": st["pages"]["blocked"]}}
    assert all(g[2] for g in got) and {g[3] for g in got} == {str(job)}
    assert not verify("another secret", "t=1,v1=00", b"{}")
    row = await db.fetchrow("SELECT attempts, last_status FROM job_webhook WHERE job_id = $1", job)
    assert (row["attempts"], row["last_status"]) == (2, 200)
    assert SECRET not in caplog.text
