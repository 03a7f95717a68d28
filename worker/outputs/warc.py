"""The ``warc`` output: every answer as a WARC/1.1 ``response`` record (status line, headers and
body as received) and the ``request`` record that asked for it, the bytes warcio's
``WARCWriter`` writes (built directly; the ``warcinfo`` record through warcio), each record its
own gzip member (level ``LEVEL``). Files ``{prefix}-{timestamp}-{serial:05d}-{hostname.pid}.warc.gz``
under ``<outputRoot>/job-<jobId>/warc/``, each starting with a ``warcinfo`` record, rotated at
``maxSize`` bytes (default 1 GB)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from shared.config import Settings
from shared.model import Extraction, FetchedPage, RawResponse, Yield
from worker.outputs import OUTPUTS, iso_now, job_dir, stamp, worker_host
from worker.outputs.rotate import Appender
from worker.tasks import Context

SOFTWARE = "Harvester"
REMEMBERED = 4096  # refs of the last records written by this process, for redeliveries


def record_id() -> str:
    """A new, globally unique WARC-Record-ID (WARC 1.1): every record written gets its own,
    so an orphan record and the committed re-fetch of the same bytes never share one."""
    return f"<urn:uuid:{uuid.uuid4()}>"


LEVEL = 2  # gzip level of each record: most of level 6's ratio for a third of its CPU
_INLINE = 64 * 1024  # answers up to this size are packed on the event loop (~0.2 ms)


def _gzip(*parts: bytes) -> bytes:
    """One gzip member holding ``parts``, fed without joining them first."""
    c = zlib.compressobj(LEVEL, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    out = [c.compress(p) for p in parts]
    out.append(c.flush())
    return b"".join(out)


def _record(writer_buf: io.BytesIO, writer: WARCWriter, record: Any) -> bytes:
    writer_buf.seek(0)
    writer_buf.truncate()
    writer.write_record(record)
    return _gzip(writer_buf.getvalue())


def _text(b: bytes) -> str:
    return b.decode("latin-1")


def _sha1(*parts: bytes) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(p)
    return "sha1:" + base64.b32encode(h.digest()).decode("ascii")


_EMPTY_SHA1 = _sha1(b"")


def _http_block(first: str, headers: list[tuple[str, str]]) -> bytes:
    """The HTTP status or request line and header lines, as warcio writes them: ASCII as they
    are; a block with any other character goes through warcio's own encoding (RFC 8187)."""
    lines = [first] + [f"{k}: {v}" for k, v in headers]
    text = "\r\n".join(lines) + "\r\n\r\n"
    if text.isascii():
        return text.encode("ascii")
    protocol, _, rest = first.partition(" ")
    if first.startswith("HTTP/"):
        sah = StatusAndHeaders(rest, headers, protocol=protocol)
    else:
        sah = StatusAndHeaders(first, headers, is_http_request=True)
    return bytes(sah.to_ascii_bytes())


def _member(kind: str, uri: str, rid: str, date: str, block: bytes, body: bytes,
            payload_digest: str, extra: str = "") -> bytes:
    """One WARC/1.1 record (``application/http`` block: ``block`` then ``body``) as its own
    gzip member: the record's header fields in warcio's order, each digest computed once."""
    head = (f"WARC/1.1\r\nWARC-Record-ID: {rid}\r\nWARC-Date: {date}\r\n{extra}"
            f"WARC-Type: {kind}\r\nWARC-Target-URI: {uri}\r\n"
            f"WARC-Payload-Digest: {payload_digest}\r\n"
            f"WARC-Block-Digest: {_sha1(block, body)}\r\n"
            f"Content-Type: application/http; msgtype={kind}\r\n"
            f"Content-Length: {len(block) + len(body)}\r\n\r\n").encode()
    return _gzip(head, block, body, b"\r\n\r\n")


def warcinfo(file_name: str, job_id: int, ruleset: int | None) -> bytes:
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=False, warc_version="1.1")
    info = {"software": SOFTWARE, "format": "WARC File Format 1.1",
            "conformsTo": "https://iipc.github.io/warc-specifications/specifications/"
                          "warc-format/warc-1.1/",
            "harvester-job": str(job_id)}
    if ruleset is not None:
        info["harvester-ruleset"] = str(ruleset)
    return _record(buf, writer, writer.create_warcinfo_record(file_name, info))


