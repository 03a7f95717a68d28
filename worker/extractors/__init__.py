"""Extractors: what a job pulls out of a fetched page (``EXTRACTORS``, by kind). Every job runs
its source's link extractor first (built in: ``links``, ``worker.extractors.links``); a job
with ``follow`` or ``ids`` runs ``follow`` next, and its spec's ``extract`` list adds others
(built in: ``items``; both in ``worker.extractors.rules``), whose yields (links and ids to
follow, items) are stored per page version and rule set. A factory takes ``(settings, options, lanes)``: the spec entry's options (every key
but ``kind``) and the worker's parser processes (``worker.extractors.lanes.Parser``), for work
too slow for the event loop.

Adding one (the text of a page's ``<title>``, as ``tests/plugins.py`` does)::

    @EXTRACTORS.register("test-title")
    class Title:
        name = "test-title"

        def __init__(self, settings: Settings, options: Mapping[str, Any], lanes: Parser):
            self.tag = options.get("tag", "title")

        def accepts(self, page: FetchedPage) -> bool:
            return page.body is not None and is_html(page.mime)

        async def extract(self, page: FetchedPage, base_url: str) -> Extraction:
            node = LexborHTMLParser(page.body).css_first(self.tag)
            text = node.text(strip=True) if node is not None else None
            return Extraction(yields=(Yield("item", {"title": text}),))

An extractor raises ``ExtractFailed`` when the page cannot be read (the visit fails for good,
"<name> not extracted: <why>") and ``ExtractLater`` when it cannot work now through no fault of
the page's (the visit goes back to the frontier, its attempt not counted).

This package imports nothing heavy: the parser processes (``python -m
worker.extractors.lanes``) import it on start.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from shared.model import Extraction, FetchedPage
from worker.registry import Registry


class ExtractFailed(Exception):
    """The page cannot be read: it fails for good (the same page would fail again)."""


class ExtractLater(Exception):
    """Not the page's fault (no parser process free): the visit is made again later."""


@runtime_checkable
class Extractor(Protocol):
    name: str

    def accepts(self, page: FetchedPage) -> bool:
        """Whether this page is for this extractor (cheap: called for every fetched page)."""

    async def extract(self, page: FetchedPage, base_url: str) -> Extraction:
        """What the page yields; ``base_url`` is where it was found (its final URL)."""


EXTRACTORS: Registry[Extractor] = Registry("extractor")

from worker.extractors import links as _links  # noqa: F401 - registers "links"
from worker.extractors import rules as _rules  # noqa: F401 - registers "follow", "items"
