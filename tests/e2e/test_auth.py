"""Bearer-token authentication on a whole web server (issue 17): every route but ``/healthz`` and
the dashboard's shell answers 401 without a valid token; a token sees and controls only its own
jobs and tasks (another's: the route's 404, word for word as a missing one); an admin token sees
all of them and alone may use ``/workers``, ``/sessions/*`` and ``/metrics`` (403); no token
ever shows in an answer or in the logs.

A stack without foremen or workers: jobs stay queued, which is all these checks need."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from shared.config import Settings, parse_auth_tokens
from tests.e2e.stack import Stack
from web_server.app import create_app

pytestmark = pytest.mark.e2e

ALICE = "alice-secret-token-0123456789"
BOB = "bob-secret-token-9876543210"
ROOT = "root-secret-token-abcdefghij"
TOKENS = (ALICE, BOB, ROOT)
CHALLENGE = 'Bearer realm="harvester"'


@pytest_asyncio.fixture
async def api(settings: Settings, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Stack]:
    caplog.set_level(logging.DEBUG)
    s = settings.model_copy(update={
        "auth_tokens": parse_auth_tokens(f"alice:{ALICE},bob:{BOB},root:{ROOT}:admin"),
        "tasks": {"add": "tests.tasks_fixture:add"}})
    st = await Stack(s, token=ALICE).start(foremen=0, workers=0)
    yield st
    await st.stop()
    for token in TOKENS:  # never logged, at any level, by any tier
        assert token not in caplog.text


async def call(st: Stack, method: str, path: str, token: str | None = None,
               data: str | None = None, headers: dict[str, str] | None = None
               ) -> tuple[int, Any, dict[str, str]]:
    """One request with ``token`` (or none) on a fresh session; the body checked for tokens."""
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as http, \
            http.request(method, st.base + path, data=data, headers=hdrs) as r:
        raw = await r.read()
        for t in TOKENS:
            assert t.encode() not in raw and all(t not in v for v in r.headers.values())
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw
        return r.status, body, dict(r.headers)


def operations(settings: Settings) -> list[tuple[str, str]]:
    """Every operation of the router (path parameters filled in), but the dashboard's."""
    out = []
    for route in create_app(settings).router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path is None or "/ui" in path or route.method == "HEAD":
            continue
        out.append((route.method, path.format(job_id=1, task_id=1, pool="p", name="n")))
    return out


async def test_every_route_but_healthz_and_the_dashboard_needs_a_token(api: Stack) -> None:
    ops = operations(api.settings)
    assert len(ops) > 20 and ("GET", "/healthz") in ops
    for method, path in ops:
        status, body, headers = await call(api, method, path)
        if path == "/healthz":
            assert status == 200
            continue
        assert status == 401, (method, path, status, body)
        assert body == {"code": "Unauthorized", "message": "A valid bearer token is required"}
        assert headers["WWW-Authenticate"] == CHALLENGE
        status, _, headers = await call(api, method, path, token="a-wrong-token-0123456789")
        assert status == 401, (method, path)
        assert headers["WWW-Authenticate"] == CHALLENGE + ', error="invalid_token"'
    for path in ("/ui", "/ui/", "/ui/app.js"):
        assert (await call(api, "GET", path))[0] == 200, path
    assert (await call(api, "GET", "/openapi.json", ALICE))[0] == 200


