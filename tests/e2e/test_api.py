"""The HTTP API's contract: every bad input gets its status, code and message, never a 500."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp import web as aioweb

from harvester_ops.embedded import free_port
from shared.config import Settings
from tests.e2e.site import TestSite
from tests.e2e.stack import Stack
from web_server.app import Runner, create_app

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
    # maxURLLength (2048) bounds job URLs too: the line is named, not echoed.
    ("http://x.example/\n\nhttp://x.example/" + "a" * 2100, {}, 400, "BadRequest",
     "Invalid URL: line 3 is 2117 characters long (at most 2048: maxURLLength)"),
    # Only ASCII decimal digits, in range: no Unicode digits, signs, underscores or spaces.
    ("http://x.example/", {"depth": "1_0"}, 400, "BadRequest", "Invalid depth: 1_0"),
    ("http://x.example/", {"depth": "+3"}, 400, "BadRequest", "Invalid depth: +3"),
    ("http://x.example/", {"depth": "-1"}, 400, "BadRequest", "Invalid depth: -1"),
    ("http://x.example/", {"depth": " 3"}, 400, "BadRequest", "Invalid depth:  3"),
    ("http://x.example/", {"depth": "\u0663"}, 400, "BadRequest", "Invalid depth: \u0663"),
    ("http://x.example/", {"depth": "99999999999999999999"}, 400, "BadRequest",
     "Invalid depth: 99999999999999999999 (allowed 0 to 10)"),
    ("http://x.example/", {"maxPages": "\u00b2"}, 400, "BadRequest", "Invalid maxPages: \u00b2"),
    ("http://x.example/", {"maxPages": "0"}, 400, "BadRequest",
     "Invalid maxPages: 0 (allowed 1 to 2147483647)"),
    ("http://x.example/", {"maxPages": "2147483648"}, 400, "BadRequest",
     "Invalid maxPages: 2147483648 (allowed 1 to 2147483647)"),
    ("http://x.example/", {"maxPages": "1_000"}, 400, "BadRequest", "Invalid maxPages: 1_000"),
    ("http://x.example/", {"maxPages": "+5"}, 400, "BadRequest", "Invalid maxPages: +5"),
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
    ("GET", "/status/\u0661\u0662", 400, "BadRequest", "Invalid jobId: \u0661\u0662"),
    ("GET", "/status/\u00b2", 400, "BadRequest", "Invalid jobId: \u00b2"),
    ("GET", "/status/1_2", 400, "BadRequest", "Invalid jobId: 1_2"),
    ("GET", "/status/+12", 400, "BadRequest", "Invalid jobId: +12"),
    ("GET", "/result/%2012", 400, "BadRequest", "Invalid jobId:  12"),
    ("GET", "/status/-9223372036854775808", 404, "NotFound",
     "Failed to get job -9223372036854775808 status"),
    ("GET", "/status/9223372036854775807", 404, "NotFound",
     "Failed to get job 9223372036854775807 status"),
    ("GET", "/status/-9223372036854775809", 400, "BadRequest",
     "Invalid jobId: -9223372036854775809"),
    ("GET", "/status/9223372036854775808", 400, "BadRequest", "Invalid jobId: 9223372036854775808"),
    ("GET", "/items/x", 400, "BadRequest", "Invalid jobId: x"),
    ("GET", "/items/424242", 404, "NotFound", "Failed to get job 424242 items"),
    ("GET", "/items/1?format=xml", 400, "BadRequest", "Invalid format: xml (use json, jsonl, csv)"),
    ("GET", "/items/1?kind=page", 400, "BadRequest",
     "Invalid kind: page (use item, id, link, body)"),
    ("GET", "/result/1?format=tar", 400, "BadRequest",
     "Invalid format: tar (use json, jsonl, csv)"),
    ("GET", "/bodies/1", 400, "BadRequest", "Invalid url: give ?url=<page URL> or ?format=tar"),
    ("GET", "/bodies/1?url=ftp%3A%2F%2F%5B", 400, "BadRequest", "Invalid url: ftp://["),
    ("GET", "/bodies/424242?url=http://x.example/", 404, "NotFound",
     "Failed to get job 424242 bodies"),
    ("GET", "/bodies/424242?format=tar", 404, "NotFound", "Failed to get job 424242 bodies"),
    ("GET", "/bodies/1?format=zip", 400, "BadRequest", "Invalid format: zip (use tar)"),
    ("GET", "/index/424242", 404, "NotFound", "Failed to get job 424242 index"),
    ("GET", "/index/y", 400, "BadRequest", "Invalid jobId: y"),
]


@pytest.mark.parametrize(("method", "path", "status", "code", "message"), BAD_GETS)
async def test_bad_reads(web: Stack, method: str, path: str, status: int, code: str,
                         message: str) -> None:
    got, payload, _ = await web.request(method, path)
    assert (got, payload) == (status, {"code": code, "message": message})


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/", "POST"), ("PUT", "/", "POST"), ("DELETE", "/status/1", "GET"),
    ("POST", "/result/1", "GET"), ("GET", "/idsets", "POST"), ("POST", "/items/1", "GET")])
async def test_wrong_method(web: Stack, method: str, path: str, allow: str) -> None:
    got, payload, headers = await web.request(method, path)
    assert got == 405 and headers["Allow"] == allow
    assert payload["code"] == "MethodNotAllowed"


async def test_max_pages_at_the_column_limit(web: Stack, db: asyncpg.Connection) -> None:
    job = await web.post_job(["http://x.example/"], maxPages="2147483647")
    assert await db.fetchval("SELECT max_pages FROM job WHERE id = $1", job) == 2**31 - 1


async def test_errors_aiohttp_raises_itself_are_json(web: Stack,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Oversized headers, request lines and malformed requests are answered by aiohttp before
    any handler runs: still JSON, and logged without a traceback."""
    port = int(web.base.rsplit(":", 1)[1])
    requests = [
        b"GET /status/1 HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /status/1 HTTP/1.1\r\nHost: t\r\n" + b"X-A: b\r\n" * 200 + b"\r\n",
        b"GET /status/1 HTTP/1.1\r\nBad Header\r\n\r\n",
    ]
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    for raw in requests:
        status, headers, body = await raw_request(port, raw)
        assert 400 <= status < 500, (status, body)
        assert headers["content-type"] == "application/json"
        payload = json.loads(body)
        assert set(payload) == {"code", "message"} and payload["code"], payload
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def raw_request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; the status, headers and body of the answer (the server closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


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


async def test_a_bug_is_a_json_500(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """An exception no handler expected: logged with its traceback, answered as JSON."""
    async def boom(request: aioweb.Request) -> aioweb.Response:
        raise ZeroDivisionError("a bug")

    app = create_app(settings)
    app.router.add_get("/boom", boom)
    runner = Runner(app, access_log=None)
    await runner.setup()
    try:
        port = free_port()
        await aioweb.TCPSite(runner, "127.0.0.1", port).start()
        status, headers, body = await raw_request(
            port, b"GET /boom HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    finally:
        await runner.cleanup()
    assert (status, headers["content-type"]) == (500, "application/json")
    assert json.loads(body) == {"code": "InternalServerError", "message": "Internal server error"}
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)


async def test_a_burst_of_large_posts_on_a_small_pool_all_succeed(
        settings: Settings, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """12 concurrent POSTs of 10,000 URLs on a pool of 2 connections, reads waiting at most 1 s
    for one: every job is created (200, each once), none is answered 503."""
    monkeypatch.setattr("web_server.app.POOL_SIZE", 2)
    monkeypatch.setattr("web_server.deps.ACQUIRE_TIMEOUT", 1.0)
    st = await Stack(settings.model_copy(update={"max_job_urls": 10_000})).start(foremen=0,
                                                                                 workers=0)
    try:
        bodies = ["\n".join(f"http://burst{b}.example/{i}" for i in range(10_000))
                  for b in range(12)]
        answers = await asyncio.gather(*(st.request("POST", "/", body) for body in bodies))
    finally:
        await st.stop()
    assert [status for status, _, _ in answers] == [200] * 12, [b for _, b, _ in answers]
    jobs = [int(body["jobId"]) for _, body, _ in answers]
    counts = await db.fetch("SELECT job_id, count(*) AS n FROM job_url WHERE job_id = ANY($1::bigint[])"
                            " GROUP BY job_id", jobs)
    assert sorted(r["n"] for r in counts) == [10_000] * 12


SPEC_COLUMNS = "max_level, force_crawl, scope, allow, deny, max_pages, sitemaps, visits, spec"


async def test_a_json_job_is_stored_and_shown_by_status(web: Stack, db: asyncpg.Connection) -> None:
    spec = {"urls": ["https://b.example/docs", "a.example", "http://A.example:80/#x"],
            "depth": 3, "forceCrawl": True, "sitemaps": True,
            "scope": {"scope": "host", "allow": ["/docs/", "^https?:"], "deny": ["\\.pdf$"],
                      "maxPages": 9}}
    status, body = await web.post_json(spec, content_type="application/json; charset=utf-8")
    assert status == 200, body
    row = await db.fetchrow(f"SELECT {SPEC_COLUMNS} FROM job WHERE id = $1", body["jobId"])
    assert dict(row) | {"spec": json.loads(row["spec"])} == {
        "max_level": 3, "force_crawl": True, "scope": "host", "allow": ["/docs/", "^https?:"],
        "deny": ["\\.pdf$"], "max_pages": 9, "sitemaps": True, "visits": 2,
        "spec": {k: v for k, v in spec.items() if k != "urls"}}
    st = await web.status(body["jobId"])
    assert list(st)[-7:] == ["spec", "fetcher", "state", "rates", "eta", "hosts", "warnings"]  # no worker runs here
    assert st["spec"] == spec | {"urls": ["http://a.example/", "https://b.example/docs"]}
    assert (st["maxLevel"], st["forceCrawl"]) == (3, True)
    # What /status shows posts back as the same job.
    status, again = await web.post_json(st["spec"])
    assert status == 200, again
    assert (await web.status(again["jobId"]))["spec"] == st["spec"]


async def test_a_newline_job_shows_its_spec(web: Stack) -> None:
    job = await web.post_job(["http://x.example/"], depth="1", scope="domain", allow="x")
    assert (await web.status(job))["spec"] == {
        "urls": ["http://x.example/"], "depth": 1, "forceCrawl": False, "sitemaps": False,
        "scope": {"scope": "domain", "allow": ["x"], "deny": [], "maxPages": None}}


BAD_JSON = [
    ({"urls": ["http://a.example/"], "depth": 11}, "Invalid depth: 11 (allowed 0 to 10)"),
    ({"urls": ["http://a.example/"], "depth": "3"}, "Invalid depth: Input should be a valid integer"),
    ({"urls": ["http://a.example/"], "scope": {"maxPages": 0}},
     "Invalid scope.maxPages: Input should be greater than or equal to 1"),
    ({"urls": ["http://a.example/"], "scope": {"allow": ["("]}},
     "Invalid scope.allow[0]: ( (missing ), unterminated subpattern at position 0)"),
    ({"urls": ["http://a.example/", "mailto:a@b.example"]},
     "Invalid urls[1]: not an absolute http(s) URL: mailto:a@b.example"),
    ({"urls": []}, "Invalid urls: Tuple should have at least 1 item after validation, not 0"),
    ({"urls": ["http://a.example/", "http://a.example/" + "a" * 2100]},
     "Invalid urls[1]: 2117 characters long (at most 2048: maxURLLength)"),
    ({"urls": ["http://a.example/abc"], "traps": {"maxUrlLength": 19}},
     "Invalid urls[0]: 20 characters long (at most 19: traps.maxUrlLength)"),
    ({"urls": ["http://a.example/"], "tasks": "all"}, "Invalid tasks: Extra inputs are not permitted"),
    ({"urls": ["http://a.example/"], "task": "all"},
     "Invalid task.name: unknown task 'all' (allowed: none)"),
    ({"urls": ["http://a.example/"], "follow": "all"}, "Invalid follow: expected a JSON object"),
    ({"urls": ["http://a.example/"], "follow": {"linkRegex": "(a)(b)"}},
     ("Invalid follow.linkRegex: (a)(b) has 2 capture groups (at most 1: use (?:...) for the "
     "others)")),
    ({"urls": ["http://a.example/"], "save": [{"kind": "files", "pattern": "../{id}"}]},
     "Invalid save[0].pattern: ../{id} (a '..' segment)"),
    ({"urls": ["http://a.example/"], "forceCrawl": "yes"},
     "Invalid forceCrawl: Input should be a valid boolean"),
    ("http://a.example/", "Invalid body: expected a JSON object"),
]


@pytest.mark.parametrize(("data", "message"), BAD_JSON)
async def test_json_errors_are_400_naming_the_field(web: Stack, db: asyncpg.Connection,
                                                    data: object, message: str) -> None:
    assert await web.post_json(data) == (400, {"code": "BadRequest", "message": message})
    assert await db.fetchval("SELECT count(*) FROM job") == 0, "a rejected request created a job"


async def test_json_body_limits_and_bad_json(web: Stack, db: asyncpg.Connection) -> None:
    assert web.http
    async with web.http.post(web.base + "/", data='{"urls": ["http://a.example/"',
                             headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400
        assert (await r.json())["message"].startswith("Invalid JSON body: ")
    assert await db.fetchval("SELECT count(*) FROM job") == 0
    # The original ignored the type: a newline body sent as JSON is still a newline body,
    # with its query parameters.
    async with web.http.post(web.base + "/?depth=1", data="http://a.example/\nb.example\n",
                             headers={"Content-Type": "application/json"}) as r:
        assert r.status == 200, await r.text()
        job = (await r.json())["jobId"]
    assert await db.fetchval("SELECT max_level FROM job WHERE id = $1", job) == 1
    assert await db.fetchval("SELECT count(*) FROM job_url WHERE job_id = $1", job) == 2
    await db.execute("DELETE FROM job")
    too_many = {"urls": [f"http://x{i}.example/" for i in range(6)]}
    assert await web.post_json(too_many) == (
        413, {"code": "PayloadTooLarge", "message": "Too many URLs: 6 (at most 5)"})
    # Duplicates count once, as in the newline body.
    status, _ = await web.post_json({"urls": ["http://x.example/"] * 6})
    assert status == 200
    assert await db.fetchval("SELECT count(*) FROM job") == 1


async def test_json_and_query_together_is_400(web: Stack, db: asyncpg.Connection) -> None:
    assert await web.post_json({"urls": ["http://a.example/"]}, "/?depth=3&forceCrawl&depth=4") == (
        400, {"code": "BadRequest",
              "message": "Invalid query: depth, forceCrawl (put them in the JSON body)"})
    assert await db.fetchval("SELECT count(*) FROM job") == 0


async def test_newline_and_json_make_identical_jobs(stack: Stack, site: TestSite,
                                                    db: asyncpg.Connection) -> None:
    newline = await stack.post_job([site.a + "/"], depth="2", scope="host", deny="/c/",
                                   forceCrawl="1")
    by_newline = await stack.wait_complete(newline)
    status, body = await stack.post_json({"urls": [site.a + "/"], "depth": 2, "forceCrawl": True,
                                          "scope": {"scope": "host", "deny": ["/c/"]}})
    assert status == 200, body
    by_json = await stack.wait_complete(body["jobId"])
    rows = [dict(r) for r in await db.fetch(
        f"SELECT {SPEC_COLUMNS} FROM job WHERE id = ANY($1::bigint[]) ORDER BY id",
        [newline, body["jobId"]])]
    assert rows[0] == rows[1]
    timing = {"elapsed": "", "rates": None, "eta": None}  # how fast each ran, not what it is
    assert {**by_newline, **timing} == {**by_json, **timing}
    result = await stack.result(newline)
    assert result and await stack.result(body["jobId"]) == result


async def test_a_pattern_with_a_nul_is_a_400_in_both_bodies(web: Stack,
                                                            db: asyncpg.Connection) -> None:
    """It used to reach PostgreSQL, which stores no NUL in text or jsonb: a 500."""
    status, body = await web.post_json({"urls": ["http://a.example/"],
                                        "scope": {"allow": ["a\x00"]}})
    assert status == 400 and body["message"].startswith("Invalid scope.allow[0]"), body
    assert web.http
    async with web.http.post(web.base + "/?allow=a%00", data="http://a.example/\n") as r:
        assert r.status == 400, await r.text()
        assert (await r.json())["message"].startswith("Invalid allow pattern")
    assert await db.fetchval("SELECT count(*) FROM job") == 0


@pytest.fixture
async def kinds(settings: Settings) -> AsyncIterator[Stack]:
    """A web server that knows a second fetcher kind and an extractor (none of them runs)."""
    st = await Stack(settings.model_copy(update={
        "fetcher_kinds": ("http", "static"), "extractor_kinds": ("test-title",)})).start(
        foremen=0, workers=0)
    yield st
    await st.stop()


async def test_a_json_job_with_fetcher_and_extract_is_stored_and_shown(
        kinds: Stack, db: asyncpg.Connection) -> None:
    from shared.jobspec import ruleset_of
    extract = [{"kind": "test-title", "tag": "h1", "options": {"b": 1, "a": [True, None]}}]
    spec = {"urls": ["http://a.example/"], "depth": 1, "forceCrawl": False, "sitemaps": False,
            "scope": {"scope": "any", "allow": [], "deny": [], "maxPages": None},
            "fetcher": "static", "extract": extract}
    status, body = await kinds.post_json(spec)
    assert status == 200, body
    row = await db.fetchrow("SELECT spec::text AS spec, fetcher, ruleset FROM job WHERE id = $1",
                            body["jobId"])
    stored = json.loads(row["spec"])
    assert (stored["fetcher"], stored["extract"], row["fetcher"]) == ("static", extract, "static")
    assert row["ruleset"] == ruleset_of(stored) != 0
    st = await kinds.status(body["jobId"])
    assert st["spec"] == spec
    assert list(st["spec"]) == list(spec)  # in the model's order
    # It posts back as the same job, of the same rule set.
    status, again = await kinds.post_json(st["spec"])
    assert status == 200, again
    assert await db.fetchval("SELECT ruleset FROM job WHERE id = $1", again["jobId"]) == \
        row["ruleset"]


@pytest.mark.parametrize(("data", "message"), [
    ({"urls": ["http://a.example/"], "fetcher": "browser"},
     "Invalid fetcher: unknown fetcher kind: browser (known: http, static)"),
    ({"urls": ["http://a.example/"], "extract": [{"kind": "test-title"}, {"kind": "css"}]},
     "Invalid extract[1].kind: unknown extractor kind: css (known: items, test-title)"),
    ({"urls": ["http://a.example/"], "extract": [{"tag": "h1"}]},
     "Invalid extract[0].kind: Field required"),
    ({"urls": ["http://a.example/"], "extract": [{"kind": "test-title", "tag": "\u0000"}]},
     "Invalid extract[0]: an option holds a NUL character"),
])
async def test_unknown_fetcher_or_extractor_kind_is_400_naming_the_field(
        kinds: Stack, db: asyncpg.Connection, data: object, message: str) -> None:
    assert await kinds.post_json(data) == (400, {"code": "BadRequest", "message": message})
    assert await db.fetchval("SELECT count(*) FROM job") == 0, "a rejected request created a job"


async def test_by_default_only_http_and_the_built_in_extractor_are_known(web: Stack,
                                                               db: asyncpg.Connection) -> None:
    assert await web.post_json({"urls": ["http://a.example/"], "fetcher": "static"}) == (
        400, {"code": "BadRequest",
              "message": "Invalid fetcher: unknown fetcher kind: static (known: http)"})
    assert await web.post_json({"urls": ["http://a.example/"],
                                "extract": [{"kind": "test-title"}]}) == (
        400, {"code": "BadRequest",
              "message": "Invalid extract[0].kind: unknown extractor kind: test-title "
                         "(known: items)"})
    assert await db.fetchval("SELECT count(*) FROM job") == 0
