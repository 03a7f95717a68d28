"""Reading what jobs extracted and saved: ``GET /items``, ``/result`` as JSON lines or CSV,
``GET /bodies`` (one body, or a tar of all), ``GET /index`` (CDXJ) and ``POST /idsets``.

Everything is streamed in chunks (at most ``CHUNK`` rows a statement), each read on a pooled
connection released before the chunk is written: a slow client holds no connection and no
snapshot, and memory stays flat whatever the job's size (``POST /idsets`` likewise writes each
chunk of ids on a connection of its own). An error found before the answer starts is a
400/404/413 (503 for an upload beyond ``MAX_UPLOADS``) with ``{"code", "message"}``
(``web_server.middleware``); a store
failure once it has started cuts the body short, so the client sees it is incomplete.
"""

from __future__ import annotations

import asyncio
import bz2
import csv
import gzip
import io
import json
import logging
import re
import tarfile
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import asyncpg
from aiohttp import web

from shared.db import bodies, idsets, jobs
from shared.db.pool import RETRYABLE
from shared.errors import (
    BadRequest,
    DependencyUnavailable,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
)
from shared.ids import check_id
from shared.naming import name_fields, render
from shared.urls import canonicalize
from web_server.deps import DEPS, SETTINGS, Deps
from web_server.middleware import error_body
from web_server.render import body_timeout, json_response, refuse_too_large

log = logging.getLogger(__name__)

CHUNK = 5000          # rows a statement reads
IDSET_CHUNK = 5000    # ids a COPY writes
MAX_UPLOADS = 4       # POST /idsets at once
MAX_ID_LINE = 4096    # bytes of one POST /idsets line (ids are at most 512 characters)
YIELD_KINDS = ("item", "id", "link", "body")
# Columns of the CSV of each kind but items (whose come from the job's spec).
_KIND_COLUMNS = {"id": ("id", "url"), "link": ("url",),
                 "body": ("output", "file", "offset", "length", "digest", "status", "mime",
                          "date")}
_HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-authenticate",
                         "proxy-authorization", "te", "trailer", "trailers",
                         "transfer-encoding", "upgrade", "content-length"))
# Stored response headers /bodies passes through under their own name (with Content-Type when
# safe); every other one comes as ``X-Harvester-Header-<Name>``: a crawled page must not set
# cookies, CORS, refreshes or caching rules on the API's own origin.
_PASSED = frozenset(("content-encoding", "etag", "last-modified"))
# Types a browser would render or run (HTML, XHTML, SVG, XML with XSLT, scripts): served as
# application/octet-stream, an attachment, the original in X-Harvester-Content-Type.
_ACTIVE_TYPE = re.compile(r"html|xml|svg|xsl|javascript|ecmascript|jscript|x-mixed-replace")
_FORMATS = {"json": "application/json", "jsonl": "application/x-ndjson",
            "csv": "text/csv; charset=utf-8"}
DEFAULT_NAME = "{host}/{urlhash}"

Key = tuple[int, str, int]
Row = tuple[Key, jobs.JobYield]


def parse_format(request: web.Request, allowed: Iterable[str] = ("json", "jsonl", "csv")) -> str:
    fmt = request.query.get("format", "json")
    allowed = tuple(allowed)
    if fmt not in allowed:
        raise BadRequest(f"Invalid format: {fmt} (use {', '.join(allowed)})")
    return fmt


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


