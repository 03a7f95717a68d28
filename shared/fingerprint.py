"""Request fingerprints: which requests a job counts as one.

:func:`fingerprint` is Scrapy 1.5's ``request_fingerprint`` (parity with scrapy-redis crawls):
the SHA-1 of the method, w3lib's canonical URL (query sorted, fragment dropped, default ports
kept), the body, then each included header the request has (names lower-cased and sorted:
the name, then each value). For a GET without included headers two URLs have the same
fingerprint exactly when they have the same canonical URL (``shared.urls.canonicalize``), so a
job's ``job_visit`` key (job_id, url_id) is its fingerprint key: a URL is visited at most once
per job, whichever worker finds it first (``INSERT ... ON CONFLICT`` in the parent's commit).

:class:`JobFingerprint` is a job's ``fingerprint`` options applied to its URLs: the query
parameters it ignores are dropped before a URL is stored, so variants collapse into one row;
with ``keepFragment`` its URLs keep their fragments (``shared.urls.canonicalize(url,
keep_fragment=True)``, Scrapy's ``keep_fragments``): ``/p#a`` and ``/p#b`` are two URLs of the
job, two rows, each visited, each fetched as ``/p`` (the fragment is never sent: aiohttp drops it
from the request).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from w3lib.url import canonicalize_url

HeaderValue = str | bytes | Sequence[str | bytes]


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def fingerprint(method: str, url: str, body: bytes = b"",
                headers: Mapping[str, HeaderValue] | None = None,
                include_headers: Iterable[str] = (), keep_fragments: bool = False) -> str:
    """The hex SHA-1 fingerprint of a request (Scrapy 1.5's algorithm). ``headers`` by name
    (any case), each a value or a list of values; only the names in ``include_headers`` count,
    and only when the request has them. ``keep_fragments``: the URL's fragment counts
    (Scrapy 2's ``request_fingerprint`` argument of that name)."""
    fp = hashlib.sha1()
    fp.update(method.encode("ascii"))
    fp.update(canonicalize_url(url, keep_fragments=keep_fragments).encode("utf-8"))
    fp.update(body or b"")
    included = sorted({h.lower() for h in include_headers})
    if included and headers:
        by_name = {k.lower(): v for k, v in headers.items()}
        for name in included:
            if name not in by_name:
                continue
            fp.update(name.encode("ascii"))
            value = by_name[name]
            for v in ([value] if isinstance(value, str | bytes) else value):
                fp.update(_bytes(v))
    return fp.hexdigest()


@dataclass(frozen=True, slots=True)
class JobFingerprint:
    """A job's ``fingerprint`` options (``shared.jobspec.FingerprintSpec``) over its URLs."""

    ignore_params: tuple[str, ...] = ()
    include_headers: tuple[str, ...] = ()
    keep_fragment: bool = False

    @classmethod
    def from_stored(cls, spec: Mapping[str, Any]) -> JobFingerprint | None:
        """The job's options from its stored spec, or None when it changes no URL (no
        ``fingerprint``, or one with neither ``ignoreParams`` nor ``keepFragment``): a default
        job pays nothing."""
        options = spec.get("fingerprint")
        if not options or not (options.get("ignoreParams") or options.get("keepFragment")):
            return None
        return cls(tuple(p.lower() for p in options.get("ignoreParams") or ()),
                   tuple(h.lower() for h in options.get("includeHeaders") or ()),
                   bool(options.get("keepFragment")))

    def link_rewrite(self) -> Callable[[Iterable[tuple[str, str]]],
                                       tuple[tuple[str, str], ...]] | None:
        """The worker's rewrite of a page's links (:meth:`rewrite_links`), None when there is
        nothing to rewrite (no ``ignoreParams``: the fragments are the link extractor's)."""
        return self.rewrite_links if self.ignore_params else None

    def _ignored(self, name: str) -> bool:
        lowered = name.lower()
        return any(fnmatchcase(lowered, p) for p in self.ignore_params)

    def canonical(self, url: str) -> str:
        """A canonical URL without the ignored query parameters (still canonical: the
        remaining arguments keep their sorted order; its fragment, if any, kept)."""
        if not self.ignore_params:
            return url
        parts = urlsplit(url)
        if not parts.query:
            return url
        kept = [a for a in parts.query.split("&") if not self._ignored(a.partition("=")[0])]
        query = "&".join(kept)
        if query == parts.query:
            return url
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))

    def rewrite_links(self, links: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
        """A page's (url, guessed type) links as the job counts them (the worker's rewrite):
        each URL by :meth:`canonical`, sorted, each once (the type of its first link kept)."""
        out: dict[str, str] = {}
        for url, mime in links:
            out.setdefault(self.canonical(url), mime)
        return tuple(sorted(out.items()))

    def rewrite(self, links: Iterable[str]) -> list[str]:
        """Canonical links rewritten by :meth:`rewrite_links`: sorted, without duplicates."""
        return [u for u, _ in self.rewrite_links((u, "") for u in links)]
