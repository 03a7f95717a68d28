"""The built-in outputs (worker/outputs/) against hand-made pages: what they write is read back
with the readers others use (warcio, tarfile, the file system, the body table)."""

from __future__ import annotations

import asyncio
import base64
import bz2
import gzip
import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from warcio.archiveiterator import ArchiveIterator

from shared.config import Settings
from shared.db import bodies
from shared.model import Extraction, FetchedPage, RawResponse, Yield
from worker.outputs import OUTPUTS, Output
from worker.outputs.db import close_pools, shared_pool
from worker.outputs.rotate import Appender
from worker.tasks import Context

HTML = b"<html><head><title>t</title></head><body>hello</body></html>"


def page(url_id: int, body: bytes = HTML, *, status: int = 200, mime: str = "text/html",
         headers: tuple[tuple[bytes, bytes], ...] | None = None, raw_body: bytes | None = None,
         final_url: str | None = None) -> FetchedPage:
    received = body if raw_body is None else raw_body
    headers = headers if headers is not None else (
        (b"Content-Type", mime.encode()), (b"Content-Length", str(len(received)).encode()))
    raw = RawResponse(f"HTTP/1.1 {status} {'OK' if status == 200 else 'Not Found'}".encode(),
                      headers, received, (("Host", "127.0.0.1:9"), ("User-Agent", "t")))
    return FetchedPage(url_id, status, mime, None if status < 400 else f"HTTP {status}",
                       cacheable=True, final_url=final_url,
                       body=body if status < 300 else None, raw=raw)


def ctx(url_id: int, url: str | None = None, job_id: int = 7) -> Context:
    return Context(job_id, url_id, url or f"http://127.0.0.1:9/p/{url_id}.html", 1)


def make(kind: str, root: Path, settings: Settings, **options: Any) -> Output:
    return OUTPUTS.create(kind, settings.model_copy(update={"output_root": root}), options)


async def save(out: Output, c: Context, p: FetchedPage) -> dict[str, Any]:
    (y,) = await out.write(c, p, Extraction())
    assert isinstance(y, Yield) and y.kind == "body"
    return y.value


def sha1_b32(data: bytes) -> str:
    return "sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode()


# --- rotate.Appender -------------------------------------------------------------------------

async def test_appender_appends_whole_blobs_rotates_and_never_reopens(tmp_path: Path) -> None:
    names = iter(["a", "a", "b", "c"])  # "a" again: taken (by the first file), never reopened
    app = Appender(tmp_path, lambda serial: next(names), max_size=10,
                   header=lambda name: f"[{name}]".encode(), footer=b"$")
    assert await app.append(b"12345") == ("a", 3)
    assert await app.append(b"678901") == ("a", 8)      # 14 bytes now: the next one rotates
    assert await app.append(b"x") == ("b", 3)
    big = b"z" * (300 * 1024)  # written from a thread
    assert await app.append(big) == ("b", 4)
    await app.close()
    assert await app.append(b"y") == ("c", 3)
    await app.close()
    assert (tmp_path / "a").read_bytes() == b"[a]12345678901$"
    assert (tmp_path / "b").read_bytes() == b"[b]x" + big + b"$"
    assert (tmp_path / "c").read_bytes() == b"[c]y$"
    assert app.files == ["a", "b", "c"]


async def test_appender_never_truncates_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "f-0").write_bytes(b"earlier run")
    app = Appender(tmp_path, lambda serial: f"f-{serial}", max_size=100)
    assert await app.append(b"new") == ("f-1", 0)
    await app.close()
    assert (tmp_path / "f-0").read_bytes() == b"earlier run"
    assert (tmp_path / "f-1").read_bytes() == b"new"