async def _read_on(deps: Deps, read: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
    async with deps.acquire() as conn:
        return await read(conn)


async def _job_spec(deps: Deps, job_id: int, what: str) -> dict[str, Any]:
    async with deps.acquire() as conn:
        specs = await jobs.load_specs(conn, [job_id])
    if job_id not in specs:
        raise NotFound(f"Failed to get job {job_id} {what}")
    return specs[job_id]


async def _yields(deps: Deps, job_id: int, kind: str,
                  first: list[Row]) -> AsyncIterator[list[Row]]:
    """The job's yields of ``kind``, a chunk at a time, from ``first`` (read already, so that
    its errors come before the answer starts); each further chunk on a connection of its own."""
    chunk = first
    while chunk:
        yield chunk
        if len(chunk) < CHUNK:
            return
        chunk = await _next_yields(deps, job_id, chunk[-1][0], kind)


async def _next_yields(deps: Deps, job_id: int, after: Key, kind: str) -> list[Row]:
    async with deps.acquire() as conn:
        return await jobs.job_yields(conn, job_id, after, CHUNK, kind)


async def _stream(request: web.Request, resp: web.StreamResponse,
                  parts: AsyncIterator[bytes]) -> web.StreamResponse:
    """Write ``parts`` to the prepared ``resp``; a store failure cuts the body short."""
    try:
        async for part in parts:
            if part:
                await resp.write(part)
    except (*RETRYABLE, DependencyUnavailable, asyncpg.PostgresError, OSError) as e:
        if isinstance(e, ConnectionError):
            log.debug("GET %s: the client went away", request.path_qs)
            return resp
        log.warning("GET %s: answer cut short: %s", request.path_qs, e)
        if request.transport is not None:
            request.transport.abort()
        return resp
    await resp.write_eof()
    return resp


# ---- GET /items/<jobId> -------------------------------------------------------------------

def item_columns(spec: Mapping[str, Any]) -> list[str]:
    """The CSV columns of a job's items: ``url``, ``seq``, ``_type`` when an items rule is
    named, then the fields of its ``items`` rules, rule by rule, each rule's sorted by name (the
    stored spec is jsonb: posted key order is lost), each once. Items of plug-in
    extractors add the keys found in the first chunk, in order."""
    rules = [e for e in spec.get("extract") or () if e.get("kind") == "items"]
    fields: dict[str, None] = {}
    for rule in rules:  # jsonb keeps no key order: a rule's fields by name
        fields.update(dict.fromkeys(sorted(rule.get("fields") or {})))
    named = ["_type"] if any(r.get("name") for r in rules) else []
    return ["url", "seq", *named, *fields]


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """``text`` as a CSV cell a spreadsheet shows as text: a leading ``'`` when it starts with
    ``= + - @``, a tab or a CR (a formula otherwise: CSV injection from crawled pages)."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):  # a number, not text: never a formula
        return str(value)
    if isinstance(value, list):
        return "|".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return csv_cell(_dumps(value))
    return csv_cell(str(value))


def _record(kind: str, y: jobs.JobYield) -> dict[str, Any]:
    """An item: its page's ``url``, ``seq`` and fields; another yield: its ``page``, ``seq``
    and value (whose own ``url`` is the link's or the id's)."""
    if kind == "item":
        return {"url": y.url, "seq": y.seq, **y.value}
    return {"page": y.url, "seq": y.seq, **y.value}


async def items(request: web.Request) -> web.StreamResponse:
    from web_server.routes import parse_job_id
    job_id = parse_job_id(request)
    fmt = parse_format(request)
    kind = request.query.get("kind", "item")
    if kind not in YIELD_KINDS:
        raise BadRequest(f"Invalid kind: {kind} (use {', '.join(YIELD_KINDS)})")
    deps = request.app[DEPS]
    spec = await _job_spec(deps, job_id, "items")
    first = await _read_on(deps, lambda c: jobs.job_yields(c, job_id, limit=CHUNK, kind=kind))
    resp = web.StreamResponse(headers={"Content-Type": _FORMATS[fmt]})
    await resp.prepare(request)
    chunks = _yields(deps, job_id, kind, first)
    if fmt == "csv":
        if kind == "item":  # the items rules' fields, then keys other extractors gave
            columns = item_columns(spec)
            columns += dict.fromkeys(k for _, y in first for k in y.value if k not in columns)
        else:
            columns = ["page", "seq", *_KIND_COLUMNS[kind]]
        parts = _csv(columns, chunks, kind)
    elif fmt == "jsonl":
        parts = _jsonl(chunks, kind)
    else:
        parts = _json_array(chunks, kind)
    return await _stream(request, resp, parts)


async def _json_array(chunks: AsyncIterator[list[Row]], kind: str) -> AsyncIterator[bytes]:
    started = False
    async for chunk in chunks:
        text = ",\n".join(_dumps(_record(kind, y)) for _, y in chunk)
        yield ((",\n" if started else "[\n") + text).encode()
        started = True
    yield b"\n]\n" if started else b"[]\n"


async def _jsonl(chunks: AsyncIterator[list[Row]], kind: str) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        yield "".join(_dumps(_record(kind, y)) + "\n" for _, y in chunk).encode()


async def _csv(columns: list[str], chunks: AsyncIterator[list[Row]],
               kind: str) -> AsyncIterator[bytes]:
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\r\n")
    out.writerow(columns)
    yield buf.getvalue().encode()
    async for chunk in chunks:
        buf.seek(0)
        buf.truncate()
        for _, y in chunk:
            record = _record(kind, y)
            out.writerow([_cell(record.get(c)) for c in columns])
        yield buf.getvalue().encode()


# ---- GET /result/<jobId>?format=jsonl|csv ---------------------------------------------------

class JsonlResult:
    """``{"page": ..., "links": [...]}`` a line: one per page, or per part of a page whose
    links come over several chunks."""

    def __init__(self, resp: web.StreamResponse) -> None:
        self._resp = resp

    async def write(self, pages: list[tuple[str, list[str]]], continues: bool = False) -> None:
        await self._resp.write("".join(_dumps({"page": p, "links": links}) + "\n"
                                       for p, links in pages).encode())

    async def close(self) -> None:
        pass


class CsvResult:
    """``page,link`` rows under that header (cells through ``csv_cell``: canonical http(s)
    URLs never start a formula, but the cells are guarded all the same)."""

    def __init__(self, resp: web.StreamResponse) -> None:
        self._resp = resp
        self._buf = io.StringIO()
        self._out = csv.writer(self._buf, lineterminator="\r\n")
        self._out.writerow(("page", "link"))

    async def write(self, pages: list[tuple[str, list[str]]], continues: bool = False) -> None:
        for page, links in pages:
            cell = csv_cell(page)
            self._out.writerows((cell, csv_cell(link)) for link in links)
        await self._resp.write(self._buf.getvalue().encode())
        self._buf.seek(0)
        self._buf.truncate()

    async def close(self) -> None:
        if self._buf.tell():
            await self._resp.write(self._buf.getvalue().encode())


RESULT_WRITERS: dict[str, type[JsonlResult | CsvResult]] = {"jsonl": JsonlResult,
                                                             "csv": CsvResult}


# ---- GET /bodies/<jobId>?url=... and ?format=tar --------------------------------------------

def _path(root: Path, file: str) -> Path:
    """``file`` of a ref under ``root``, refusing anything outside it."""
    path = (root / file).resolve()
    if not path.is_relative_to(root.resolve()):
        raise NotFound(f"Saved body outside the output root: {file}")
    return path


def _read_at(path: Path, offset: int, length: int | None) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read() if length is None else f.read(length)


def _decompress(blob: bytes, file: str) -> bytes:
    if file.endswith(".gz"):
        return gzip.decompress(blob)
    if file.endswith(".bz2"):
        return bz2.decompress(blob)
    return blob


def _warc_payload(blob: bytes) -> tuple[bytes, list[tuple[str, str]], int | None]:
    """The payload (as received), the response headers and status of the ``response`` record
    in ``blob``."""
    from warcio.archiveiterator import ArchiveIterator
    for record in ArchiveIterator(io.BytesIO(blob)):
        if record.rec_type == "response":
            headers = record.http_headers
            status = int(headers.get_statuscode()) if headers is not None else None
            return (record.raw_stream.read(), list(headers.headers) if headers else [],
                    status)
    raise NotFound("No response record at the saved offset")


def read_payload(root: Path, ref: Mapping[str, Any]) -> tuple[bytes, list[tuple[str, str]]]:
    """A saved body (files, tar, warc) and, for warc, its response headers as stored."""
    output, file = ref.get("output"), str(ref.get("file") or "")
    path = _path(root, file)
    try:
        if output == "files":
            return path.read_bytes(), []
        blob = _read_at(path, int(ref["offset"]), int(ref["length"]))
        if output == "tar":
            data = _decompress(blob, file)
            start = int(ref.get("header", 512))
            size = int(ref["size"]) if "size" in ref else None
            return data[start:None if size is None else start + size], []
        if output == "warc":
            payload, headers, _ = _warc_payload(blob)
            return payload, headers
    except (OSError, EOFError, zlib.error, ValueError, KeyError) as e:
        raise NotFound(f"Saved body unreadable: {output}:{file}: {e}") from None
    raise NotFound(f"Saved body of output {output!r} cannot be read here")


async def _payload(deps: Deps, root: Path,
                   ref: Mapping[str, Any]) -> tuple[bytes, list[tuple[str, str]]]:
    if ref.get("output") == "db":
        digest = str(ref.get("digest", "")).removeprefix("sha256:")
        data = await _read_on(deps, lambda c: bodies.get_body(c, bytes.fromhex(digest)))
        if data is None:
            raise NotFound(f"Saved body not in the store: {ref.get('digest')}")
        return data, [(str(k), str(v)) for k, v in ref.get("headers") or ()]
    return await asyncio.to_thread(read_payload, root, ref)


async def saved_bodies(request: web.Request) -> web.StreamResponse:
    from web_server.routes import parse_job_id
    job_id = parse_job_id(request)
    if request.query.get("format") is not None:
        parse_format(request, ("tar",))
        return await _tar_export(request, job_id)
    raw = request.query.get("url")
    if not raw:
        raise BadRequest("Invalid url: give ?url=<page URL> or ?format=tar")
    try:
        url = canonicalize(raw)
    except ValueError:
        raise BadRequest(f"Invalid url: {raw}") from None
    deps = request.app[DEPS]
    async with deps.acquire() as conn:
        if not await jobs.job_exists(conn, job_id):
            raise NotFound(f"Failed to get job {job_id} bodies")
        ref = await jobs.body_ref(conn, job_id, url)
    if ref is None:
        raise NotFound(f"Job {job_id} saved no body for {url}")
    data, headers = await _payload(deps, request.app[SETTINGS].output_root, ref)
    resp = web.Response(body=data)
    mime = str(ref["mime"]) if ref.get("mime") else None
    for name, value in served_headers(headers, mime):
        resp.headers.add(name, value)
    resp.headers["X-Harvester-Status"] = str(ref.get("status", ""))
    resp.headers["X-Harvester-Source"] = f"{ref.get('output')}:{ref.get('file')}#" \
                                         f"{ref.get('offset')}"
    return resp


def is_active_type(content_type: str) -> bool:
    """Whether a browser would render or run a body of this type on the API's origin (or
    sniff one without a type)."""
    essence = content_type.split(";", 1)[0].strip().lower()
    return "/" not in essence or _ACTIVE_TYPE.search(essence) is not None


def served_headers(stored: Iterable[tuple[str, str]],
                   mime: str | None) -> list[tuple[str, str]]:
    """The headers /bodies sends with a saved body: of the ``stored`` response headers only
    Content-Encoding, ETag and Last-Modified as they are, the first Content-Type (else the
    page's ``mime``) when no browser would run it, every other one (hop-by-hop ones left out)
    as ``X-Harvester-Header-<Name>``; always a sandboxing CSP and ``nosniff``. An active type
    (``is_active_type``) or none is served as an ``application/octet-stream`` attachment, the
    original in ``X-Harvester-Content-Type``."""
    out: list[tuple[str, str]] = []
    content_type: str | None = None
    for name, value in stored:
        low = name.lower()
        if low == "content-type" and content_type is None:
            content_type = value
        elif low in _PASSED:
            out.append((name, value))
        elif low not in _HOP_BY_HOP:
            out.append(("X-Harvester-Header-" + name, value))
    if content_type is None:
        content_type = mime
    if content_type is not None and not is_active_type(content_type):
        out.append(("Content-Type", content_type))
    else:
        out.append(("Content-Type", "application/octet-stream"))
        if content_type:
            out.append(("X-Harvester-Content-Type", content_type))
        out.append(("Content-Disposition", "attachment"))
    out += [("Content-Security-Policy", "sandbox"), ("X-Content-Type-Options", "nosniff")]
    return out


def _name_pattern(spec: Mapping[str, Any]) -> tuple[str, str | None]:
    """The job's name pattern (its first tar or files output's, else ``{host}/{urlhash}``)
    and its urlFormat (for ``{id}``)."""
    pattern = DEFAULT_NAME
    for save in spec.get("save") or ():
        if save.get("kind") in ("tar", "files"):
            pattern = str(save.get("pattern", DEFAULT_NAME))
            break
    return pattern, (spec.get("ids") or {}).get("urlFormat")


def tar_entry(name: str, data: bytes, mtime: float) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
    header = info.tobuf(format=tarfile.PAX_FORMAT)
    return header + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


async def _tar_export(request: web.Request, job_id: int) -> web.StreamResponse:
    """A tar of the job's committed bodies, exactly one entry per page (its first saved body),
    named by the job's tar/files pattern, streamed."""
    deps = request.app[DEPS]
    root = request.app[SETTINGS].output_root
    spec = await _job_spec(deps, job_id, "bodies")
    pattern, url_format = _name_pattern(spec)
    first = await _read_on(deps, lambda c: jobs.job_yields(c, job_id, limit=CHUNK, kind="body"))
    resp = web.StreamResponse(headers={
        "Content-Type": "application/x-tar",
        "Content-Disposition": f'attachment; filename="job-{job_id}-bodies.tar"'})
    await resp.prepare(request)

    async def parts() -> AsyncIterator[bytes]:
        last = None
        now = time.time()
        async for chunk in _yields(deps, job_id, "body", first):
            for (url_id, _, _), y in chunk:
                if url_id == last:  # another output's copy of the same page
                    continue
                last = url_id
                try:
                    data, _headers = await _payload(deps, root, y.value)
                except NotFound as e:
                    log.warning("GET %s: %s", request.path_qs, e.message)
                    raise OSError(e.message) from None
                name = render(pattern, name_fields(y.url, url_id, data, url_format))
                yield tar_entry(name, data, now)
        yield b"\0" * (2 * tarfile.BLOCKSIZE)

    return await _stream(request, resp, parts())


