"""The ``tar`` output: each 2xx page's body (its Content-Encoding undone) as one entry of a tar
archive under ``<outputRoot>/job-<jobId>/tar/``, one archive per worker process and run,
``{prefix}-{timestamp}-{serial:05d}-{hostname.pid}.tar[.gz|.bz2]``, rotated at ``maxSize``.

Each entry (its header blocks, the data, the padding) is appended whole by an ``Appender``
and, compressed, is its own gzip or bzip2 member: concatenated members are one valid stream
for tar, gzip, bzip2 and Python's tarfile, each entry's offset is known, and a worker killed
mid-crawl leaves an archive whose every complete entry reads back (only the end-of-archive
blocks are missing, which readers do not need). ``close`` (SIGTERM) appends them. A new run
writes a new archive: an earlier one is never opened again, let alone truncated."""

from __future__ import annotations

import asyncio
import bz2
import tarfile
import time
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.config import Settings
from shared.model import Extraction, FetchedPage, Yield
from shared.naming import name_fields, render
from worker.outputs import OUTPUTS, iso_now, job_dir, stamp, worker_host
from worker.outputs.files import DEFAULT_PATTERN, payload
from worker.outputs.rotate import Appender
from worker.tasks import Context

SUFFIX = {"none": ".tar", "gz": ".tar.gz", "bz2": ".tar.bz2"}
END = bytes(2 * tarfile.BLOCKSIZE)  # end-of-archive: two zero blocks
REMEMBERED = 4096  # refs of the last entries written by this process, for redeliveries


def compress(data: bytes, compression: str) -> bytes:
    """``data`` as one member of the archive's compression."""
    if compression == "gz":
        c = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS | 16)
        return c.compress(data) + c.flush()
    if compression == "bz2":
        return bz2.compress(data, 6)
    return data


def entry(name: str, data: bytes, compression: str) -> tuple[bytes, int]:
    """(the entry as stored, the length of its header blocks). CPU work: run it in a thread."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    pad = -len(data) % tarfile.BLOCKSIZE
    return compress(header + data + bytes(pad), compression), len(header)


def _named(pattern: str, url: str, url_id: int, url_format: str | None,
           data: bytes, compression: str) -> tuple[str, str, bytes, int]:
    fields = name_fields(url, url_id, data, url_format)
    name = render(pattern, fields)
    blob, header = entry(name, data, compression)
    return name, fields["sha256"], blob, header


@OUTPUTS.register("tar")
class Tar:
    """Options: ``pattern`` (entry names, ``shared.naming``; default ``{host}/{urlhash}``),
    ``compression`` (``none``, ``gz``, ``bz2``), ``maxSize`` (default 10⁹), ``prefix``
    (default ``harvester``), ``urlFormat`` (the job's ``ids.urlFormat``, for ``{id}``). Yields
    ``Yield("body", {"output": "tar", "file", "offset", "length", "digest": "sha256:<hex>",
    "status", "mime", "date", "member", "header", "size"})``: offset and length of the stored
    (compressed) entry, which starts with ``header`` bytes of tar header, then ``size`` bytes
    of data. The same name with the same bytes again in this run is not appended again."""
    name = "tar"
    needs_raw = False

    def __init__(self, settings: Settings, options: Mapping[str, Any]) -> None:
        self.root = Path(settings.output_root)
        self.pattern = str(options.get("pattern", DEFAULT_PATTERN))
        self.compression = str(options.get("compression", "none"))
        if self.compression not in SUFFIX:
            raise ValueError(f"tar compression must be none, gz or bz2: {self.compression!r}")
        self.max_size = int(options.get("maxSize", options.get("max_size", 10**9)))
        self.prefix = str(options.get("prefix", "harvester"))
        self.url_format: str | None = options.get("urlFormat")
        self.host = worker_host()
        self._appender: Appender | None = None
        self._written: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()

    def _open(self, job_id: int) -> Appender:
        if self._appender is None:
            suffix = SUFFIX[self.compression]
            self._appender = Appender(
                job_dir(self.root, job_id, "tar"),
                lambda serial: f"{self.prefix}-{stamp()}-{serial:05d}-{self.host}{suffix}",
                self.max_size, footer=compress(END, self.compression), root=self.root)
        return self._appender

    async def write(self, ctx: Context, page: FetchedPage, ex: Extraction) -> tuple[Yield, ...]:
        data = payload(page)
        if data is None:
            return ()
        name, sha256, blob, header = await asyncio.to_thread(
            _named, self.pattern, ctx.url, page.url_id, self.url_format, data, self.compression)
        known = self._written.get((name, sha256))
        if known is not None:  # redelivered to this process, same bytes: already there
            self._written.move_to_end((name, sha256))
            return (Yield("body", known),)
        file, offset = await self._open(ctx.job_id).append(blob)
        ref = {"output": "tar", "file": file, "offset": offset, "length": len(blob),
               "digest": f"sha256:{sha256}", "status": page.status, "mime": page.mime,
               "date": iso_now(), "member": name, "header": header, "size": len(data)}
        self._written[(name, sha256)] = ref
        if len(self._written) > REMEMBERED:
            self._written.popitem(last=False)
        return (Yield("body", ref),)

    async def close(self) -> None:
        if self._appender is not None:
            await self._appender.close()

    @property
    def files(self) -> list[str]:
        """The archives written so far, relative to ``outputRoot``."""
        return [] if self._appender is None else list(self._appender.files)