class _HeldWrite(Appender):
    """An Appender whose big writes (those made in a thread) wait for ``go``."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.started, self.go = threading.Event(), threading.Event()

    def _write(self, blob: bytes) -> None:
        if len(blob) > 256 * 1024:
            self.started.set()
            assert self.go.wait(30)
        super()._write(blob)


async def test_appender_close_after_a_cancelled_big_write_waits_for_it(tmp_path: Path) -> None:
    """Cancelling ``append`` during its write in a thread releases the asyncio lock while the
    thread still writes: ``close`` must not write the footer and close the fd underneath it."""
    app = _HeldWrite(tmp_path, lambda serial: "f", max_size=10**9, header=lambda n: b"[h]",
                     footer=b"$")
    big = b"z" * (1024 * 1024)
    writing = asyncio.create_task(app.append(big))
    assert await asyncio.to_thread(app.started.wait, 30)
    writing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writing
    closing = asyncio.create_task(app.close())
    deadline = time.monotonic() + 30
    while not (app._lock.locked() or closing.done()):  # close began (before the fix: footer)
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    app.go.set()
    await closing
    assert (tmp_path / "f").read_bytes() == b"[h]" + big + b"$"


# --- warc ------------------------------------------------------------------------------------

def records(path: Path) -> list[Any]:
    out = []
    with path.open("rb") as f:
        for r in ArchiveIterator(f):
            http = r.http_headers.to_str() if r.http_headers else ""
            out.append((r.rec_type, r.rec_headers, r.raw_stream.read(), http))
    return out


def warc_check(*paths: Path) -> None:
    cmd = [str(Path(sys.executable).with_name("warcio")), "check", "-v", *map(str, paths)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


async def test_warc_request_and_response_records_read_back(tmp_path: Path,
                                                           settings: Settings) -> None:
    out = make("warc", tmp_path, settings)
    gz = gzip.compress(HTML)
    p = page(3, HTML, raw_body=gz, final_url="http://127.0.0.1:9/final?q=1",
             headers=((b"Content-Type", b"text/html"), (b"Content-Encoding", b"gzip"),
                      (b"X-Odd-Case", b"v")))
    ref = await save(out, ctx(3), p)
    missing = await save(out, ctx(4), page(4, b"gone", status=404))
    await out.close()  # type: ignore[attr-defined]
    assert ref["output"] == "warc" and ref["status"] == 200 and ref["mime"] == "text/html"
    assert ref["digest"] == sha1_b32(gz)  # the payload as received
    file = tmp_path / ref["file"]
    assert file.parent == tmp_path / "job-7" / "warc"
    assert re.fullmatch(r"harvester-\d{17}-00000-[A-Za-z0-9._]+\.\d+\.warc\.gz", file.name)
    assert missing["file"] == ref["file"]
    got = records(file)
    assert [r[0] for r in got] == ["warcinfo", "response", "request", "response", "request"]
    info = got[0][2].decode()
    assert "harvester-job: 7" in info and "WARC File Format 1.1" in info
    _, head, _, _ = got[1]
    assert head.protocol == "WARC/1.1"
    assert head.get_header("WARC-Target-URI") == "http://127.0.0.1:9/final?q=1"
    assert head.get_header("WARC-Record-ID") == ref["recordId"]
    assert head.get_header("WARC-Payload-Digest") == ref["digest"]
    assert got[2][1].get_header("WARC-Concurrent-To") == ref["recordId"]
    with file.open("rb") as f:  # the ref's member alone is the response record
        f.seek(ref["offset"])
        member = f.read(ref["length"])
    read = [(r.rec_type, r.http_headers.get_header("X-Odd-Case"),
             r.rec_headers.get_header("WARC-Record-ID"), r.content_stream().read())
            for r in ArchiveIterator(io.BytesIO(member))]
    assert read == [("response", "v", ref["recordId"], HTML)]  # Content-Encoding undone
    assert got[2][3].startswith("GET /final?q=1 HTTP/1.1\r\n")
    assert "User-Agent: t\r\n" in got[2][3]
    warc_check(file)


async def test_warc_non_ascii_headers_and_url_read_back(tmp_path: Path,
                                                         settings: Settings) -> None:
    out = make("warc", tmp_path, settings)
    url = "http://127.0.0.1:9/caf\u00e9?q=\u00e9"
    p = page(6, HTML, headers=((b"Content-Type", b"text/html"), (b"X-Name", b"caf\xe9")),
             final_url=url)
    ref = await save(out, ctx(6), p)
    await out.close()  # type: ignore[attr-defined]
    got = records(tmp_path / ref["file"])
    assert got[1][1].get_header("WARC-Target-URI") == url
    assert "X-Name: caf%C3%A9" in got[1][3] or "X-Name: caf%E9" in got[1][3], got[1][3]
    assert got[2][3].startswith("GET /caf%C3%A9?q=%C3%A9 HTTP/1.1\r\n")
    warc_check(tmp_path / ref["file"])


async def test_warc_chunked_header_over_a_dechunked_body_reads_back(tmp_path: Path,
                                                                    settings: Settings) -> None:
    out = make("warc", tmp_path, settings)
    p = page(5, HTML, headers=((b"Content-Type", b"text/html"),
                               (b"Transfer-Encoding", b"chunked")))
    ref = await save(out, ctx(5), p)
    await out.close()  # type: ignore[attr-defined]
    with (tmp_path / ref["file"]).open("rb") as f:
        rs = [r for r in ArchiveIterator(f) if r.rec_type == "response"
              and r.content_stream().read() == HTML]
    assert len(rs) == 1
    warc_check(tmp_path / ref["file"])


def warcio_records(uri: str, raw: RawResponse, date: str, rid: str, rid2: str) -> list[bytes]:
    """The response and request records as warcio's own WARCWriter makes them (uncompressed)."""
    from urllib.parse import quote, urlsplit

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    def text(b: bytes) -> str:
        return b.decode("latin-1")

    out = []
    protocol, _, line = text(raw.status_line).partition(" ")
    parts = urlsplit(uri)
    target = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                   safe="/?&=%:@!$'()*+,;~-._")
    sent = list(raw.request_headers)
    if not any(k.lower() == "host" for k, _ in sent):
        sent.insert(0, ("Host", parts.netloc))
    for kind in ("response", "request"):
        buf = io.BytesIO()
        w = WARCWriter(buf, gzip=False, warc_version="1.1")
        if kind == "response":
            rec = w.create_warc_record(
                uri, kind, payload=io.BytesIO(raw.body), length=len(raw.body),
                http_headers=StatusAndHeaders(line, [(text(k), text(v)) for k, v in raw.headers],
                                              protocol=protocol),
                warc_headers_dict={"WARC-Record-ID": rid, "WARC-Date": date})
        else:
            rec = w.create_warc_record(
                uri, kind, http_headers=StatusAndHeaders(f"GET {target} HTTP/1.1", sent,
                                                         is_http_request=True),
                warc_headers_dict={"WARC-Record-ID": rid2, "WARC-Date": date,
                                   "WARC-Concurrent-To": rid})
        w.write_record(rec)
        out.append(buf.getvalue())
    return out