# ---- GET /index/<jobId> ---------------------------------------------------------------------

def surt(url: str) -> str:
    """The SURT form of a URL as CDX indexes sort it: host labels reversed, comma-separated,
    ``)``, then path and query, lower-cased; ``www.`` and the default port dropped."""
    parts = urlsplit(url)
    host = (parts.hostname or "").removeprefix("www.")
    port = parts.port
    key = ",".join(reversed(host.split(".")))
    if port is not None and port != {"http": 80, "https": 443}.get(parts.scheme):
        key += f":{port}"
    rest = parts.path or "/"
    if parts.query:
        rest += "?" + "&".join(sorted(parts.query.split("&")))
    return (key + ")" + rest).lower()


def cdxj_line(url: str, ref: Mapping[str, Any],
              target: str | None = None) -> tuple[str, str, str]:
    """The CDXJ line of a committed WARC ref: keyed by the record's WARC-Target-URI
    (``target``: the final URL after redirects; else ``url``), the page's URL as
    ``original`` when it differs; ``filename`` relative to ``outputRoot``."""
    uri = target or url
    date = re.sub(r"\D", "", str(ref.get("date", "")))[:14].ljust(14, "0")
    fields = {"url": uri, "mime": ref.get("mime") or "unk", "status": str(ref.get("status", "")),
              "digest": str(ref.get("digest", "")).removeprefix("sha1:"),
              "length": str(ref.get("length")), "offset": str(ref.get("offset")),
              "filename": str(ref.get("file", ""))}
    if uri != url:
        fields["original"] = url
    key = surt(uri)
    return key, date, f"{key} {date} {_dumps(fields)}\n"


