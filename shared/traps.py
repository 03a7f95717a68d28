"""Crawler traps: URLs a crawl should not go down however many a site links to (calendars,
session ids in paths, query strings that grow a parameter a page). A job's ``traps``
(``shared.jobspec.TrapSpec``) over the foreman's settings give its :class:`TrapLimits`; the
foreman checks each visit of a link (level > 0: a job URL is the client's choice) once, before
it is answered from the store or forwarded, and records a trap as ``blocked`` with its reason
(``shared.db.visits.block``). Pure, no I/O, a few microseconds a URL.

A link whose URL holds credentials (``user:pass@``; aiohttp would send them as Basic auth) is
blocked too, "credentials in URL". Every reason starts with ``shared.robots.BLOCKED_PREFIX``.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.robots import BLOCKED_CREDENTIALS, TRAP
from shared.urls import authority_end

if TYPE_CHECKING:
    from shared.config import Settings

# The job spec's keys (camelCase) and their hard caps; each limit is 1 at least.
SPEC_KEYS = {"max_url_length": "maxUrlLength", "max_path_depth": "maxPathDepth",
             "max_segment_repeats": "maxSegmentRepeats", "max_query_params": "maxQueryParams",
             "max_param_repeats": "maxParamRepeats", "max_chain_level": "maxChainLevel"}
HARD_CAPS = {"max_url_length": 65536, "max_path_depth": 1024, "max_segment_repeats": 1024,
             "max_query_params": 1024, "max_param_repeats": 1024, "max_chain_level": 2**31 - 1}


@dataclass(frozen=True, slots=True)
class TrapLimits:
    """The limits a link's URL and its level must keep (the defaults are the settings')."""

    max_url_length: int = 2048
    max_path_depth: int = 32
    max_segment_repeats: int = 3
    max_query_params: int = 32
    max_param_repeats: int = 4
    max_chain_level: int = 200

    @classmethod
    def of(cls, spec_traps: Mapping[str, Any] | str | None, settings: Settings) -> TrapLimits:
        """A job's limits: its ``traps`` (the stored spec's, JSON text or a dict, camelCase;
        None: none given) over ``settings``'; cached."""
        base = tuple(getattr(settings, name) for name in SPEC_KEYS)
        if spec_traps is None or isinstance(spec_traps, str):
            return _limits(spec_traps, base)
        return _limits(json.dumps(dict(spec_traps), sort_keys=True), base)

    def check(self, url: str, level: int) -> str | None:
        """Why a link to ``url`` (canonical, as the frontier stores it), ``level`` links from
        its job URL, is a trap; None when it is not."""
        if len(url) > self.max_url_length:
            return f"{TRAP} (URL longer than {self.max_url_length} characters)"
        start = url.find("://") + 3
        end = authority_end(url, start)
        if "@" in url[start:end]:
            return BLOCKED_CREDENTIALS
        rest = url[end:]
        if "#" in rest:
            rest = rest[:rest.index("#")]
        path, _, query = rest.partition("?")
        depth = path.count("/")
        if depth > self.max_path_depth:
            return f"{TRAP} (path deeper than {self.max_path_depth} segments)"
        if depth > self.max_segment_repeats:  # else no segment can repeat more often
            segments = [s for s in path.split("/") if s]
            # a segment n times makes n - 1 duplicates: count only when there are enough
            if (len(segments) - len(set(segments)) >= self.max_segment_repeats
                    and _most(segments) > self.max_segment_repeats):
                return (f"{TRAP} (path segment repeated more than "
                        f"{self.max_segment_repeats} times)")
        if query:
            params = query.count("&") + 1
            if params > self.max_query_params:
                return f"{TRAP} (more than {self.max_query_params} query parameters)"
            if params > self.max_param_repeats:
                names = [p.partition("=")[0] for p in query.split("&")]
                if (len(names) - len(set(names)) >= self.max_param_repeats
                        and _most(names) > self.max_param_repeats):
                    return (f"{TRAP} (query parameter repeated more than "
                            f"{self.max_param_repeats} times)")
        if level > self.max_chain_level:
            return f"{TRAP} (more than {self.max_chain_level} links from the job URL)"
        return None


def _most(items: list[str]) -> int:
    return max(Counter(items).values())


@functools.lru_cache(maxsize=256)
def _limits(spec_traps: str | None, base: tuple[int, ...]) -> TrapLimits:
    given = json.loads(spec_traps) if spec_traps else {}
    if not isinstance(given, dict):
        given = {}
    values = []
    for key, default in zip(SPEC_KEYS.values(), base, strict=True):  # the fields' order
        v = given.get(key)
        values.append(v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else default)
    return TrapLimits(*values)