@pytest.mark.parametrize("headers", [((b"Content-Type", b"text/html"),),
                                     ((b"Content-Type", b"text/html"), (b"X-Name", b"caf\xe9"))])
@pytest.mark.parametrize("uri", ["http://127.0.0.1:9/a b/caf\u00e9?q=1", "http://h"])
@pytest.mark.parametrize("status_line", [b"HTTP/1.1 200 OK", b"HTTP/1.1 404"])
@pytest.mark.parametrize("body", [b"", HTML, bytes(range(256)) * 300])
def test_warc_records_are_the_bytes_warcio_writes(headers: Any, uri: str, status_line: bytes,
                                                  body: bytes) -> None:
    """The lean writer's records, each its own gzip member, decompress to what warcio's
    WARCWriter writes for the same answer (same record ids), each digest included."""
    from worker.outputs.warc import build_records
    raw = RawResponse(status_line, headers, body, (("User-Agent", "t\u00e9"),))
    blob, length, digest, rid = build_records(uri, raw, "2026-11-29T22:00:00.000000Z")
    members = []
    while blob:
        d = zlib.decompressobj(31)
        members.append(d.decompress(blob))
        assert d.eof
        if not members[1:]:
            assert len(blob) - len(d.unused_data) == length
        blob = d.unused_data
    rid2 = re.search(rb"WARC-Record-ID: (<[^>]+>)", members[1])
    assert rid2 is not None
    want = warcio_records(uri, raw, "2026-11-29T22:00:00.000000Z", rid, rid2[1].decode())
    assert members == want
    assert digest == sha1_b32(body)