def warc_target(root: Path, ref: Mapping[str, Any]) -> str | None:
    """The WARC-Target-URI of the record at the ref (its headers only: the start of the gzip
    member is inflated until the blank line ending them); None when unreadable."""
    try:
        path = _path(root, str(ref.get("file") or ""))
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        head, left = b"", int(ref["length"])
        with path.open("rb") as f:
            f.seek(int(ref["offset"]))
            while b"\r\n\r\n" not in head and left > 0 and len(head) < 65536:
                block = f.read(min(4096, left))
                if not block:
                    break
                left -= len(block)
                head += inflate.decompress(block, 65536 - len(head))
    except (OSError, zlib.error, ValueError, KeyError, NotFound):
        return None
    for line in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"warc-target-uri":
            return value.strip().decode("utf-8", "replace").strip("<>")
    return None


def _index_lines(root: Path, chunk: list[Row]) -> str:
    lines = sorted(cdxj_line(y.url, y.value, warc_target(root, y.value)) for _, y in chunk
                   if y.value.get("output") == "warc")
    return "".join(line for _, _, line in lines)


async def cdx_index(request: web.Request) -> web.StreamResponse:
    """The job's CDXJ index of its committed WARC records, sorted by (SURT, date) within each
    chunk of pages (sort the whole for one global order)."""
    from web_server.routes import parse_job_id
    job_id = parse_job_id(request)
    deps = request.app[DEPS]
    root = request.app[SETTINGS].output_root
    await _job_spec(deps, job_id, "index")
    first = await _read_on(deps, lambda c: jobs.job_yields(c, job_id, limit=CHUNK, kind="body"))
    resp = web.StreamResponse(headers={"Content-Type": "text/x-cdxj; charset=utf-8"})
    await resp.prepare(request)

    async def parts() -> AsyncIterator[bytes]:
        async for chunk in _yields(deps, job_id, "body", first):
            yield (await asyncio.to_thread(_index_lines, root, chunk)).encode()

    return await _stream(request, resp, parts())


