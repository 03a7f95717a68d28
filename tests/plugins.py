"""Plug-ins for the tests, one of each kind, registered on import; each also serves as the worked
example of adding one (docs/architecture.md, "Extending Harvester"). ``LOG`` records the steps
they ran, in order: ("fetch" | "extract" | "task" | "output", url)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Self

from selectolax.lexbor import LexborHTMLParser

from shared.config import Settings
from shared.mime import is_html
from shared.model import Extraction, FetchedPage, RawResponse, Yield
from worker.extractors import EXTRACTORS
from worker.extractors.lanes import Parser
from worker.fetchers import FETCHERS, FetchRequest, HopGate
from worker.outputs import OUTPUTS
from worker.tasks import TASKS, Context, RetryLater

LOG: list[tuple[str, str]] = []
PAGES: dict[str, bytes] = {}  # what the static fetcher serves, by URL (HTML pages)


@FETCHERS.register("static")
class StaticFetcher:
    """Serves ``PAGES`` as 200 text/html; any other URL is a 404. No network."""
    kind = "static"

    def __init__(self, settings: Settings, concurrency: int) -> None:
        self.pages = PAGES

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def fetch(self, req: FetchRequest, hops: HopGate | None) -> FetchedPage:
        LOG.append(("fetch", req.url))
        body = self.pages.get(req.url)
        if body is None:
            return FetchedPage(req.url_id, 404, None, "HTTP 404 Not Found", cacheable=True)
        raw = RawResponse(b"HTTP/1.1 200 OK", ((b"Content-Type", b"text/html"),), body)
        return FetchedPage(req.url_id, 200, "text/html", None, cacheable=True,
                           body=body if req.wants_body(200, "text/html") else None,
                           raw=raw if req.keep_raw else None)


@EXTRACTORS.register("test-title")
class Title:
    """One item: the text of the page's ``<title>`` (option ``tag``: another element's)."""
    name = "test-title"

    def __init__(self, settings: Settings, options: Mapping[str, Any], lanes: Parser) -> None:
        self.tag = str(options.get("tag", "title"))

    def accepts(self, page: FetchedPage) -> bool:
        return page.body is not None and page.mime is not None and is_html(page.mime)

    async def extract(self, page: FetchedPage, base_url: str) -> Extraction:
        LOG.append(("extract", base_url))
        node = LexborHTMLParser(page.body).css_first(self.tag)
        text = node.text(strip=True) if node is not None else None
        return Extraction(yields=(Yield("item", {"title": text}),))


@TASKS.register("test-record")
class Record:
    """Records each page it sees and adds its status as an item; option ``retry_in``: asks
    to be run again that many seconds later instead, every time."""
    name = "test-record"

    def __init__(self, settings: Settings, options: Mapping[str, Any]) -> None:
        self.retry_in: float | None = options.get("retry_in")

    async def __call__(self, ctx: Context, page: FetchedPage, ex: Extraction) -> Extraction:
        LOG.append(("task", ctx.url))
        if self.retry_in is not None:
            raise RetryLater(self.retry_in, "not ready yet")
        return replace(ex, yields=(*ex.yields, Yield("item", {"status": page.status})))


@OUTPUTS.register("test-files")
class Files:
    """Each answer's raw body in ``options["dir"]``, named by its SHA-256 (idempotent: the
    same name always holds the same bytes); yields a reference to it."""
    name = "test-files"
    needs_raw = True

    def __init__(self, settings: Settings, options: Mapping[str, Any]) -> None:
        self.root = Path(options["dir"])

    async def write(self, ctx: Context, page: FetchedPage, ex: Extraction) -> tuple[Yield, ...]:
        LOG.append(("output", ctx.url))
        if page.raw is None:
            return ()
        digest = hashlib.sha256(page.raw.body).hexdigest()
        (self.root / digest).write_bytes(page.raw.body)
        return (Yield("body", {"sha256": digest, "bytes": len(page.raw.body)}),)
