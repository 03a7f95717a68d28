"""Crawler traps end to end: on a calendar-like site (each month links the next, for ever)
with one link of each trap kind, a job's ``traps`` block each with its reason, in /status and
/result?status=blocked; none is fetched; a job URL with credentials is a 400 that does not
echo it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from shared.robots import BLOCKED_CREDENTIALS, TRAP
from tests.e2e.stack import Stack
from tests.servers import serve

pytestmark = pytest.mark.e2e

TRAPS = {"maxUrlLength": 200, "maxPathDepth": 6, "maxSegmentRepeats": 2, "maxQueryParams": 5,
         "maxParamRepeats": 2, "maxChainLevel": 4}


class Calendar:
    """``/`` links the calendar's first month and one URL of each trap kind; ``/cal?m=N``
    links ``/cal?m=N+1``."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.base = ""

    def traps(self) -> dict[str, str]:
        b, auth = self.base, self.base.replace("://", "://u:hunter2@")
        return {b + "/long/" + "y" * 250: f"{TRAP} (URL longer than 200 characters)",
                b + "/d/1/2/3/4/5/6": f"{TRAP} (path deeper than 6 segments)",
                b + "/r/x/x/x": f"{TRAP} (path segment repeated more than 2 times)",
                b + "/q?a=1&b=2&c=3&d=4&e=5&f=6": f"{TRAP} (more than 5 query parameters)",
                b + "/p?a=1&a=2&a=3": f"{TRAP} (query parameter repeated more than 2 times)",
                b + "/cal?m=5": f"{TRAP} (more than 4 links from the job URL)",
                auth + "/secret": BLOCKED_CREDENTIALS}

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path_qs)
        if request.path == "/cal":
            m = int(request.query.get("m", "1"))
            links = f"<a href='/cal?m={m + 1}'>next month</a>"
        elif request.path == "/":
            links = "<a href='/cal?m=1'>calendar</a>" + "".join(
                f"<a href='{u}'>trap</a>" for u in self.traps() if "/cal" not in u)
        else:
            links = ""
        return web.Response(text=f"<html><body>{links}</body></html>", content_type="text/html")


@pytest.fixture
async def calendar() -> AsyncIterator[Calendar]:
    cal = Calendar()
    runner, cal.base = await serve(cal.handle)
    yield cal
    await runner.cleanup()


async def test_each_trap_kind_is_blocked_with_its_reason(stack: Stack, calendar: Calendar
                                                         ) -> None:
    job = await stack.post_spec({"urls": [calendar.base + "/"], "depth": 10, "traps": TRAPS})
    st = await stack.wait_complete(job, timeout=30)
    assert st["spec"]["traps"] == TRAPS
    expected = calendar.traps()
    assert st["pages"]["blocked"] == len(expected), st
    assert st["pages"]["fetched"] == 5 and st["pages"]["failed"] == 0, st  # /, 4 months
    blocked = await stack.result(job, status="blocked")
    assert blocked == {u: {"status": None, "reason": r, "attempts": 0}
                       for u, r in expected.items()}
    assert sorted(calendar.paths) == ["/", "/cal?m=1", "/cal?m=2", "/cal?m=3", "/cal?m=4"]


async def test_the_defaults_follow_the_calendar_to_the_job_depth(stack: Stack,
                                                                 calendar: Calendar) -> None:
    """Without ``traps`` the settings' limits hold: every trap link of the site is within
    them but the one with credentials; the job's depth ends the calendar. A job URL with
    credentials is a 400 that does not echo it."""
    job = await stack.post_spec({"urls": [calendar.base + "/"], "depth": 4})
    st = await stack.wait_complete(job, timeout=30)
    blocked = await stack.result(job, status="blocked")
    assert {u: r["reason"] for u, r in blocked.items()} == {
        u: r for u, r in calendar.traps().items() if r == BLOCKED_CREDENTIALS}
    assert "/cal?m=3" in calendar.paths and "/cal?m=4" not in calendar.paths
    assert st["pages"]["blocked"] == 1
    status, body, _ = await stack.request("POST", "/", "http://u:hunter2@127.0.0.1:9/")
    assert status == 400
    assert body == {"code": "BadRequest", "message": "Invalid URL: credentials in URLs are not "
                    "accepted (use hostHeaders or sessions)"}
    status, body = await stack.post_json({"urls": ["http://u:hunter2@127.0.0.1:9/"]})
    assert status == 400 and "hunter2" not in str(body), body
    status, body = await stack.post_json({"urls": ["http://127.0.0.1:9/"],
                                          "traps": {"maxPathDepth": 0}})
    assert status == 400 and body["message"].startswith("Invalid traps.maxPathDepth"), body
