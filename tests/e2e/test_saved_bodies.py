"""Saved bodies end to end (job spec ``save``): every page a job fetched has one committed body ref,
and the bytes it points at are what the server sent (WARC: as received; files and tar: the
payload, Content-Encoding undone). A cached page whose body was not kept is fetched again; a
worker stopped by SIGTERM and a new one leave readable archives."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from warcio.archiveiterator import ArchiveIterator

from shared.config import Settings
from shared.db import jobs
from tests.e2e.stack import Stack
from tests.servers import serve
from worker.crawl import run as run_worker

pytestmark = pytest.mark.e2e


class Site:
    """HTML pages linking each other, one sent gzip-encoded, a text file, a 404; ``chain`` more
    pages in a row from ``/n/0`` when asked, each with six leaves. ``sent``: the bytes of each answer's body as sent;
    ``payload``: decoded."""

    def __init__(self, chain: int = 0) -> None:
        self.base = ""
        self.hits: Counter[str] = Counter()
        self.sent: dict[str, bytes] = {}
        self.runner: web.AppRunner | None = None
        self.pages: dict[str, tuple[str, bytes]] = {
            "/": ("text/html", b'<html><a href="/a">a</a><a href="/b">b</a>'
                               b'<a href="/c.txt">c</a><a href="/missing">m</a>'
                               + (b'<a href="/n/0">n</a>' if chain else b"") + b"</html>"),
            "/a": ("text/html", b'<html><title>A</title><a href="/">home</a></html>'),
            "/b": ("text/html", b'<html><title>B</title><a href="/d">d</a>' + b"b" * 3000
                                + b"</html>"),
            "/c.txt": ("text/plain", b"plain text, saved too\n"),
            "/d": ("text/html", b"<html><title>D</title></html>"),
        }
        for i in range(chain):  # a chain of pages, each with 6 leaves
            nxt = f'<a href="/n/{i + 1}">next</a>' if i + 1 < chain else ""
            leaves = "".join(f'<a href="/n/{i}/{j}">{j}</a>' for j in range(6))
            self.pages[f"/n/{i}"] = ("text/html", f"<html>{i} {nxt}{leaves}</html>".encode())
            for j in range(6):
                self.pages[f"/n/{i}/{j}"] = ("text/plain", f"leaf {i} {j}\n".encode())

    def payload(self, path: str) -> bytes:
        return self.pages[path][1]

    async def handle(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        if request.path not in self.pages:
            self.sent[request.path] = b"<html>not found</html>"
            return web.Response(status=404, body=self.sent[request.path],
                                content_type="text/html")
        if request.path.startswith("/n/"):
            await asyncio.sleep(0.05)  # a slower crawl, so a worker can be stopped mid-way
        mime, body = self.pages[request.path]
        headers = {"Content-Type": mime}
        if request.path == "/b":
            body = gzip.compress(body, mtime=0)  # the same bytes at each fetch
            headers["Content-Encoding"] = "gzip"
        self.sent[request.path] = body
        return web.Response(body=body, headers=headers)

    def url(self, path: str) -> str:
        return self.base + path

    def path(self, url: str) -> str:
        return url[len(self.base):]


async def start_site(chain: int = 0) -> Site:
    s = Site(chain)
    s.runner, s.base = await serve(s.handle)
    return s


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    s = await start_site()
    yield s
    assert s.runner
    await s.runner.cleanup()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "out"


@pytest.fixture
async def stack(settings: Settings, root: Path) -> AsyncIterator[Stack]:
    st = await Stack(settings.model_copy(update={"output_root": root})).start()
    yield st
    await st.stop()


async def run(stack: Stack, site: Site, save: list[dict[str, Any]] | None,
              **more: Any) -> int:
    spec: dict[str, Any] = {"urls": [site.url("/")], "depth": 5, **more}
    if save is not None:
        spec["save"] = save
    job = await stack.post_spec(spec)
    await stack.wait_complete(job)
    return job


async def body_refs(db: asyncpg.Connection, job: int) -> list[tuple[str, dict[str, Any]]]:
    """(url, ref) of every committed body yield of the job."""
    out, after = [], (0, "", -1)
    while rows := await jobs.job_yields(db, job, after, kind="body"):
        out += [(y.url, y.value) for _, y in rows]
        after = rows[-1][0]
    return out


def sha1_b32(data: bytes) -> str:
    return "sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode()


def member(root: Path, ref: dict[str, Any]) -> bytes:
    with (root / ref["file"]).open("rb") as f:
        f.seek(ref["offset"])
        return f.read(ref["length"])


def warc_files(root: Path, job: int) -> list[Path]:
    return sorted((root / f"job-{job}" / "warc").glob("*.warc.gz"))


def warcio_check(files: list[Path]) -> None:
    done = subprocess.run([str(Path(sys.executable).with_name("warcio")), "check", "-v",
                           *map(str, files)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


OK_PAGES = ["/", "/a", "/b", "/c.txt", "/d"]


async def test_warc_reads_back(stack: Stack, site: Site, root: Path,
                               db: asyncpg.Connection) -> None:
    job = await run(stack, site, [{"kind": "warc", "prefix": "crawl"}])
    refs = await body_refs(db, job)
    by_path = Counter(site.path(u) for u, _ in refs)
    assert set(by_path) == {*OK_PAGES, "/missing"}  # every answer, a 404 too
    assert set(by_path.values()) == {1}, by_path  # one committed record per page
    for url, ref in refs:
        path = site.path(url)
        assert ref["output"] == "warc" and ref["digest"] == sha1_b32(site.sent[path])
        read = [(r.rec_type, r.rec_headers.get_header("WARC-Target-URI"),
                 r.rec_headers.get_header("WARC-Record-ID"), r.raw_stream.read())
                for r in ArchiveIterator(io.BytesIO(member(root, ref)))]
        assert read == [("response", url, ref["recordId"], site.sent[path])]
    files = warc_files(root, job)
    assert files and all(f.name.startswith("crawl-") for f in files)
    warcio_check(files)
    responses = []
    for f in files:
        with f.open("rb") as fh:
            types = []
            for r in ArchiveIterator(fh):
                types.append(r.rec_type)
                if r.rec_type == "response":
                    responses.append(r.rec_headers.get_header("WARC-Target-URI"))
        assert types[0] == "warcinfo" and types.count("request") == types.count("response")
    assert sorted(responses) == sorted(u for u, _ in refs)  # no other record in the files
    # The job's CDXJ index: one line per committed page, pointing at its record.
    status, text, _ = await stack.request("GET", f"/index/{job}")
    assert status == 200
    index = {json.loads(line.split(" ", 2)[2])["url"]: json.loads(line.split(" ", 2)[2])
             for line in text.splitlines()}
    assert len(index) == len(text.splitlines()) == len(refs)
    for url, ref in refs:
        assert index[url]["offset"] == str(ref["offset"])
        assert index[url]["filename"] == ref["file"]  # relative to outputRoot
        assert "sha1:" + index[url]["digest"] == sha1_b32(site.sent[site.path(url)])


async def get_body(stack: Stack, job: int, url: str) -> tuple[int, bytes, Any]:
    assert stack.http
    async with stack.http.get(f"{stack.base}/bodies/{job}", params={"url": url},
                              auto_decompress=False) as r:
        return r.status, await r.read(), r.headers


async def test_bodies_endpoint(stack: Stack, site: Site) -> None:
    warc = await run(stack, site, [{"kind": "warc"}])
    tar = await run(stack, site, [{"kind": "tar", "compression": "bz2"}], forceCrawl=True)
    for path in OK_PAGES:
        status, body, headers = await get_body(stack, warc, site.url(path))
        assert status == 200 and body == site.sent[path]  # as received: /b still gzip
        assert headers["X-Harvester-Status"] == "200"
        assert headers.get("Content-Encoding") == ("gzip" if path == "/b" else None)
        status, body, headers = await get_body(stack, tar, site.url(path))
        assert status == 200 and body == site.payload(path), path
    status, _, headers = await get_body(stack, warc, site.url("/missing"))
    assert status == 200 and headers["X-Harvester-Status"] == "404"
    assert (await get_body(stack, tar, site.url("/missing")))[0] == 404  # tar keeps 2xx only
    assert (await get_body(stack, tar, site.url("/never")))[0] == 404


async def test_files_and_tar_hold_each_page_once(stack: Stack, site: Site, root: Path,
                                                 db: asyncpg.Connection) -> None:
    job = await run(stack, site, [{"kind": "files", "pattern": "{path}/{urlid}"},
                                  {"kind": "tar", "compression": "gz", "pattern": "{urlid}"}])
    refs = await body_refs(db, job)
    kinds = Counter((site.path(u), r["output"]) for u, r in refs)
    assert kinds == Counter({(p, k): 1 for p in OK_PAGES for k in ("files", "tar")})
    names: dict[str, str] = {}
    for url, ref in refs:
        path = site.path(url)
        assert ref["digest"] == "sha256:" + hashlib.sha256(site.payload(path)).hexdigest()
        if ref["output"] == "files":
            assert (root / ref["file"]).read_bytes() == site.payload(path)
        else:
            names[ref["member"]] = path
    stop, task = stack.tasks.pop()  # the worker, stopped as SIGTERM does: outputs closed
    stop.set()
    await task
    archives = sorted((root / f"job-{job}" / "tar").iterdir())
    got: list[tuple[str, bytes]] = []
    for a in archives:
        with tarfile.open(a, "r:gz") as t:
            for m in t:
                f = t.extractfile(m)
                assert f is not None
                got.append((m.name, f.read()))
        assert gzip.decompress(a.read_bytes()).endswith(bytes(1024))
    assert sorted(got) == sorted((n, site.payload(p)) for n, p in names.items())


async def test_cached_page_without_body_is_fetched_again(stack: Stack, site: Site,
                                                         db: asyncpg.Connection) -> None:
    await run(stack, site, None)
    assert all(site.hits[p] == 1 for p in OK_PAGES)
    job = await run(stack, site, [{"kind": "files"}])
    assert all(site.hits[p] == 2 for p in OK_PAGES), site.hits  # no body kept: fetched again
    first = sorted((u, r["file"]) for u, r in await body_refs(db, job))
    assert [site.path(u) for u, _ in first] == sorted(OK_PAGES, key=site.url)
    again = await run(stack, site, [{"kind": "files"}])  # the same rule set: from the store
    assert all(site.hits[p] == 2 for p in OK_PAGES), site.hits
    assert sorted((u, r["file"]) for u, r in await body_refs(db, again)) == first


def name_path(name: str) -> str:
    """The site path of a tar entry named by ``{path}/{urlid}`` (``_`` for the empty path)."""
    name = name.rpartition("/")[0]
    return "/" if name == "_" else "/" + name


async def test_tar_survives_sigterm_restart(settings: Settings, root: Path,
                                            db: asyncpg.Connection) -> None:
    site = await start_site(chain=8)
    stack = await Stack(settings.model_copy(update={"output_root": root})).start()
    try:
        job = await stack.post_spec({"urls": [site.url("/")], "depth": 10,
                                     "save": [{"kind": "tar", "pattern": "{path}/{urlid}"}]})
        deadline = time.monotonic() + 60
        while len(await body_refs(db, job)) < 10:
            assert time.monotonic() < deadline, "no bodies saved"
            await asyncio.sleep(0.05)
        stop, task = stack.tasks.pop()  # the worker: SIGTERM's path (drain, close outputs)
        stop.set()
        await task
        assert (await stack.status(job))["pending"] > 0, "stopped too late to test a restart"
        stack.add(run_worker)
        await stack.wait_complete(job)
    finally:
        await stack.stop()
        assert site.runner
        await site.runner.cleanup()
    refs = await body_refs(db, job)
    paths = Counter(site.path(u) for u, _ in refs)
    expected = {p for p in site.pages if p != "/missing"}
    assert set(paths) == expected and set(paths.values()) == {1}
    archives = sorted((root / f"job-{job}" / "tar").iterdir())
    assert len(archives) == 2  # one per worker run, the first never reopened
    listed: Counter[str] = Counter()
    for a in archives:
        data = a.read_bytes()
        assert data.endswith(bytes(1024))  # closed cleanly: end-of-archive blocks
        with tarfile.open(a, "r:") as t:
            for m in t:
                f = t.extractfile(m)
                assert f is not None
                assert f.read() == site.payload(name_path(m.name))
                listed[m.name] += 1
    assert sum(listed.values()) == len(refs) and set(listed.values()) == {1}
    for _, ref in refs:
        assert member(root, ref)[ref["header"]:ref["header"] + ref["size"]] \
            == site.payload(name_path(ref["member"]))
