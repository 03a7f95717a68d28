"""Outputs: where a job saves what it fetched (``OUTPUTS``, by kind; built in: ``warc``,
``files``, ``tar``, ``db``, docs/architecture.md "Outputs"). An output writes before the visit's commit transaction, so
it must be idempotent (a visit whose commit fails is made again); it returns yields (references
to what it wrote) that are committed with the page. ``needs_raw``: the fetcher keeps the answer
as received (``FetchedPage.raw``) for it. A failure of ``write`` fails that visit only.

Adding one (bodies in a content-addressed directory, as ``tests/plugins.py`` does)::

    @OUTPUTS.register("test-files")
    class Files:
        name = "test-files"
        needs_raw = True

        def __init__(self, settings: Settings, options: Mapping[str, Any]) -> None:
            self.root = Path(options["dir"])

        async def write(self, ctx: Context, page: FetchedPage,
                        ex: Extraction) -> tuple[Yield, ...]:
            if page.raw is None:
                return ()
            digest = hashlib.sha256(page.raw.body).hexdigest()
            (self.root / digest).write_bytes(page.raw.body)  # same name, same bytes: idempotent
            return (Yield("body", {"sha256": digest, "bytes": len(page.raw.body)}),)
"""

from __future__ import annotations

import datetime
import os
import re
import socket
from pathlib import Path
from typing import Protocol, runtime_checkable

from shared.model import Extraction, FetchedPage, Yield
from worker.registry import Registry
from worker.tasks import Context


@runtime_checkable
class Output(Protocol):
    """``close`` (optional, ``async def close(self) -> None``) is awaited once, when the job's
    outputs have been idle ``outputIdleClose`` (``JobPlans.close_idle``; the job's next page
    gets a new instance) or when the worker shuts down (``JobPlans.aclose``): a file it keeps
    open is finished there."""
    name: str
    needs_raw: bool

    async def write(self, ctx: Context, page: FetchedPage,
                    ex: Extraction) -> tuple[Yield, ...]: ...


OUTPUTS: Registry[Output] = Registry("output")


def job_dir(root: Path, job_id: int, kind: str) -> Path:
    """Where a job's output of one kind lives: ``<outputRoot>/job-<jobId>/<kind>``."""
    return root / f"job-{job_id}" / kind


def worker_host() -> str:
    """``hostname.pid``: the last part of a file name an output makes, so that each worker
    process of each run writes its own files (on a shared filesystem too)."""
    host = re.sub(r"[^A-Za-z0-9.]+", "_", socket.gethostname()) or "host"
    return f"{host}.{os.getpid()}"


def stamp(now: datetime.datetime | None = None) -> str:
    """UTC ``YYYYmmddHHMMSSfff``, the timestamp in a file name."""
    now = now or datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y%m%d%H%M%S") + f"{now.microsecond // 1000:03d}"


def iso_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


from worker.outputs import db, files, tar, warc  # noqa: F401 - register the built-ins