async def test_warc_same_page_twice_is_one_record_and_304s_are_not_written(
        tmp_path: Path, settings: Settings) -> None:
    out = make("warc", tmp_path, settings)
    first = await save(out, ctx(3), page(3))
    again = await save(out, ctx(3), page(3))
    changed = await save(out, ctx(3), page(3, HTML + b" "))
    not_modified = FetchedPage(3, 304, None, None, cacheable=True, not_modified=True,
                               raw=RawResponse(b"HTTP/1.1 304 Not Modified", (), b""))
    assert await out.write(ctx(3), not_modified, Extraction()) == ()
    await out.close()  # type: ignore[attr-defined]
    assert again == first and changed["recordId"] != first["recordId"]
    got = records(tmp_path / first["file"])
    assert [r[0] for r in got].count("response") == 2


async def test_warc_rotates_at_max_size_each_file_with_its_warcinfo(tmp_path: Path,
                                                                   settings: Settings) -> None:
    out = make("warc", tmp_path, settings, prefix="x", maxSize=1)
    refs = [await save(out, ctx(i), page(i, HTML + bytes([i]))) for i in range(3)]
    await out.close()  # type: ignore[attr-defined]
    files = [tmp_path / r["file"] for r in refs]
    assert len(set(files)) == 3
    assert [re.fullmatch(r"x-\d{17}-(\d{5})-.*\.warc\.gz", f.name)[1]  # type: ignore[index]
            for f in files] == ["00000", "00001", "00002"]
    for f, r in zip(files, refs, strict=True):
        got = records(f)
        assert [x[0] for x in got] == ["warcinfo", "response", "request"]
        assert got[1][1].get_header("WARC-Payload-Digest") == r["digest"]
    warc_check(*files)


# --- files -----------------------------------------------------------------------------------

async def test_files_pattern_and_sharding(tmp_path: Path, settings: Settings) -> None:
    fmt = "http://127.0.0.1:9/item?id={}"
    sharded = make("files", tmp_path, settings, pattern="{id[:2]}/{id}.xml", urlFormat=fmt)
    flat = make("files", tmp_path, settings, pattern="{0}")
    by_host = make("files", tmp_path, settings)  # default {host}/{urlhash}
    ref = await save(sharded, ctx(1, "http://127.0.0.1:9/item?id=4711", job_id=8), page(1, b"<a/>"))
    assert ref["file"] == "job-8/files/47/4711.xml"
    assert (tmp_path / ref["file"]).read_bytes() == b"<a/>"
    assert ref["digest"] == "sha256:" + hashlib.sha256(b"<a/>").hexdigest()
    assert ref["length"] == 4 and ref["status"] == 200 and ref["output"] == "files"
    ref = await save(flat, ctx(1, "http://127.0.0.1:9/item?id=4711", job_id=8), page(1, b"x"))
    assert ref["file"] == "job-8/files/1"  # no urlFormat: {0} is the URL's id
    url = "http://127.0.0.1:9/p/2.html"
    ref = await save(by_host, ctx(2, url, job_id=8), page(2))
    assert ref["file"] == ("job-8/files/127.0.0.1:9/"
                           + hashlib.md5(url.encode()).hexdigest())
    # the decoded body, not the bytes as received; non-2xx answers are no files
    ref = await save(by_host, ctx(3, job_id=8), page(3, HTML, raw_body=gzip.compress(HTML)))
    assert (tmp_path / ref["file"]).read_bytes() == HTML
    assert await by_host.write(ctx(4, job_id=8), page(4, b"x", status=404), Extraction()) == ()


async def test_same_page_twice_one_file(tmp_path: Path, settings: Settings) -> None:
    out = make("files", tmp_path, settings, pattern="{host}/{path}")
    c = ctx(1, "http://127.0.0.1:9/a/b.html")
    first = await save(out, c, page(1, b"one"))
    again = await save(make("files", tmp_path, settings, pattern="{host}/{path}"), c,
                       page(1, b"two"))  # another process, the page changed meanwhile
    assert first["file"] == again["file"] == "job-7/files/127.0.0.1:9/a/b.html"
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files == [tmp_path / first["file"]]
    assert files[0].read_bytes() == b"two"


# --- tar -------------------------------------------------------------------------------------

MODES = {"none": "r:", "gz": "r:gz", "bz2": "r:bz2"}


