"""The HTTP API's contract: every bad input gets its status, code and message, never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared.config import Settings
from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture
async def web(settings: Settings) -> AsyncIterator[Stack]:
    st = await Stack(settings.model_copy(update={"max_request_bytes": 4096,
                                                  "max_job_urls": 5})).start(foremen=0, workers=0)
    yield st
    await st.stop()


BAD_POSTS = [
    ("", {}, 400, "BadRequest", "No URLs provided"),
    ("\n  \r\n\t\n", {}, 400, "BadRequest", "No URLs provided"),
    ("http://ok.example/\nftp://x.example/\n", {}, 400, "BadRequest", "Invalid URL: ftp://x.example/"),
    ("mailto:a@b.example", {}, 400, "BadRequest", "Invalid URL: mailto:a@b.example"),
    ("/relative/path", {}, 400, "BadRequest", "Invalid URL: /relative/path"),
    ("http://", {}, 400, "BadRequest", "Invalid URL: http://"),
    ("http://a b.example/", {}, 400, "BadRequest", "Invalid URL: http://a b.example/"),
    ("http://x.example/", {"depth": "11"}, 400, "BadRequest", "Invalid depth: 11 (allowed 0 to 10)"),
    ("http://x.example/", {"depth": "two"}, 400, "BadRequest", "Invalid depth: two"),
    ("http://x.example/", {"forceCrawl": "maybe"}, 400, "BadRequest",
     "Invalid forceCrawl: maybe (use 1/true or 0/false)"),
    ("\n".join(f"http://x{i}.example/" for i in range(6)), {}, 413, "PayloadTooLarge",
     "Too many URLs: 6 (at most 5)"),
    ("http://x.example/" + "a" * 5000, {}, 413, "PayloadTooLarge",
     "Request body larger than 4096 bytes"),
]


@pytest.mark.parametrize(("body", "params", "status", "code", "message"), BAD_POSTS)
async def test_bad_job_requests(web: Stack, db: asyncpg.Connection, body: str, params: dict[str, str],
                                status: int, code: str, message: str) -> None:
    got, payload, headers = await web.request("POST", "/", body, **params)
    assert (got, payload) == (status, {"code": code, "message": message})
    assert headers["Content-Type"] == "application/json"
    assert await db.fetchval("SELECT count(*) FROM job") == 0, "a rejected request created a job"


async def test_job_body_rules(web: Stack, db: asyncpg.Connection) -> None:
    body = ("example.com/a\r\n\r\n   \n  HTTP://Example.COM:80/a#frag  \nhttps://example.com:443/b\n"
            "localhost:8080/x\n")
    status, payload, _ = await web.request("POST", "/", body)
    assert status == 200 and set(payload) == {"jobId"}
    urls = [r["url"] for r in await db.fetch(
        "SELECT u.url FROM job_url ju JOIN url u ON u.id = ju.url_id WHERE ju.job_id = $1 "
        "ORDER BY u.url", payload["jobId"])]
    assert urls == ["http://example.com/a", "http://localhost:8080/x", "https://example.com/b"]


@pytest.mark.parametrize(("query", "force"), [({"forceCrawl": ""}, True), ({"forceCrawl": "1"}, True),
                                               ({"forceCrawl": "true"}, True),
                                               ({"forceCrawl": "0"}, False),
                                               ({"forceCrawl": "false"}, False), ({}, False)])
async def test_force_crawl_values(web: Stack, db: asyncpg.Connection, query: dict[str, str],
                                  force: bool) -> None:
    job = await web.post_job(["http://x.example/"], **query)
    assert await db.fetchval("SELECT force_crawl FROM job WHERE id = $1", job) is force


async def test_depth_is_stored_per_job(web: Stack, db: asyncpg.Connection) -> None:
    default = await web.post_job(["http://x.example/"])
    deep = await web.post_job(["http://x.example/"], depth="7")
    levels = dict(await db.fetch("SELECT id, max_level FROM job"))
    assert levels == {default: 2, deep: 7}


BAD_GETS = [
    ("GET", "/status/abc", 400, "BadRequest", "Invalid jobId: abc"),
    ("GET", "/status/1.5", 400, "BadRequest", "Invalid jobId: 1.5"),
    ("GET", "/status/99999999999999999999", 400, "BadRequest", "Invalid jobId: 99999999999999999999"),
    ("GET", "/result/x1", 400, "BadRequest", "Invalid jobId: x1"),
    ("GET", "/status/424242", 404, "NotFound", "Failed to get job 424242 status"),
    ("GET", "/status/-3", 404, "NotFound", "Failed to get job -3 status"),
    ("GET", "/result/424242", 404, "NotFound", "Failed to get job 424242 result"),
    ("GET", "/nowhere", 404, "NotFound", "No such path: /nowhere"),
    ("GET", "/status/", 404, "NotFound", "No such path: /status/"),
]


@pytest.mark.parametrize(("method", "path", "status", "code", "message"), BAD_GETS)
async def test_bad_reads(web: Stack, method: str, path: str, status: int, code: str,
                         message: str) -> None:
    got, payload, _ = await web.request(method, path)
    assert (got, payload) == (status, {"code": code, "message": message})


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/", "POST"), ("PUT", "/", "POST"), ("DELETE", "/status/1", "GET"),
    ("POST", "/result/1", "GET")])
async def test_wrong_method(web: Stack, method: str, path: str, allow: str) -> None:
    got, payload, headers = await web.request(method, path)
    assert got == 405 and headers["Allow"] == allow
    assert payload["code"] == "MethodNotAllowed"


async def test_status_and_result_of_a_new_job(web: Stack) -> None:
    job = await web.post_job(["http://x.example/"])
    st = await web.status(job)
    assert st["completed"] == 0 and st["pending"] == 1
    assert st["urls"] == {"http://x.example/": False}
    assert st["pages"] == {"queued": 1, "processed": 0, "fetched": 0, "cached": 0, "failed": 0,
                           "blocked": 0}
    assert await web.result(job) == {}
    _, _, headers = await web.request("GET", f"/result/{job}")
    assert headers["Content-Type"] == "application/json"


async def test_root_path(settings: Settings) -> None:
    st = await Stack(settings.model_copy(update={"root_path": "/goapps/harvester"})).start(0, 0)
    try:
        status, payload, _ = await st.request("POST", "/goapps/harvester", "http://x.example/")
        assert status == 200
        status, _, _ = await st.request("GET", f"/goapps/harvester/status/{payload['jobId']}")
        assert status == 200
        status, payload, _ = await st.request("POST", "/", "http://x.example/")
        assert (status, payload["code"]) == (404, "NotFound")
    finally:
        await st.stop()
