"""Reading what jobs extracted and saved (web_server/exports.py): ``GET /items`` as JSON, JSON
lines and CSV, the same cached or fresh; ``GET /result?format=jsonl|csv`` equal to the JSON;
``GET /bodies`` (one body, the tar export) and ``GET /index`` over committed body refs;
``POST /idsets`` streamed. Everything streams over several chunks."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import tests.plugins  # noqa: F401 - registers the test-title extractor
from shared.config import Settings
from shared.model import Extraction, FetchedPage, RawResponse
from shared.urls import canonicalize
from tests.e2e.stack import Stack
from tests.e2e.test_result_readers import make_big_result
from tests.e2e.test_results_per_ruleset import Site, run_job
from tests.results import write_result
from web_server import exports
from worker.outputs.db import Db
from worker.outputs.files import Files
from worker.outputs.tar import Tar
from worker.outputs.warc import Warc
from worker.tasks import Context

pytestmark = pytest.mark.e2e

TITLE = [{"kind": "test-title"}]


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    from tests.servers import serve
    s = Site()
    s.runner, s.base = await serve(s.handle)
    yield s
    await s.runner.cleanup()


@pytest.fixture
def out_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"extractor_kinds": ("test-title",),
                                       "output_root": tmp_path / "out",
                                       "max_idset_bytes": 200_000})


@pytest.fixture
async def stack(out_settings: Settings) -> AsyncIterator[Stack]:
    st = await Stack(out_settings).start()
    yield st
    await st.stop()


@pytest.fixture
async def web(out_settings: Settings) -> AsyncIterator[Stack]:
    st = await Stack(out_settings).start(foremen=0, workers=0)
    yield st
    await st.stop()


async def get(stack: Stack, path: str, **params: str) -> tuple[int, bytes, Any]:
    assert stack.http
    async with stack.http.get(stack.base + path, params=params) as r:
        return r.status, await r.read(), r.headers


def jsonl(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.decode().splitlines()]


def csv_rows(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode(), newline="")))


async def test_items_json_jsonl_csv(stack: Stack, site: Site) -> None:
    job = await run_job(stack, site, TITLE)
    status, body, headers = await get(stack, f"/items/{job}")
    assert status == 200 and headers["Content-Type"] == "application/json"
    items = json.loads(body)
    assert sorted((i["url"], i["seq"], i["title"]) for i in items) == [
        (site.base + "/", 0, "Home"), (site.base + "/a", 0, "A"), (site.base + "/b", 0, "B")]
    status, body, headers = await get(stack, f"/items/{job}", format="jsonl")
    assert headers["Content-Type"] == "application/x-ndjson"
    assert jsonl(body) == items
    status, body, headers = await get(stack, f"/items/{job}", format="csv")
    assert headers["Content-Type"] == "text/csv; charset=utf-8"
    assert body.decode().splitlines()[0] == "url,seq,title"
    assert csv_rows(body) == [{"url": i["url"], "seq": str(i["seq"]), "title": i["title"]}
                              for i in items]
    # Other kinds: none for this job, an empty answer; links of the pages are /result's.
    assert json.loads((await get(stack, f"/items/{job}", kind="id"))[1]) == []
    assert (await get(stack, f"/items/{job}", kind="body", format="csv"))[1] == \
        b"page,seq,output,file,offset,length,digest,status,mime,date\r\n"


async def test_items_same_cached_or_fresh(stack: Stack, site: Site) -> None:
    fresh = await run_job(stack, site, TITLE)
    hits = sum(site.hits.values())
    cached = await run_job(stack, site, TITLE)
    assert sum(site.hits.values()) == hits  # the second job was answered from the store
    for fmt in ("json", "jsonl", "csv"):
        a = (await get(stack, f"/items/{fresh}", format=fmt))[1]
        b = (await get(stack, f"/items/{cached}", format=fmt))[1]
        assert a == b and a.count(b"Home") == 1


async def insert_items(db: asyncpg.Connection, job: int, pages: int, per_page: int) -> None:
    await db.execute("""
        INSERT INTO url (url) SELECT 'http://items.example/p/' || p FROM generate_series(1, $1) p
        ON CONFLICT DO NOTHING""", pages)
    await db.execute("""
        INSERT INTO job_yield (job_id, url_id, kind, seq, value)
        SELECT $1, u.id, 'item', s, jsonb_build_object('n', s, 'tags', jsonb_build_array('a', s),
                                                       'ok', s % 2 = 0, 'none', null)
        FROM url u, generate_series(0, $2 - 1) s WHERE u.url LIKE 'http://items.example/p/%'
        """, job, per_page)


async def test_items_stream_over_chunks(web: Stack, db: asyncpg.Connection) -> None:
    job = await web.post_job(["http://items.example/"])
    pages, per_page = 7, 1500  # 10,500 items: three chunks
    await insert_items(db, job, pages, per_page)
    status, body, _ = await get(web, f"/items/{job}")
    assert status == 200
    items = json.loads(body)
    assert len(items) == pages * per_page
    keys = [(i["url"], i["seq"]) for i in items]
    assert len(set(keys)) == len(keys)
    assert items[1] == {"url": items[1]["url"], "seq": 1, "n": 1, "tags": ["a", 1], "ok": False,
                        "none": None}
    assert jsonl((await get(web, f"/items/{job}", format="jsonl"))[1]) == items
    rows = csv_rows((await get(web, f"/items/{job}", format="csv"))[1])
    assert len(rows) == len(items)
    assert rows[2] == {"url": items[2]["url"], "seq": "2", "n": "2", "tags": "a|2", "ok": "true",
                       "none": ""}


async def test_csv_cells_never_start_a_formula(web: Stack, db: asyncpg.Connection) -> None:
    """Fields, ids and list elements from hostile pages starting with = + - @, a tab or a CR are
    written with a leading ' (a spreadsheet shows them as text); the JSON keeps them as they are.
    A number (a coerced field) is written as it is: it cannot be a formula."""
    job = await web.post_job(["http://items.example/"])
    await db.execute("INSERT INTO url (url) VALUES ('http://items.example/=x') "
                     "ON CONFLICT DO NOTHING")
    url_id = await db.fetchval("SELECT id FROM url WHERE url = 'http://items.example/=x'")
    hostile = {"f": "=HYPERLINK(\"http://evil.example\")", "p": "+1", "m": "-2", "a": "@SUM(A1)",
               "t": "\tx", "r": "\rx", "ok": "a=b", "n": -3,
               "tags": ["safe", "=1+1", "@x"]}
    await db.execute("INSERT INTO job_yield (job_id, url_id, kind, seq, value) VALUES "
                     "($1, $2, 'item', 0, $3::jsonb), ($1, $2, 'id', 1, $4::jsonb)",
                     job, url_id, json.dumps(hostile),
                     json.dumps({"id": "=cmd|' /C calc'!A0", "url": "http://x.example/"}))
    (row,) = csv_rows((await get(web, f"/items/{job}", format="csv"))[1])
    assert row == {"url": "http://items.example/=x", "seq": "0",
                   "f": "'=HYPERLINK(\"http://evil.example\")", "p": "'+1", "m": "'-2",
                   "a": "'@SUM(A1)", "t": "'\tx", "r": "'\rx", "ok": "a=b", "n": "-3",
                   "tags": "safe|'=1+1|'@x"}
    (row,) = csv_rows((await get(web, f"/items/{job}", kind="id", format="csv"))[1])
    assert row["id"] == "'=cmd|' /C calc'!A0"
    assert json.loads((await get(web, f"/items/{job}"))[1])[0]["f"] == hostile["f"]
    assert exports.csv_cell("=1") == "'=1" and exports.csv_cell("1=") == "1="


async def test_result_formats(stack: Stack, site: Site) -> None:
    job = await run_job(stack, site)
    status, plain, headers = await get(stack, f"/result/{job}")
    assert headers["Content-Type"] == "application/json"
    assert (await get(stack, f"/result/{job}", format="json"))[1] == plain  # the default
    result = json.loads(plain)
    lines = jsonl((await get(stack, f"/result/{job}", format="jsonl"))[1])
    assert {line["page"]: line["links"] for line in lines} == result
    status, body, headers = await get(stack, f"/result/{job}", format="csv")
    assert status == 200 and headers["Content-Type"] == "text/csv; charset=utf-8"
    assert body.decode().splitlines()[0] == "page,link"
    assert sorted((r["page"], r["link"]) for r in csv_rows(body)) == sorted(
        (p, link) for p, links in result.items() for link in links)
    mime = (await get(stack, f"/result/{job}", format="csv", mime="image/"))[1]
    assert mime == b"page,link\r\n"
    # A page without links (/b) is in none of the three (a result holds links, not pages).
    no_links = site.base + "/b"
    assert no_links in result[site.base + "/"] and no_links not in result
    assert no_links not in {line["page"] for line in lines}
    assert no_links not in {r["page"] for r in csv_rows(body)}


@pytest.mark.parametrize("derived", [True, False], ids=["derived", "job_result"])
async def test_result_formats_over_chunks(web: Stack, db: asyncpg.Connection,
                                          derived: bool) -> None:
    """160,000 links, and one page of 6,000 (more than a chunk): the same links every way."""
    job = await web.post_job(["http://big.example/"])
    await make_big_result(db, job, derived)
    await db.execute("""
        INSERT INTO url (url) SELECT 'http://huge.example/l/' || l FROM generate_series(1, 6000) l
        UNION ALL SELECT 'http://huge.example/' ON CONFLICT DO NOTHING""")
    await write_result(db, job, derived, """
        SELECT r.id AS refer_id, u.id AS url_id
        FROM url r JOIN url u ON u.url LIKE 'http://huge.example/l/%'
        WHERE r.url = 'http://huge.example/'""")
    result = json.loads((await get(web, f"/result/{job}"))[1])
    merged: dict[str, set[str]] = {}
    lines = jsonl((await get(web, f"/result/{job}", format="jsonl"))[1])
    assert sum(1 for line in lines if line["page"] == "http://huge.example/") > 1  # in parts
    for line in lines:
        merged.setdefault(line["page"], set()).update(line["links"])
    assert merged == {p: set(links) for p, links in result.items()}
    rows = csv_rows((await get(web, f"/result/{job}", format="csv"))[1])
    assert len(rows) == sum(len(v) for v in result.values()) == 160_000 + 6000


# ---- saved bodies: refs written by the outputs, committed as job_yield rows -----------------

PAGES = {"http://bodies.example/item?id=17": b"<xml>seventeen</xml>",
         "http://bodies.example/item?id=2": b"\x1f\x8b binary \x00 two",
         "http://bodies.example/item?id=300": b"three hundred " * 500}
FMT = "http://bodies.example/item?id={}"


XML_HEADERS = ((b"Content-Type", b"application/xml"), (b"X-Served", b"yes"),
               (b"Transfer-Encoding", b"chunked"))


def raw_page(url_id: int, body: bytes,
             headers: tuple[tuple[bytes, bytes], ...] = XML_HEADERS) -> FetchedPage:
    mime = dict(headers).get(b"Content-Type", b"").decode().split(";")[0]
    raw = RawResponse(b"HTTP/1.1 200 OK", headers, body, (("User-Agent", "t"),))
    return FetchedPage(url_id, 200, mime, None, cacheable=True, body=body, raw=raw)


async def save_job(web: Stack, db: asyncpg.Connection, settings: Settings,
                   save: list[dict[str, Any]], pages: dict[str, bytes] = PAGES,
                   headers: tuple[tuple[bytes, bytes], ...] = XML_HEADERS,
                   ) -> tuple[int, dict[str, int]]:
    """A job whose pages were written by the outputs of ``save`` and their refs committed as
    ``job_yield`` rows (what the worker's commit does), each output's ref a ``body`` yield."""
    spec = {"urls": [next(iter(pages))], "ids": {"regex": "id=(\\d+)", "urlFormat": FMT},
            "save": save}
    assert web.http
    async with web.http.post(web.base + "/", json=spec) as r:
        assert r.status == 200, await r.text()
        job = int((await r.json())["jobId"])
    await db.execute("INSERT INTO url (url) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
                     list(pages))
    ids = dict(await db.fetch("SELECT url, id FROM url WHERE url = ANY($1::text[])",
                              list(pages)))
    made = {"warc": Warc, "files": Files, "tar": Tar, "db": Db}
    outputs = [made[s["kind"]](settings, {**s, "urlFormat": FMT}) for s in save]
    for url, body in pages.items():
        for seq, output in enumerate(outputs):
            (y,) = await output.write(Context(job, ids[url], url, 1),
                                      raw_page(ids[url], body, headers), Extraction())
            await db.execute("INSERT INTO job_yield (job_id, url_id, kind, seq, value) "
                             "VALUES ($1, $2, 'body', $3, $4::jsonb)",
                             job, ids[url], seq, json.dumps(y.value))
    for output in outputs:
        if hasattr(output, "close"):
            await output.close()
    return job, ids


@pytest.mark.parametrize("save", [
    [{"kind": "warc"}], [{"kind": "files", "pattern": "{id[:1]}/{id}.xml"}],
    [{"kind": "tar", "compression": "gz"}], [{"kind": "tar", "compression": "bz2"}],
    [{"kind": "tar"}], [{"kind": "db"}]], ids=lambda s: s[0]["kind"] + s[0].get("compression", ""))
async def test_bodies_endpoint(web: Stack, db: asyncpg.Connection, out_settings: Settings,
                               save: list[dict[str, Any]]) -> None:
    job, _ = await save_job(web, db, out_settings, save)
    kind = save[0]["kind"]
    for url, body in PAGES.items():
        status, got, headers = await get(web, f"/bodies/{job}", url=url.replace(
            "http://bodies.example", "HTTP://Bodies.Example:80"))  # any form of the URL
        assert status == 200 and got == body
        assert headers["X-Harvester-Status"] == "200"
        assert headers["X-Harvester-Source"].startswith(f"{kind}:")
        # XML is a type a browser would run (XSLT, XHTML): served as bytes, its type noted.
        assert headers["Content-Type"] == "application/octet-stream"
        assert headers["X-Harvester-Content-Type"] == "application/xml"
        assert headers["Content-Disposition"] == "attachment"
        assert headers["Content-Security-Policy"] == "sandbox"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert "Transfer-Encoding" not in headers  # hop-by-hop: not copied from the record
        if kind in ("warc", "db"):  # the response headers as stored, renamed
            assert headers["X-Harvester-Header-X-Served"] == "yes"
            assert "X-Served" not in headers
    status, got, _ = await get(web, f"/bodies/{job}", url="http://bodies.example/item?id=9")
    assert (status, json.loads(got)["code"]) == (404, "NotFound")


HOSTILE = ((b"Content-Type", b"text/html; charset=utf-8"), (b"Set-Cookie", b"sid=evil; Path=/"),
           (b"Access-Control-Allow-Origin", b"*"), (b"Refresh", b"0; url=http://evil.example/"),
           (b"ETag", b'"v1"'), (b"Last-Modified", b"Mon, 02 Jan 2006 15:04:05 GMT"))
SAFE = ((b"Content-Type", b"text/plain; charset=utf-8"), (b"Set-Cookie", b"sid=evil"))


@pytest.mark.parametrize("kind", ["warc", "db", "files", "tar"])
async def test_bodies_never_serve_crawled_html_or_headers_as_the_api(
        web: Stack, db: asyncpg.Connection, out_settings: Settings, kind: str) -> None:
    """A stored page setting a cookie, as text/html, with CORS and Refresh: served as an
    attachment of bytes, sandboxed, its headers only as X-Harvester-Header-*."""
    url = "http://bodies.example/item?id=1"
    page = b"<script>fetch('/status/1').then(r => r.text()).then(alert)</script>"
    job, _ = await save_job(web, db, out_settings, [{"kind": kind}], {url: page}, HOSTILE)
    status, got, headers = await get(web, f"/bodies/{job}", url=url)
    assert (status, got) == (200, page)
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["X-Harvester-Content-Type"].startswith("text/html")
    assert headers["Content-Disposition"] == "attachment"
    assert headers["Content-Security-Policy"] == "sandbox"
    assert headers["X-Content-Type-Options"] == "nosniff"
    for name in ("Set-Cookie", "Access-Control-Allow-Origin", "Refresh"):
        assert name not in headers
    if kind in ("warc", "db"):
        assert headers["X-Harvester-Header-Set-Cookie"] == "sid=evil; Path=/"
        assert headers["X-Harvester-Header-Refresh"] == "0; url=http://evil.example/"
        assert headers["ETag"] == '"v1"'
        assert headers["Last-Modified"] == "Mon, 02 Jan 2006 15:04:05 GMT"
    # A type no browser runs keeps its Content-Type, inline, still sandboxed.
    job, _ = await save_job(web, db, out_settings, [{"kind": kind}], {url: b"plain"}, SAFE)
    status, got, headers = await get(web, f"/bodies/{job}", url=url)
    assert headers["Content-Type"].startswith("text/plain")
    assert "Content-Disposition" not in headers and "Set-Cookie" not in headers
    assert headers["Content-Security-Policy"] == "sandbox"


@pytest.mark.parametrize("save", [
    [{"kind": "tar", "pattern": "{id[:1]}/{id}.xml", "compression": "gz"}, {"kind": "warc"}],
    [{"kind": "warc"}, {"kind": "db"}]], ids=["tar+warc", "warc+db"])
async def test_tar_export_has_one_entry_per_page(web: Stack, db: asyncpg.Connection,
                                                 out_settings: Settings,
                                                 save: list[dict[str, Any]]) -> None:
    job, _ = await save_job(web, db, out_settings, save)
    status, body, headers = await get(web, f"/bodies/{job}", format="tar")
    assert status == 200 and headers["Content-Type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        members = tar.getmembers()
        got = {m.name: tar.extractfile(m).read() for m in members}  # type: ignore[union-attr]
    assert len(members) == len(PAGES)  # two outputs saved each page: one entry each
    if save[0]["kind"] == "tar":
        assert got == {f"{u.rsplit('=', 1)[1][0]}/{u.rsplit('=', 1)[1]}.xml": b
                       for u, b in PAGES.items()}
    else:
        assert got == {"bodies.example/" + hashlib.md5(u.encode()).hexdigest(): b
                       for u, b in PAGES.items()}


async def test_cdxj_index_of_committed_warc_records(web: Stack, db: asyncpg.Connection,
                                                    out_settings: Settings) -> None:
    job, _ = await save_job(web, db, out_settings, [{"kind": "warc"}, {"kind": "db"}])
    status, body, headers = await get(web, f"/index/{job}")
    assert status == 200 and headers["Content-Type"] == "text/x-cdxj; charset=utf-8"
    lines = body.decode().splitlines()
    assert len(lines) == len(PAGES)  # warc refs only, one per page
    assert lines == sorted(lines)
    root = out_settings.output_root
    for line in lines:
        key, date, fields = line.split(" ", 2)
        entry = json.loads(fields)
        assert key == exports.surt(entry["url"]) and key.startswith("example,bodies)/item?id=")
        assert len(date) == 14 and date.isdigit()
        assert entry["status"] == "200" and entry["mime"] == "application/xml"
        assert entry["filename"].startswith(f"job-{job}/warc/")  # relative to outputRoot
        assert "original" not in entry
        payload, _, status_code = exports._warc_payload(exports._read_at(
            root / entry["filename"], int(entry["offset"]), int(entry["length"])))
        assert payload == PAGES[entry["url"]] and status_code == 200
    # Records nothing committed: not in the index (an orphan appended after the commits).
    orphan = Warc(out_settings, {})
    await orphan.write(Context(job, 1, "http://bodies.example/orphan", 1),
                       raw_page(1, b"orphan"), Extraction())
    await orphan.close()
    assert (await get(web, f"/index/{job}"))[1] == body


async def test_cdxj_index_keys_a_redirected_page_by_its_final_url(
        web: Stack, db: asyncpg.Connection, out_settings: Settings) -> None:
    """The record's WARC-Target-URI is the URL the body came from (after redirects): the index
    line is keyed by it, the page's own URL noted as ``original``."""
    job, ids = await save_job(web, db, out_settings, [{"kind": "db"}])
    url, moved = "http://bodies.example/item?id=17", "http://bodies.example/moved/17"
    page = raw_page(ids[url], b"moved here")
    page = FetchedPage(page.url_id, 200, "application/xml", None, cacheable=True,
                       final_url=moved, redirects=(url,), body=page.body, raw=page.raw)
    warc = Warc(out_settings, {})
    (y,) = await warc.write(Context(job, ids[url], url, 1), page, Extraction())
    await warc.close()
    await db.execute("INSERT INTO job_yield (job_id, url_id, kind, seq, value) "
                     "VALUES ($1, $2, 'body', 1, $3::jsonb)", job, ids[url], json.dumps(y.value))
    (line,) = (await get(web, f"/index/{job}"))[1].decode().splitlines()
    key, _, fields = line.split(" ", 2)
    entry = json.loads(fields)
    assert key == "example,bodies)/moved/17"
    assert (entry["url"], entry["original"]) == (moved, url)
    assert entry["filename"] == y.value["file"]


# ---- POST /idsets -----------------------------------------------------------------------------

async def post_lines(web: Stack, chunks: list[bytes]) -> tuple[int, Any]:
    async def gen() -> AsyncIterator[bytes]:
        for c in chunks:
            yield c

    assert web.http
    async with web.http.post(web.base + "/idsets", data=gen()) as r:  # chunked
        return r.status, await r.json()


async def test_idsets_streamed_then_named_by_a_job(web: Stack, db: asyncpg.Connection) -> None:
    ids = [str(i) for i in range(12_000)]  # three COPY chunks
    text = ("\n".join(ids) + "\n\n").encode()
    status, body = await post_lines(web, [text[i:i + 777] for i in range(0, len(text), 777)])
    assert status == 200, body
    assert body["count"] == 12_000
    set_id = body["idSet"]
    assert await db.fetchval("SELECT count(*) FROM id_set_member WHERE set_id = $1::uuid",
                             set_id) == 12_000
    spec = {"urls": [], "ids": {"regex": "id=(\\d+)", "urlFormat": FMT, "explored": set_id,
                                "known": set_id, "seeds": ["x"]}}  # all known explored: a seed
    assert web.http
    async with web.http.post(web.base + "/", json=spec) as r:
        assert r.status == 200, await r.text()
        job = (await r.json())["jobId"]
    st = await web.status(job)
    assert st["spec"]["ids"] == {"regex": "id=(\\d+)", "urlFormat": FMT, "seeds": ["x"],
                                 "known": set_id, "explored": set_id}
    assert st["spec"]["depth"] == 2**31 - 2


@pytest.mark.parametrize(("chunks", "status", "message"), [
    ([b"1\n2\n\x003\n"], 400, "Invalid id at line 3: id holds a NUL or line break"),
    ([b"1\n", b"..\n"], 400, "Invalid id at line 2: id '..' is not allowed"),
    ([b"1\n\xff\n"], 400, "Invalid id at line 2: not UTF-8"),
    ([b"a" * 600 + b"\n"], 400, "Invalid id at line 1: id longer than 512 characters"),
    ([b"1\n" * 150_000], 413, "Request body larger than 200000 bytes"),
])
async def test_idsets_errors_name_the_line(web: Stack, db: asyncpg.Connection,
                                           chunks: list[bytes], status: int,
                                           message: str) -> None:
    got, body = await post_lines(web, chunks)
    assert (got, body) == (status, {"code": body["code"], "message": message})
    assert await db.fetchval("SELECT count(*) FROM id_set") == 0  # nothing kept


async def test_a_job_naming_an_unknown_or_incomplete_set_is_refused(
        web: Stack, db: asyncpg.Connection) -> None:
    incomplete = await db.fetchval("INSERT INTO id_set (id) VALUES (gen_random_uuid()) "
                                   "RETURNING id::text")
    for name, set_id in (("known", "00000000-0000-0000-0000-000000000001"),
                         ("explored", incomplete)):
        spec = {"urls": [FMT.format("1")], "ids": {"regex": "x", "urlFormat": FMT,
                                                    name: set_id}}
        assert web.http
        async with web.http.post(web.base + "/", json=spec) as r:
            assert r.status == 400
            assert await r.json() == {"code": "BadRequest", "message":
                                      f"Invalid ids.{name}: no complete id set {set_id} "
                                      "(upload it with POST /idsets)"}


async def stalled_upload(port: int, first: bytes) -> tuple[asyncio.StreamReader,
                                                           asyncio.StreamWriter]:
    """Start a chunked POST /idsets, send ``first`` as one chunk, then stall (the caller may
    finish it with ``finish_upload``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /idsets HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + b"%x\r\n" % len(first) + first + b"\r\n")
    await writer.drain()
    return reader, writer


async def finish_upload(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        last: bytes) -> tuple[int, Any]:
    writer.write(b"%x\r\n" % len(last) + last + b"\r\n0\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    body = await asyncio.wait_for(reader.readexactly(length), 30)
    return int(head.split(b" ")[1]), json.loads(body)


async def test_stalled_idset_uploads_hold_no_connection(web: Stack,
                                                        db: asyncpg.Connection) -> None:
    """Uploads stalled after their first 5,000-id chunk: each chunk was written on a connection
    of its own and committed (no transaction open while the client stalls), the sets stay
    incomplete (no job may name them) until their end; beyond MAX_UPLOADS at once a 503. A
    finished upload then gives the whole set. Incomplete sets older than a day go at the next
    upload."""
    import aiohttp

    from tests.e2e.test_result_readers import until_no_transaction
    old = await db.fetchval("INSERT INTO id_set (id, created_on) VALUES "
                            "(gen_random_uuid(), now() - interval '25 hours') RETURNING id")
    await db.execute("INSERT INTO id_set_member (set_id, ident) VALUES ($1, 'x')", old)
    young = await db.fetchval("INSERT INTO id_set (id, created_on) VALUES "
                              "(gen_random_uuid(), now() - interval '23 hours') RETURNING id")
    port = int(web.base.rsplit(":", 1)[1])
    first = "".join(f"{i}\n" for i in range(6000)).encode()  # one chunk written, more read
    uploads = [await stalled_upload(port, first) for _ in range(exports.MAX_UPLOADS)]
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while await db.fetchval("""SELECT count(*) FROM id_set s WHERE NOT complete AND
                                   (SELECT count(*) FROM id_set_member m WHERE m.set_id = s.id)
                                   = 5000""") < exports.MAX_UPLOADS:
            assert asyncio.get_running_loop().time() < deadline, \
                "the uploads' first chunks are not committed"
            await asyncio.sleep(0.05)
        await until_no_transaction(db)
        assert await db.fetchval("SELECT count(*) FROM id_set WHERE id = $1", old) == 0
        assert await db.fetchval("SELECT count(*) FROM id_set_member WHERE set_id = $1", old) == 0
        assert await db.fetchval("SELECT count(*) FROM id_set WHERE id = $1", young) == 1
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            async with s.post(web.base + "/idsets", data=b"1\n") as r:
                assert r.status == 503
                assert await r.json() == {"code": "Unavailable", "message":
                                          f"More than {exports.MAX_UPLOADS} id set uploads at "
                                          "once; try again later"}
            async with s.get(web.base + "/healthz") as r:
                assert r.status == 200
        status, body = await finish_upload(*uploads[0], b"6000\n6001\n")
        assert (status, body["count"]) == (200, 6002)
        assert await db.fetchval("SELECT complete FROM id_set WHERE id = $1::uuid",
                                 body["idSet"])
        assert await db.fetchval("SELECT count(*) FROM id_set_member WHERE set_id = $1::uuid",
                                 body["idSet"]) == 6002
    finally:
        for _, writer in uploads:
            writer.close()


def test_surt() -> None:
    assert exports.surt("http://www.Example.com:80/A/b?z=1&a=2") == "com,example)/a/b?a=2&z=1"
    assert exports.surt("https://a.example:8443/") == "example,a:8443)/"
    assert canonicalize("http://bodies.example/item?id=2") in PAGES


ITEMS = [{"kind": "items", "name": "page", "fields": {
    "title": {"css": "title"}, "heading": {"xpath": "//h1/text()"},
    "links": {"css": "a", "attr": "href", "take": "all"},
    "first": {"regex": r'<a href="/(\w+)"', "default": "none"}}}]


async def test_items_rules_json_jsonl_csv_same_cached_or_fresh(stack: Stack, site: Site) -> None:
    """The built-in items extractor end to end: CSV columns from the spec, lists joined."""
    fresh = await run_job(stack, site, ITEMS)
    hits = sum(site.hits.values())
    cached = await run_job(stack, site, ITEMS)
    assert sum(site.hits.values()) == hits
    items = json.loads((await get(stack, f"/items/{fresh}"))[1])
    assert sorted(items, key=lambda i: i["url"]) == [
        {"url": site.base + "/", "seq": 0, "_type": "page", "title": "Home",
         "heading": "Welcome", "links": ["/a", "/b"], "first": "a"},
        {"url": site.base + "/a", "seq": 0, "_type": "page", "title": "A", "heading": "About",
         "links": ["/"], "first": "none"},
        {"url": site.base + "/b", "seq": 0, "_type": "page", "title": "B", "heading": "Blog",
         "links": [], "first": "none"}]
    body = (await get(stack, f"/items/{fresh}", format="csv"))[1]
    assert body.decode().splitlines()[0] == "url,seq,_type,first,heading,links,title"
    assert {r["url"]: r["links"] for r in csv_rows(body)} == {
        site.base + "/": "/a|/b", site.base + "/a": "/", site.base + "/b": ""}
    for fmt in ("json", "jsonl", "csv"):
        assert (await get(stack, f"/items/{fresh}", format=fmt))[1] == \
            (await get(stack, f"/items/{cached}", format=fmt))[1]


async def test_an_id_crawl_saved_reads_back_through_every_export(stack: Stack,
                                                                 out_settings: Settings) -> None:
    """A real crawl: ids 1..30 reachable from id 1 (each page names two others, some twice),
    saved to a gz tar and WARC. /bodies gives each page's bytes as served, the tar export one
    entry per page named by the tar pattern, /index one WARC record per page, /items the ids
    and the body refs, /status the spec's follow/ids/save."""
    from collections import Counter

    from aiohttp import web as aioweb

    from tests.servers import serve
    hits: Counter[str] = Counter()

    def page(n: int) -> bytes:
        more = " ".join(f"<ref id='{m}'/>" for m in (2 * n, 2 * n + 1, 2 * n) if m <= 30)
        return f"<item n='{n}'>{more}</item>".encode()

    async def handle(request: aioweb.Request) -> aioweb.Response:
        ident = request.query.get("id", "")
        hits[ident] += 1
        if not ident.isdigit() or not 1 <= int(ident) <= 30:
            return aioweb.Response(status=404)
        return aioweb.Response(body=page(int(ident)), content_type="application/xml")

    runner, base = await serve(handle)
    try:
        fmt = base + "/item?id={}"
        tar_save = {"kind": "tar", "pattern": "{id[:1]}/{id}.xml", "compression": "gz"}
        spec = {"ids": {"regex": "id='(\\d+)'", "urlFormat": fmt, "seeds": ["1"]},
                "save": [tar_save, {"kind": "warc"}]}
        assert stack.http
        async with stack.http.post(stack.base + "/", json=spec) as r:
            assert r.status == 200, await r.text()
            job = int((await r.json())["jobId"])
        st = await stack.wait_complete(job)
        assert st["pages"]["failed"] == 0, st
        assert hits == Counter(str(n) for n in range(1, 31))  # each id once
        assert st["spec"]["ids"]["urlFormat"] == fmt and st["spec"]["save"] == spec["save"]
        urls = {canonicalize(fmt.format(n)): page(n) for n in range(1, 31)}
        for url, served in urls.items():
            status, got, headers = await get(stack, f"/bodies/{job}", url=url)
            assert (status, got) == (200, served)
            assert headers["X-Harvester-Source"].startswith("tar:job-")
        body = (await get(stack, f"/bodies/{job}", format="tar"))[1]
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            names = tar.getnames()
            got = {m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                   for m in tar.getmembers()}
        assert sorted(names) == sorted(f"{str(n)[0]}/{n}.xml" for n in range(1, 31))
        assert got == {f"{str(n)[0]}/{n}.xml": page(n) for n in range(1, 31)}
        index = (await get(stack, f"/index/{job}"))[1].decode().splitlines()
        assert sorted(json.loads(line.split(" ", 2)[2])["url"] for line in index) == \
            sorted(urls)
        refs = jsonl((await get(stack, f"/items/{job}", kind="body", format="jsonl"))[1])
        assert Counter(r["output"] for r in refs) == {"tar": 30, "warc": 30}
        found = jsonl((await get(stack, f"/items/{job}", kind="id", format="jsonl"))[1])
        assert {f["id"] for f in found} == {str(n) for n in range(2, 31)}
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("query", ["", "?format=jsonl", "?format=csv"])
async def test_stalled_items_readers_hold_no_connection(web: Stack, db: asyncpg.Connection,
                                                        query: str) -> None:
    """More stalled /items readers than the pool has connections: /status still answers, and no
    transaction or snapshot stays open (each chunk's connection is released before it is
    written)."""
    import aiohttp

    from tests.e2e.test_result_readers import stalled_reader, until_no_transaction
    from web_server.app import POOL_SIZE
    job = await web.post_job(["http://items.example/"])
    await insert_items(db, job, 12, 5000)  # 60,000 items, some MB: more than sockets buffer
    port = int(web.base.rsplit(":", 1)[1])
    readers = [await stalled_reader(port, f"/items/{job}{query}") for _ in range(POOL_SIZE + 2)]
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s, \
                s.get(f"{web.base}/status/{job}") as r:
            assert r.status == 200, await r.text()
        await until_no_transaction(db)
    finally:
        for _, writer in readers:
            writer.close()