def build_records(uri: str, raw: RawResponse, date: str) -> tuple[bytes, int, str, str]:
    """(response member + request member, the response member's length, its
    WARC-Payload-Digest, its WARC-Record-ID). The records are the bytes warcio's
    ``WARCWriter`` makes for them (``tests/integration/test_outputs.py`` compares), written
    directly: warcio's record builder copies the body three times and digests it twice."""
    rid = record_id()
    digest = _sha1(raw.body)
    status = _text(raw.status_line)
    block = _http_block(status, [(_text(k), _text(v)) for k, v in raw.headers])
    first = _member("response", uri, rid, date, block, raw.body, digest)
    parts = urlsplit(uri)
    target = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                   safe="/?&=%:@!$'()*+,;~-._")  # a request line is ASCII
    sent = [(k, v) for k, v in raw.request_headers]
    if not any(k.lower() == "host" for k, _ in sent):
        sent.insert(0, ("Host", parts.netloc))
    request = _http_block(f"GET {target} HTTP/1.1", sent)
    second = _member("request", uri, record_id(), date, request, b"", _EMPTY_SHA1,
                     f"WARC-Concurrent-To: {rid}\r\n")
    return first + second, len(first), digest, rid


@OUTPUTS.register("warc")
class Warc:
    """Options: ``prefix`` (default ``harvester``), ``maxSize`` (bytes, default 10⁹). Yields
    ``Yield("body", {"output": "warc", "file", "offset", "length", "digest", "status", "mime",
    "date", "recordId"})``: ``file`` relative to ``outputRoot``, offset and length those of the
    response record's gzip member. A 304 (nothing new) is not written; every other answer is."""
    name = "warc"
    needs_raw = True

    def __init__(self, settings: Settings, options: Mapping[str, Any]) -> None:
        self.root = Path(settings.output_root)
        self.prefix = str(options.get("prefix", "harvester"))
        self.max_size = int(options.get("maxSize", options.get("max_size", 10**9)))
        self.ruleset: int | None = options.get("ruleset")
        self.host = worker_host()
        self._appender: Appender | None = None
        # (job, url id, WARC-Payload-Digest) -> the ref of the record written for it (the last
        # REMEMBERED): a redelivery of the same bytes to this process is not written again
        self._written: OrderedDict[tuple[int, int, str], dict[str, Any]] = OrderedDict()

    def _open(self, job_id: int) -> Appender:
        if self._appender is None:
            self._appender = Appender(
                job_dir(self.root, job_id, "warc"),
                lambda serial: f"{self.prefix}-{stamp()}-{serial:05d}-{self.host}.warc.gz",
                self.max_size, header=lambda name: warcinfo(name, job_id, self.ruleset),
                root=self.root)
        return self._appender

    async def write(self, ctx: Context, page: FetchedPage, ex: Extraction) -> tuple[Yield, ...]:
        raw = page.raw
        if raw is None or page.not_modified:
            return ()
        uri = page.final_url or ctx.url
        date = iso_now()
        if len(raw.body) <= _INLINE:  # a thread hop costs more than packing a small answer
            blob, length, digest, rid = build_records(uri, raw, date)
        else:
            blob, length, digest, rid = await asyncio.to_thread(build_records, uri, raw, date)
        key = (ctx.job_id, page.url_id, digest)
        known = self._written.get(key)
        if known is not None:  # redelivered to this process, same bytes: already written
            self._written.move_to_end(key)
            return (Yield("body", known),)
        file, offset = await self._open(ctx.job_id).append(blob)
        ref = {"output": "warc", "file": file, "offset": offset, "length": length,
               "digest": digest, "status": page.status, "mime": page.mime, "date": date,
               "recordId": rid}
        self._written[key] = ref
        if len(self._written) > REMEMBERED:
            self._written.popitem(last=False)
        return (Yield("body", ref),)

    async def close(self) -> None:
        if self._appender is not None:
            await self._appender.close()

    @property
    def files(self) -> list[str]:
        """The files written so far, relative to ``outputRoot``."""
        return [] if self._appender is None else list(self._appender.files)
