"""Outputs: where a job saves what it fetched (``OUTPUTS``, by kind; none built in yet: WARC,
files and tar come with issue 11). An output writes before the visit's commit transaction, so
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

from typing import Protocol, runtime_checkable

from shared.model import Extraction, FetchedPage, Yield
from worker.registry import Registry
from worker.tasks import Context


@runtime_checkable
class Output(Protocol):
    name: str
    needs_raw: bool

    async def write(self, ctx: Context, page: FetchedPage,
                    ex: Extraction) -> tuple[Yield, ...]: ...


OUTPUTS: Registry[Output] = Registry("output")