def members(path: Path, compression: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with tarfile.open(path, MODES[compression]) as t:
        for m in t:
            f = t.extractfile(m)
            assert f is not None and m.name not in out
            out[m.name] = f.read()
    return out


@pytest.mark.parametrize("compression", ["none", "gz", "bz2"])
async def test_tar_one_entry_per_page(tmp_path: Path, settings: Settings,
                                      compression: str) -> None:
    out = make("tar", tmp_path, settings, pattern="{urlid}/{path}", compression=compression)
    bodies_ = {i: HTML + str(i).encode() * (i * 300) for i in range(1, 5)}
    refs = {i: await save(out, ctx(i, f"http://127.0.0.1:9/{i}.html"), page(i, b))
            for i, b in bodies_.items()}
    assert await save(out, ctx(2, "http://127.0.0.1:9/2.html"), page(2, bodies_[2])) == refs[2]
    long = "x" * 150  # a PAX header: more than one block
    refs[5] = await save(out, ctx(5, f"http://127.0.0.1:9/{long}"), page(5, b"long"))
    bodies_[5] = b"long"
    await out.close()  # type: ignore[attr-defined]
    (file,) = {r["file"] for r in refs.values()}
    path = tmp_path / file
    suffix = {"none": ".tar", "gz": ".tar.gz", "bz2": ".tar.bz2"}[compression]
    assert re.fullmatch(rf"harvester-\d{{17}}-00000-.+\.\d+{re.escape(suffix)}", path.name)
    got = members(path, compression)
    assert got == {r["member"]: bodies_[i] for i, r in refs.items()}
    assert refs[5]["member"] == f"5/{long}" and refs[5]["header"] > tarfile.BLOCKSIZE
    for i, r in refs.items():  # each ref's bytes alone are its entry
        with path.open("rb") as f:
            f.seek(r["offset"])
            stored = f.read(r["length"])
        raw = {"none": lambda b: b, "gz": gzip.decompress, "bz2": bz2.decompress}[compression](
            stored)
        assert raw[r["header"]:r["header"] + r["size"]] == bodies_[i]
        assert r["digest"] == "sha256:" + hashlib.sha256(bodies_[i]).hexdigest()
    if compression == "gz":  # gzip's reader takes the members as one stream, end blocks last
        assert gzip.decompress(path.read_bytes()).endswith(bytes(2 * tarfile.BLOCKSIZE))


@pytest.mark.parametrize("compression", ["none", "gz", "bz2"])
async def test_tar_restart_never_truncates(tmp_path: Path, settings: Settings,
                                           compression: str) -> None:
    first = make("tar", tmp_path, settings, pattern="{urlid}", compression=compression)
    a = await save(first, ctx(1), page(1, b"first run"))
    await first.close()  # type: ignore[attr-defined]
    before = (tmp_path / a["file"]).read_bytes()
    second = make("tar", tmp_path, settings, pattern="{urlid}", compression=compression)
    b = await save(second, ctx(2), page(2, b"second run"))
    await second.close()  # type: ignore[attr-defined]
    assert a["file"] != b["file"]  # same process, same millisecond too: a new archive
    assert (tmp_path / a["file"]).read_bytes() == before
    assert members(tmp_path / a["file"], compression) == {"1": b"first run"}
    assert members(tmp_path / b["file"], compression) == {"2": b"second run"}


def whole_members(data: bytes, compression: str) -> bytes:
    """The decompressed bytes of the whole members at the start of ``data``."""
    if compression == "none":
        return data
    out = []
    while data:
        d: Any = (zlib.decompressobj(zlib.MAX_WBITS | 16) if compression == "gz"
                  else bz2.BZ2Decompressor())
        chunk = d.decompress(data)
        if not d.eof:
            break
        out.append(chunk)
        data = d.unused_data
    return b"".join(out)


@pytest.mark.parametrize("compression", ["none", "gz", "bz2"])
async def test_a_killed_workers_archive_lists_its_complete_entries(
        tmp_path: Path, settings: Settings, compression: str) -> None:
    out = make("tar", tmp_path, settings, pattern="{urlid}", compression=compression)
    refs = [await save(out, ctx(i), page(i, bytes([65 + i]) * 2000)) for i in range(3)]
    # No close (SIGKILL): no end blocks; and the last entry cut short in the middle.
    path = tmp_path / refs[0]["file"]
    os.truncate(path, refs[2]["offset"] + refs[2]["length"] // 2)
    # What gzip -dc / bzip2 -dc recover (every whole member), read as a tar: the whole
    # entries, and the cut one is no entry of it.
    data = whole_members(path.read_bytes(), compression)
    got: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as t:
            for m in t:
                f = t.extractfile(m)
                assert f is not None
                got[m.name] = f.read()
    except tarfile.ReadError:  # plain tar: the cut entry's header is there, its data is not
        assert compression == "none"
    assert got == {"0": b"A" * 2000, "1": b"B" * 2000}
    # Whole entries only (nothing cut): every entry reads back, no end blocks needed.
    os.truncate(path, refs[2]["offset"])
    assert members(path, compression) == {"0": b"A" * 2000, "1": b"B" * 2000}


async def test_tar_rotates_at_max_size(tmp_path: Path, settings: Settings) -> None:
    out = make("tar", tmp_path, settings, pattern="{urlid}", compression="gz", maxSize=1)
    refs = [await save(out, ctx(i), page(i, b"x" * i)) for i in range(1, 4)]
    await out.close()  # type: ignore[attr-defined]
    assert len({r["file"] for r in refs}) == 3
    for i, r in enumerate(refs, 1):
        assert members(tmp_path / r["file"], "gz") == {str(i): b"x" * i}


# --- db --------------------------------------------------------------------------------------

async def test_db_row_per_digest(tmp_path: Path, settings: Settings,
                                 db: asyncpg.Connection) -> None:
    out = make("db", tmp_path, settings)
    gz = gzip.compress(b"payload one")
    p = page(1, b"payload one", raw_body=gz,
             headers=((b"Content-Type", b"text/plain"), (b"Content-Encoding", b"gzip")))
    try:
        a = await save(out, ctx(1), p)
        b = await save(out, ctx(2, job_id=9), p)  # another page, another job, the same bytes
        c = await save(out, ctx(3), page(3, b"other"))
        assert await out.write(ctx(4), page(4, b"x", status=404), Extraction()) == ()
    finally:
        await close_pools()
    assert a["digest"] == b["digest"] == "sha256:" + hashlib.sha256(gz).hexdigest()
    assert a["headers"] == [["Content-Type", "text/plain"], ["Content-Encoding", "gzip"]]
    assert a["output"] == "db" and a["length"] == len(gz)
    digests = [bytes.fromhex(r["digest"].split(":")[1]) for r in (a, c)]
    rows = await db.fetch("SELECT digest, data FROM body WHERE digest = ANY($1::bytea[])",
                          digests)
    assert sorted((r["digest"], r["data"]) for r in rows) == sorted(
        [(digests[0], gz), (digests[1], b"other")])
    assert await bodies.get_body(db, digests[0]) == gz


async def test_db_outputs_of_all_jobs_share_one_pool_closed_with_the_process(
        tmp_path: Path, settings: Settings) -> None:
    """Not a 2-connection pool per job: one per process, kept when a job's outputs close."""
    outs = [make("db", tmp_path, settings) for _ in range(3)]
    try:
        for i, out in enumerate(outs):
            await save(out, ctx(i, job_id=100 + i), page(i, b"shared %d" % i))
            close = getattr(out, "close", None)
            if close is not None:  # a job's outputs closed (idle): the pool stays
                await close()
        pool = await shared_pool(settings.database_url)
        assert pool.get_size() <= 2 and not pool._closed
    finally:
        await close_pools()
    assert pool._closed


async def test_warc_record_ids_are_unique_across_writers(tmp_path: Path,
                                                         settings: Settings) -> None:
    """WARC 1.1: a record id is globally unique. The orphan of a killed worker and the
    committed re-fetch of the same bytes by another process are two records, two ids; one
    process asked again returns its earlier ref (same id)."""
    a = make("warc", tmp_path, settings, prefix="a")
    b = make("warc", tmp_path, settings, prefix="b")
    first, again = await save(a, ctx(3), page(3)), await save(a, ctx(3), page(3))
    other = await save(b, ctx(3), page(3))
    await a.close()  # type: ignore[attr-defined]
    await b.close()  # type: ignore[attr-defined]
    assert again == first and other["recordId"] != first["recordId"]
    ids = [r[1].get_header("WARC-Record-ID") for f in (first["file"], other["file"])
           for r in records(tmp_path / f)]
    assert len(ids) == 6 and len(set(ids)) == 6  # warcinfo, response, request in each
