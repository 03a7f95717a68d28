"""The ``links`` extractor: an HTML page's links, parsed in the worker's parser processes
(``worker.extractors.lanes``) within the parse deadline."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shared.mime import is_html
from shared.model import Extraction, FetchedPage
from worker.extractors import EXTRACTORS

if TYPE_CHECKING:  # this package is imported by the parser processes: nothing heavy, and not
    # the lanes module, which they run as __main__
    from shared.config import Settings
    from worker.extractors.lanes import Parser


@EXTRACTORS.register("links")
class HtmlLinks:
    """Links of HTML pages (canonical URL and guessed type, sorted by URL). Raises
    ``ParseFailed`` (fails the page for good) or ``NoLane`` (later) as the parser does.
    ``keepFragment`` (a job's ``fingerprint.keepFragment``, see ``keeping_fragments``): each
    link keeps its fragment."""
    name = "links"

    def __init__(self, settings: Settings | None, options: Mapping[str, Any],
                 lanes: Parser) -> None:
        self.settings = settings
        self.lanes = lanes
        self.keep_fragments = bool(options.get("keepFragment"))

    def keeping_fragments(self) -> HtmlLinks:
        """This extractor, its links keeping their fragments."""
        if self.keep_fragments:
            return self
        return HtmlLinks(self.settings, {"keepFragment": True}, self.lanes)

    def accepts(self, page: FetchedPage) -> bool:
        return page.body is not None and page.mime is not None and is_html(page.mime)

    async def extract(self, page: FetchedPage, base_url: str) -> Extraction:
        assert page.body is not None
        return Extraction(tuple(await self.lanes.links(page.body, base_url, page.charset,
                                                       self.keep_fragments)))
