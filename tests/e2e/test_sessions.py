"""Sessions and cookies end to end (SZ-T6, and SZ-T5's one User-Agent per session): a whole
stack in-process, sessions in PostgreSQL, sites on 127.0.0.1 that check what each request
carries.

- A pool of 4 accounts of 2 cookies: every request carries exactly one account's cookies, and
  each account one User-Agent of the pool; at least 2 do the work; an account answered
  "unusual traffic" (a block pattern) or 403 is benched after one request and the page
  succeeds with another (no failure); the other host the pages link to never sees a cookie.
- Private answers: a job without sessions after one with them (or with headers in its
  fingerprint) sees no cookie and fetches every page itself; an empty pool crawls without
  cookies.
- ``max_uses = 3``: 3 requests, then the visits wait; a new version of the session (PUT)
  lets them go on.
- The login task against a fake form: "new", then "updated", then a crawl with its cookies.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from http.cookies import SimpleCookie
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from shared.config import Settings
from shared.db import sessions
from tests.e2e.stack import Stack
from tests.servers import free_port, serve

pytestmark = pytest.mark.e2e

ACCOUNTS = {"alice": {"sid": "a-1", "user": "alice"}, "bob": {"sid": "b-1", "user": "bob"},
            "carol": {"sid": "c-1", "user": "carol"}, "dave": {"sid": "d-1", "user": "dave"}}
UAS = ("AgentOne/1.0", "AgentTwo/2.0", "AgentThree/3.0", "AgentFour/4.0")
BLOCKED = "<html><body>Our systems have detected unusual traffic.</body></html>"


def html(*links: str) -> web.Response:
    return web.Response(text="".join(f'<a href="{u}">x</a>' for u in links),
                        content_type="text/html")


def cookies_of(request: web.Request) -> dict[str, str] | None:
    header = request.headers.get("Cookie")
    if header is None:
        return None
    jar: SimpleCookie = SimpleCookie()
    jar.load(header)
    return {k: m.value for k, m in jar.items()}


def account(cookies: dict[str, str] | None) -> str | None:
    """The one account whose cookies these are exactly (None: none; AssertionError: mixed)."""
    if cookies is None:
        return None
    names = [n for n, c in ACCOUNTS.items() if c == cookies]
    assert len(names) == 1, f"not exactly one account's cookies: {cookies}"
    return names[0]


class Site:
    """Host A: ``/`` links ``/p0`` … and host B's ``/b``; carol is always shown the
    "unusual traffic" page, dave always gets a 403. Host B records what it gets."""

    def __init__(self, pages: int) -> None:
        self.pages = pages
        self.a: list[tuple[str, dict[str, str] | None, str]] = []  # path, cookies, UA
        self.b: list[str | None] = []  # Cookie headers at host B
        self.base = self.b_base = ""
        self.runners: list[web.AppRunner] = []

    async def start(self) -> Site:
        runner, self.b_base = await serve(self.host_b, "127.0.0.2")
        self.runners.append(runner)
        runner, self.base = await serve(self.host_a, "127.0.0.1")
        self.runners.append(runner)
        return self

    async def stop(self) -> None:
        for r in self.runners:
            await r.cleanup()

    async def host_a(self, request: web.Request) -> web.Response:
        cookies = cookies_of(request)
        self.a.append((request.path, cookies, request.headers.get("User-Agent", "")))
        who = account(cookies)
        if who == "carol":
            return web.Response(text=BLOCKED, content_type="text/html")
        if who == "dave":
            return web.Response(status=403, text="no")
        if request.path == "/":
            return html(*(f"/p{i}" for i in range(self.pages)), f"{self.b_base}/b")
        return html()

    async def host_b(self, request: web.Request) -> web.Response:
        self.b.append(request.headers.get("Cookie"))
        return html()


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    s = await Site(10).start()
    try:
        yield s
    finally:
        await s.stop()


async def put_accounts(db: asyncpg.Connection, pool: str, host: str) -> None:
    for name, cookies in ACCOUNTS.items():
        assert await sessions.put(db, pool, name, cookies=cookies, host=host) == "new"


async def test_each_request_carries_one_account_and_a_blocked_one_is_benched(
        settings: Settings, site: Site, db: asyncpg.Connection) -> None:
    await put_accounts(db, "accounts", site.base)
    stack = await Stack(settings.model_copy(update={"user_agents": UAS, "retries": 4})).start()
    try:
        job = await stack.post_spec({"urls": [site.base + "/"], "sessions": {
           "pool": "accounts", "blockPatterns": ["unusual traffic"], "bench": 30}})
        st = await stack.wait_complete(job)
        assert st["pages"]["failed"] == 0 and st["pages"]["processed"] == 12  # /, p0-p9, /b
        assert all(c is not None for _, c, _ in site.a), "a request to A without a session"
        used = [(path, account(c), ua) for path, c, ua in site.a]
        served = [(path, who) for path, who, _ in used if who in ("alice", "bob")]
        assert {who for _, who in served} == {"alice", "bob"}  # 2 accounts did the work
        assert sorted(p for p, _ in served) == sorted(["/", *(f"/p{i}" for i in range(10))])
        for blocked in ("carol", "dave"):  # blocked once, then benched
            assert sum(1 for _, who, _ in used if who == blocked) == 1
        for name in ACCOUNTS:  # the pool rotates per session: each keeps one User-Agent
            uas = {ua for _, who, ua in used if who == name}
            assert len(uas) <= 1 and uas <= set(UAS)
        assert len({ua for _, _, ua in used}) >= 2
        assert site.b == [None], "the other host saw a cookie"
        infos = {i.name: i for i in await sessions.listing(db, "accounts")}
        assert infos["carol"].benches == 1 and "unusual traffic" in (
            infos["carol"].bench_reason or "")
        assert (infos["dave"].benches, infos["dave"].bench_reason) == (1, "HTTP 403")
        assert infos["alice"].benches == infos["bob"].benches == 0
        assert all(i.in_flight == 0 for i in infos.values())
        assert await stack.result(job) == {site.base + "/": sorted(
            [*(f"{site.base}/p{i}" for i in range(10)), site.b_base + "/b"])}
    finally:
        await stack.stop()


async def test_private_answers_and_an_empty_pool(settings: Settings, db: asyncpg.Connection) -> None:
    seen: list[tuple[str, str | None]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Cookie")))
        return html("/x", "/y") if request.path == "/" else html()

    runner, base = await serve(handle, "127.0.0.1")
    await sessions.put(db, "one", "dave", cookies={"sid": "d-1"}, host=base)
    stack = await Stack(settings).start()
    try:
        logged_in = await stack.post_spec({"urls": [base + "/"], "sessions": {"pool": "one"}})
        await stack.wait_complete(logged_in)
        assert sorted(seen) == [("/", "sid=d-1"), ("/x", "sid=d-1"), ("/y", "sid=d-1")]
        # Not answered from the logged-in pages (private), and no cookie of theirs.
        plain = await stack.post_job([base + "/"])
        st = await stack.wait_complete(plain)
        assert sorted(seen[3:]) == [("/", None), ("/x", None), ("/y", None)]
        assert st["pages"]["failed"] == 0
        # An empty pool crawls without cookies.
        empty = await stack.post_spec({"urls": [base + "/"], "forceCrawl": True,
                                       "sessions": {"pool": "nobody"}})
        st = await stack.wait_complete(empty)
        assert sorted(seen[6:]) == [("/", None), ("/x", None), ("/y", None)]
        assert st["pages"]["failed"] == 0
        assert await stack.result(empty) == await stack.result(logged_in)
        # Headers in a job's fingerprint make its answers private too.
        headed = await stack.post_spec({"urls": [base + "/"], "fingerprint": {
           "includeHeaders": ["accept-language"]}})
        await stack.wait_complete(headed)
        assert len(seen) == 12
        again = await stack.post_job([base + "/"])
        await stack.wait_complete(again)
        assert sorted(seen[12:]) == [("/", None), ("/x", None), ("/y", None)]
    finally:
        await stack.stop()
        await runner.cleanup()


async def test_max_uses_then_a_new_version(settings: Settings, db: asyncpg.Connection,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions, "SPENT_WAIT", timedelta(seconds=3))
    seen: list[str | None] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        return html(*(f"/p{i}" for i in range(5))) if request.path == "/" else html()

    runner, base = await serve(handle, "127.0.0.1")
    await sessions.put(db, "capped", "erin", cookies={"sid": "e-1"}, host=base, max_uses=3)
    stack = await Stack(settings).start()
    try:
        job = await stack.post_spec({"urls": [base + "/"], "sessions": {"pool": "capped"}})
        deadline = time.monotonic() + 30
        while True:  # 3 requests, and the rest deferred past a busy session's short wait
            waiting = await db.fetchval("""
                SELECT count(*) FILTER (WHERE due > now() + interval '1 second'
                                          AND published_on IS NULL) = count(*)
                       AND count(*) > 0
                FROM job_pending WHERE job_id = $1""", job)
            if len(seen) == 3 and waiting:
                break
            assert time.monotonic() < deadline, f"not waiting: {seen}"
            await asyncio.sleep(0.05)
        assert seen == ["sid=e-1"] * 3
        assert await db.fetchval("SELECT count(*) FROM job_pending WHERE job_id = $1", job) == 3
        assert await sessions.put(db, "capped", "erin", cookies={"sid": "e-2"}, host=base,
                                  max_uses=3) == "updated"
        st = await stack.wait_complete(job)
        assert seen[3:] == ["sid=e-2"] * 3 and st["pages"]["failed"] == 0
    finally:
        await stack.stop()
        await runner.cleanup()


class LoginSite:
    """A login form (``/login``: a session cookie and a CSRF token; ``POST /session``: the
    user's cookie, then a redirect home) and pages that record their Cookie header."""

    def __init__(self) -> None:
        self.logins = 0
        self.seen: list[dict[str, str] | None] = []
        self.base = ""
        self.runner: web.AppRunner | None = None

    async def start(self) -> LoginSite:
        app = web.Application()
        app.router.add_get("/login", self.form)
        app.router.add_post("/session", self.session)
        app.router.add_get("/{tail:.*}", self.page)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = free_port("127.0.0.1")
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.base = f"http://127.0.0.1:{port}"
        return self

    async def form(self, request: web.Request) -> web.Response:
        n = self.logins + 1
        resp = web.Response(text=f'<form action="/session" method="post">'
                            f'<input type="hidden" name="authenticity_token" value="tok-{n}">'
                            f'<input name="login"><input type="password" name="password">'
                            f'</form>', content_type="text/html")
        resp.set_cookie("_sess", f"s-{n}", path="/")
        return resp

    async def session(self, request: web.Request) -> web.Response:
        form = await request.post()
        n = self.logins + 1
        if (form.get("authenticity_token") != f"tok-{n}"
                or request.cookies.get("_sess") != f"s-{n}"
                or (form.get("login"), form.get("password")) != ("frank", "pa55")):
            return web.Response(status=422, text="refused")
        self.logins = n
        resp = web.HTTPFound("/")
        resp.set_cookie("user_session", f"frank-{n}", path="/")
        raise resp

    async def page(self, request: web.Request) -> web.Response:
        self.seen.append(cookies_of(request))
        return html("/a", "/b") if request.path == "/" else html()


async def test_login_task_refreshes_a_session(settings: Settings, db: asyncpg.Connection,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.e2e.test_tasks import post_task, wait_task

    async def login(**args: str) -> dict[str, Any]:
        status, body = await post_task(stack, {"task": "login", "args": args})
        assert status == 200, body
        return await wait_task(stack, int(body["taskId"]))

    monkeypatch.setenv("HV_TEST_LOGIN_USER", "frank")
    monkeypatch.setenv("HV_TEST_LOGIN_PASS", "pa55")
    monkeypatch.setenv("HV_TEST_LOGIN_BAD", "wrong")
    site = await LoginSite().start()
    stack = await Stack(settings.model_copy(update={
        "tasks": {"login": "worker.logins:form_login"}})).start()
    args = {"pool": "web", "name": "frank", "loginUrl": site.base + "/login",
            "usernameEnv": "HV_TEST_LOGIN_USER", "passwordEnv": "HV_TEST_LOGIN_PASS",
            "cookie": "user_session"}
    try:
        first = await login(**args)
        assert first["state"] == "succeeded" and first["result"] == {
            "pool": "web", "name": "frank", "result": "new"}, first
        again = await login(**args)
        assert again["result"]["result"] == "updated", again
        refused = await login(**{**args, "passwordEnv": "HV_TEST_LOGIN_BAD"})
        assert refused["state"] == "failed" and "pa55" not in json.dumps(refused)
        assert "wrong" not in json.dumps(refused)
        [info] = await sessions.listing(db, "web")
        assert (info.host, info.cookie_names, info.version) == (
            site.base, ("_sess", "user_session"), 2)
        before = len(site.seen)  # the logins' own redirects home
        job = await stack.post_spec({"urls": [site.base + "/"], "sessions": {"pool": "web"}})
        st = await stack.wait_complete(job)
        assert st["pages"]["failed"] == 0
        assert site.seen[before:] == [{"_sess": "s-2", "user_session": "frank-2"}] * 3
    finally:
        await stack.stop()
        assert site.runner
        await site.runner.cleanup()


async def test_the_session_api(settings: Settings) -> None:
    """PUT /sessions/{pool}/{name} writes (new, then updated; bad bodies are 400s), GET
    /sessions/{pool} lists names without values, DELETE removes (204, then 404); the answers
    match openapi.json."""
    from tests.e2e.test_openapi_responses import check
    stack = await Stack(settings).start()
    assert stack.http

    async def put(path: str, body: Any) -> tuple[int, Any]:
        assert stack.http
        data = body if isinstance(body, str) else json.dumps(body)
        async with stack.http.put(stack.base + path, data=data) as r:
            return r.status, await r.json(content_type=None)

    try:
        body = {"cookies": {"sid": "s3cret", "u": "gina"}, "headers": {"X-Api": "k3y"},
                "userAgent": "GinaAgent/1.0", "host": "HTTP://127.0.0.1:80", "maxUses": 9}
        status, answer = await put("/sessions/shop/gina", body)
        check("/sessions/{pool}/{name}", "put", status, answer)
        assert (status, answer) == (200, {"pool": "shop", "name": "gina", "result": "new"})
        status, answer = await put("/sessions/shop/gina", {"cookies": {"sid": "n3w"}})
        assert (status, answer["result"]) == (200, "updated")
        for path, bad in (("/sessions/shop/gina", {"cookies": {"sid": "a;b"}}),
                          ("/sessions/shop/gina", {"cookies": {"a b": "x"}}),
                          ("/sessions/shop/gina", {"headers": {"X": "a\r\nb"}}),
                          ("/sessions/shop/gina", {"host": "ftp://x"}),
                          ("/sessions/shop/gina", {"host": "http://"}),
                          ("/sessions/shop/gina", {"maxUses": 0}),
                          ("/sessions/shop/gina", {"cookie": {}}),
                          ("/sessions/shop/gina", "[]"),
                          ("/sessions/shop/gina", "{"),
                          ("/sessions/-shop/gina", {"cookies": {}})):
            status, answer = await put(path, bad)
            check("/sessions/{pool}/{name}", "put", status, answer)
            assert status == 400, (bad, answer)
        status, listed, _ = await stack.request("GET", "/sessions/shop")
        check("/sessions/{pool}", "get", status, listed)
        assert status == 200 and [s["name"] for s in listed["sessions"]] == ["gina"]
        [gina] = listed["sessions"]
        assert (gina["cookies"], gina["headers"], gina["host"], gina["version"]) == (
            ["sid"], [], None, 2)
        await put("/sessions/shop/hank", body)
        status, listed, _ = await stack.request("GET", "/sessions/shop")
        hank = listed["sessions"][1]
        assert (hank["host"], hank["userAgent"], hank["maxUses"]) == (
            "http://127.0.0.1", "GinaAgent/1.0", 9)  # the default port dropped
        assert "s3cret" not in json.dumps(listed) and "k3y" not in json.dumps(listed)
        status, _, _ = await stack.request("DELETE", "/sessions/shop/gina")
        assert status == 204
        status, answer, _ = await stack.request("DELETE", "/sessions/shop/gina")
        check("/sessions/{pool}/{name}", "delete", status, answer)
        assert status == 404
        status, listed, _ = await stack.request("GET", "/sessions/nobody")
        assert (status, listed) == (200, {"pool": "nobody", "sessions": []})
    finally:
        await stack.stop()