# ---- POST /idsets ---------------------------------------------------------------------------

UPLOADS = web.AppKey("idset_uploads", asyncio.Semaphore)
STALE_UPLOAD = timedelta(days=1)  # an incomplete set older than this is deleted


async def post_idset(request: web.Request) -> web.StreamResponse:
    """Newline-separated ids (any length up to ``maxIdSetBytes``, chunked or not), read line
    by line and written ``IDSET_CHUNK`` at a time, each chunk on a pooled connection of its
    own (committed, released before reading on): a slow client holds no connection and no
    transaction. The set stays incomplete (no job may name it) until ``finish_set``:
    ``{"idSet", "count"}``. Blank lines are skipped; a bad line is a 400 naming it, and the
    set is deleted. At most ``MAX_UPLOADS`` at once (a 503 beyond); each upload first deletes
    incomplete sets older than a day (uploads that died)."""
    limit = request.app[SETTINGS].max_idset_bytes
    refuse_too_large(request, limit)
    uploads = request.app[UPLOADS]
    if uploads.locked():
        return error_body("Unavailable", f"More than {MAX_UPLOADS} id set uploads at once; "
                          "try again later", 503, {"Retry-After": "5"})
    deps = request.app[DEPS]
    async with uploads:
        async with deps.acquire() as conn:
            await idsets.delete_stale(conn, STALE_UPLOAD)
            set_id = await idsets.create_set(conn)
        try:
            count = await _read_idset(request, deps, set_id, limit)
        except BaseException:
            try:  # nothing kept; if this fails too, the next upload a day on deletes it
                await asyncio.shield(_drop_set(deps, set_id))
            except (*RETRYABLE, DependencyUnavailable, asyncpg.PostgresError) as e:
                log.warning("POST /idsets: failed upload's set %s not deleted: %s", set_id, e)
            raise
    return json_response({"idSet": str(set_id), "count": count})


