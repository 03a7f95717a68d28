"""The ``web`` source: web sites over HTTP; 2xx HTML bodies are read for their links."""

from __future__ import annotations

from collections.abc import Mapping

from shared.config import Settings
from worker.extractors import Extractor
from worker.extractors.lanes import Parser
from worker.extractors.links import HtmlLinks
from worker.fetchers.http import NO_HEADERS, html_2xx
from worker.retry import RetryPolicy
from worker.sources import SOURCES


@SOURCES.register("web")
class Web:
    name = "web"
    fetcher = "http"
    obeys_robots = True

    def __init__(self, settings: Settings, lanes: Parser) -> None:
        self.policy = RetryPolicy.from_settings(settings)
        self.links = HtmlLinks(settings, {}, lanes)

    def request_headers(self, url: str) -> Mapping[str, str]:
        return NO_HEADERS

    def wants_body(self, status: int, mime: str | None) -> bool:
        return html_2xx(status, mime)

    def link_extractor(self) -> Extractor:
        return self.links
