"""Sources: what kind of site a job crawls (``SOURCES``, by name; built in: ``web``,
``worker.sources.web``): its fetcher kind, its retry rule (a JSON API may answer a spent rate
limit with a 403), the headers it adds to each request, which answers' bodies it reads and the
extractor of the links to follow, and whether the gate reads robots.txt for its visits
(``obeys_robots``: a web crawler does; an authenticated client of a documented API, bound by
the API's terms and rate limits, does not). A factory takes ``(settings, lanes)``.

Adding one (a JSON API whose rate limit is a 403 with ``X-RateLimit-Remaining: 0``)::

    @SOURCES.register("api")
    class Api:
        name = "api"
        fetcher = "http"
        obeys_robots = True

        def __init__(self, settings: Settings, lanes: Parser) -> None:
            self.policy = RateLimitedPolicy.from_settings(settings)  # a RetryPolicy subclass
            self.links = JsonLinks()

        def request_headers(self, url: str) -> Mapping[str, str]:
            return {"Accept": "application/json"}

        def wants_body(self, status: int, mime: str | None) -> bool:
            return 200 <= status < 300 and mime == "application/json"

        def link_extractor(self) -> Extractor:
            return self.links
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from worker.extractors import Extractor
from worker.registry import Registry
from worker.retry import RetryPolicy


@runtime_checkable
class Source(Protocol):
    name: str
    fetcher: str
    obeys_robots: bool
    policy: RetryPolicy

    def request_headers(self, url: str) -> Mapping[str, str]: ...

    def wants_body(self, status: int, mime: str | None) -> bool: ...

    def link_extractor(self) -> Extractor: ...


SOURCES: Registry[Source] = Registry("source")

from worker.sources import github as _github  # noqa: F401 - registers "github"
from worker.sources import web as _web  # noqa: F401 - registers "web"