async def _drop_set(deps: Deps, set_id: UUID) -> None:
    async with deps.acquire() as conn:
        await idsets.delete_stale(conn, timedelta(0), set_id)


async def _add_members(deps: Deps, set_id: UUID, buf: list[str], count: int = -1) -> None:
    """One chunk on a connection of its own; with ``count``, the last one, then the set is
    complete (in one transaction)."""
    async with deps.acquire() as conn, conn.transaction():
        await idsets.add_members(conn, set_id, buf)
        if count >= 0:
            await idsets.finish_set(conn, set_id, count)


async def _read_idset(request: web.Request, deps: Deps, set_id: UUID, limit: int) -> int:
    count, size, line_no = 0, 0, 0
    buf: list[str] = []
    seconds = body_timeout(request)  # between two lines: a large set may take long, all told
    # No body at all (no Content-Length, not chunked): aiohttp's EmptyStreamReader has no
    # readuntil that works (AttributeError, a 500 schemathesis found); it is an empty set.
    while request.body_exists:
        try:
            async with asyncio.timeout(seconds):
                raw = await request.content.readuntil(b"\n")
        except TimeoutError:
            raise RequestTimeout(seconds) from None
        except asyncio.IncompleteReadError as e:
            raw = e.partial
        except ValueError:  # longer than the stream's buffer
            raise BadRequest(f"Invalid id at line {line_no + 1}: line too long") from None
        if not raw:
            break
        line_no += 1
        size += len(raw)
        if size > limit:
            raise PayloadTooLarge(f"Request body larger than {limit} bytes")
        if len(raw) > MAX_ID_LINE:
            raise BadRequest(f"Invalid id at line {line_no}: line too long")
        try:
            ident = raw.decode("utf-8").rstrip("\r\n").strip()
        except UnicodeDecodeError:
            raise BadRequest(f"Invalid id at line {line_no}: not UTF-8") from None
        if not ident:
            continue
        if (problem := check_id(ident)) is not None:
            raise BadRequest(f"Invalid id at line {line_no}: {problem}")
        buf.append(ident)
        count += 1
        if len(buf) >= IDSET_CHUNK:
            await _add_members(deps, set_id, buf)
            buf = []
    await _add_members(deps, set_id, buf, count)
    return count