async def test_a_token_sees_and_controls_only_its_own_jobs(api: Stack) -> None:
    mine = await api.post_job(["http://a.example/"])          # alice's (the stack's token)
    _, body, _ = await call(api, "POST", "/", BOB, "http://b.example/")
    theirs = body["jobId"]
    missing = theirs + 1000

    _, listed, _ = await call(api, "GET", "/jobs", ALICE)
    assert [j["id"] for j in listed["jobs"]] == [mine]
    _, listed, _ = await call(api, "GET", "/jobs", BOB)
    assert [j["id"] for j in listed["jobs"]] == [theirs]
    _, listed, _ = await call(api, "GET", "/jobs", ROOT)
    assert [j["id"] for j in listed["jobs"]] == [theirs, mine]

    for method, path, data in (("GET", "/status/{}", None), ("GET", "/status/{}/events", None),
                               ("GET", "/result/{}", None), ("GET", "/result/{}?status=failed", None),
                               ("GET", "/items/{}", None), ("GET", "/bodies/{}?url=http://b.example/", None),
                               ("GET", "/index/{}", None), ("POST", "/jobs/{}/pause", None),
                               ("POST", "/jobs/{}/resume", None),
                               ("PATCH", "/jobs/{}", '{"deny": ["x"]}'),
                               ("DELETE", "/jobs/{}", None),
                               ("DELETE", "/jobs/{}?purge=true", None)):
        other = await call(api, method, path.format(theirs), ALICE, data)
        absent = await call(api, method, path.format(missing), ALICE, data)
        assert other[0] == 404, (method, path, other)
        assert other[1] == json.loads(json.dumps(absent[1]).replace(str(missing), str(theirs)))
    _, st, _ = await call(api, "GET", f"/status/{theirs}", ROOT)
    assert st["state"] == "running"  # nothing alice sent changed bob's job
    _, st, _ = await call(api, "GET", f"/status/{theirs}", BOB)
    assert st["state"] == "running"
    assert (await call(api, "POST", f"/jobs/{mine}/pause", ALICE))[1]["state"] == "paused"
    assert (await call(api, "POST", f"/jobs/{theirs}/pause", ROOT))[1]["state"] == "paused"


async def test_tasks_belong_to_their_token(api: Stack) -> None:
    status, body, _ = await call(api, "POST", "/tasks", BOB, '{"task": "add", "args": {"a": 1}}')
    assert status == 200
    task = body["taskId"]
    assert (await call(api, "GET", f"/tasks/{task}", BOB))[0] == 200
    assert (await call(api, "GET", f"/tasks/{task}", ROOT))[0] == 200
    status, body, _ = await call(api, "GET", f"/tasks/{task}", ALICE)
    assert (status, body) == (404, {"code": "NotFound", "message": f"No task {task}"})
    # An idempotency key is the token's own: another token's same key is another task.
    add = '{"task": "add", "args": {"a": 2}, "key": "order-1"}'
    status, alices, _ = await call(api, "POST", "/tasks", ALICE, add)
    assert status == 200
    status, bobs, _ = await call(api, "POST", "/tasks", BOB, add)
    assert status == 200 and bobs != alices
    assert (await call(api, "GET", f"/tasks/{bobs['taskId']}", BOB))[0] == 200
    assert (await call(api, "POST", "/tasks", BOB, add))[1] == bobs
    assert (await call(api, "POST", "/tasks", ALICE, add))[1] == alices


async def test_admin_routes_are_403_for_other_tokens(api: Stack) -> None:
    for method, path in (("GET", "/workers"), ("GET", "/metrics"), ("GET", "/sessions/p"),
                         ("PUT", "/sessions/p/n"), ("DELETE", "/sessions/p/n")):
        status, body, _ = await call(api, method, path, ALICE, "{}")
        assert (status, body) == (403, {"code": "Forbidden",
                                        "message": "An admin token is required"}), path
    assert (await call(api, "GET", "/workers", ROOT))[0] == 200
    assert (await call(api, "GET", "/metrics", ROOT))[0] == 200
    assert (await call(api, "PUT", "/sessions/p/n", ROOT, "{}"))[0] == 200


async def test_an_oversized_authorization_header_is_not_echoed(api: Stack) -> None:
    secret = "s3cr3t" + ALICE * 300  # about 9 KB: over aiohttp's 8190-byte field limit
    status, body, _ = await call(api, "GET", "/jobs", headers={"Authorization": f"Bearer {secret}"})
    assert status in (400, 431) and body["code"]
    assert "s3cr3t" not in json.dumps(body) and ALICE not in json.dumps(body)
