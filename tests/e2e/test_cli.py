"""The client commands against the Stack: crawl --wait, cancel then status, result as a tree."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import pytest
from aiohttp import web

from harvester_ops import cli
from tests.e2e.site import TestSite
from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e


async def run(argv: Sequence[str]) -> int:
    """cli.main in a thread (it runs its own event loop), the Stack on this one."""
    return await asyncio.to_thread(cli.main, list(argv))


async def test_crawl_wait_status_result_tree(stack: Stack, site: TestSite,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    s = ["--server", stack.base]
    assert await run([*s, "crawl", site.a + "/", "--depth", "2", "--wait"]) == 0
    out = capsys.readouterr().out
    assert "processed" in out and "fetched" in out
    job = int((await stack.request("GET", "/jobs"))[1]["jobs"][0]["id"])  # the newest
    assert await run([*s, "result", str(job), "--format", "tree"]) == 0
    tree = capsys.readouterr().out
    assert tree.splitlines()[0] == site.a + "/"
    result = await stack.result(job)
    for links in result.values():
        for link in links:
            assert link in tree
    assert await run([*s, "status", str(job)]) == 0
    assert json.loads(capsys.readouterr().out)["pages"]["queued"] == 0


async def test_cancel_then_status_shows_cancelled(stack: Stack, site: TestSite,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    s = ["--server", stack.base]
    assert await run([*s, "pause", "999999"]) == 1  # unknown job: the server's 404
    assert await run([*s, "crawl", site.a + "/", "--depth", "3"]) == 0
    job = json.loads(capsys.readouterr().out)["jobId"]
    assert await run([*s, "cancel", str(job)]) == 0
    capsys.readouterr()
    assert await run([*s, "status", str(job)]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "cancelled"
    assert await run(["--server", "http://127.0.0.1:9", "jobs"]) == 1  # unreachable
    assert await run([*s, "result"]) == 2  # usage


async def test_a_proxys_html_error_during_crawl_wait_is_an_error_message(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A 502 page (not JSON) on the job's event stream: exit 1 with the status, no traceback."""
    async def submit(_: web.Request) -> web.Response:
        return web.json_response({"jobId": 7})

    async def events(_: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>502 Bad Gateway</html>",
                            content_type="text/html")

    app = web.Application()
    app.router.add_post("/", submit)
    app.router.add_get("/status/7/events", events)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        assert await run(["--server", f"http://127.0.0.1:{port}", "crawl", "http://a.example/",
                          "--wait"]) == 1
    finally:
        await runner.cleanup()
    err = capsys.readouterr().err
    assert "harvester crawl: 502" in err and "502 Bad Gateway" in err, err
    assert "Traceback" not in err, err
