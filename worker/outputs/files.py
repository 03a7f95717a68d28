"""The ``files`` output: each 2xx page's body (its Content-Encoding undone) as one file under
``<outputRoot>/job-<jobId>/files/``, named by the ``pattern`` option (``shared.naming``: ``{id}``,
``{host}``, ``{path}``, ``{sha1}``, shards such as ``{id[:2]}/{id}.xml``; default
``{host}/{urlhash}``). Written to a temporary name and renamed over the final one, so a reader
never sees half a file and the same page saved twice is one file."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.config import Settings
from shared.model import Extraction, FetchedPage, Yield
from shared.naming import name_fields, render
from worker.outputs import OUTPUTS, iso_now, job_dir
from worker.tasks import Context

DEFAULT_PATTERN = "{host}/{urlhash}"


def payload(page: FetchedPage) -> bytes | None:
    """What ``files`` and ``tar`` keep of a page: a 2xx body, decoded (None: nothing)."""
    if page.status is None or not 200 <= page.status < 300 or page.not_modified:
        return None
    return page.body


def _save(dir: Path, pattern: str, fields: tuple[str, int, str | None], data: bytes) -> Path:
    url, url_id, url_format = fields
    path = dir / render(pattern, name_fields(url, url_id, data, url_format))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


@OUTPUTS.register("files")
class Files:
    """Options: ``pattern``; ``urlFormat`` (the job's ``ids.urlFormat``, for ``{id}``). Yields
    ``Yield("body", {"output": "files", "file", "offset": 0, "length", "digest":
    "sha256:<hex>", "status", "mime", "date"})``, ``file`` relative to ``outputRoot``."""
    name = "files"
    needs_raw = False

    def __init__(self, settings: Settings, options: Mapping[str, Any]) -> None:
        self.root = Path(settings.output_root)
        self.pattern = str(options.get("pattern", DEFAULT_PATTERN))
        self.url_format: str | None = options.get("urlFormat")

    async def write(self, ctx: Context, page: FetchedPage, ex: Extraction) -> tuple[Yield, ...]:
        data = payload(page)
        if data is None:
            return ()
        path = await asyncio.to_thread(_save, job_dir(self.root, ctx.job_id, "files"),
                                       self.pattern, (ctx.url, page.url_id, self.url_format),
                                       data)  # hashing, naming and writing off the event loop
        return (Yield("body", {"output": "files", "file": os.path.relpath(path, self.root),
                               "offset": 0, "length": len(data),
                               "digest": f"sha256:{hashlib.sha256(data).hexdigest()}",
                               "status": page.status, "mime": page.mime,
                               "date": iso_now()}),)
