"""Sitemaps (sitemaps.org protocol): the <loc> URLs of a urlset or a sitemap index. No I/O."""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass, field
from xml.parsers import expat

from shared.urls import host_key, resolve

MAX_URLS = 50_000  # the protocol's own limit per sitemap
CHUNK = 64 * 1024  # bytes of XML parsed at a time


@dataclass
class Sitemap:
    urls: list[str] = field(default_factory=list)      # pages
    sitemaps: list[str] = field(default_factory=list)  # nested sitemaps (from an index)


def parse_sitemap(body: bytes, where: str, max_bytes: int = 50 << 20) -> Sitemap:
    """Pages and nested sitemaps listed in ``body`` (gzipped or not, read up to ``max_bytes``
    once expanded), canonical, on the sitemap's own host (the protocol forbids others);
    malformed or truncated XML gives what was read."""
    if body[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(body)) as f:
                body = f.read(max_bytes)
        except (OSError, EOFError):
            return Sitemap()
    out = Sitemap()
    reader = _LocReader(where, out.sitemaps if b"<sitemapindex" in body[:2048] else out.urls)
    # In chunks: expat holds the GIL while it scans, so a thread parsing a big sitemap lets
    # the event loop run between two chunks (and during the handlers, which are Python).
    try:
        for at in range(0, len(body), CHUNK):
            reader.parser.Parse(body[at:at + CHUNK], False)
        reader.parser.Parse(b"", True)
    except (expat.ExpatError, _Enough):
        pass
    return out


class _Enough(Exception):
    """``MAX_URLS`` found: stop parsing."""


class _LocReader:
    """Collects the ``<loc>`` URLs on the sitemap's own host as expat reads them. No tree is
    built: a 10 MiB sitemap makes no 100,000 objects for the garbage collector to go through
    (its full passes stop every thread, the event loop's included)."""

    def __init__(self, where: str, found: list[str]) -> None:
        self.where, self.home, self.found = where, host_key(where), found
        self.text: list[str] | None = None  # inside a <loc>: its text so far
        self.parser = expat.ParserCreate(namespace_separator=" ")
        self.parser.buffer_text = True
        self.parser.StartElementHandler = self._start
        self.parser.CharacterDataHandler = self._text
        self.parser.EndElementHandler = self._end

    def _start(self, name: str, attrs: object) -> None:
        if name.rsplit(" ", 1)[-1] == "loc":
            self.text = []

    def _text(self, data: str) -> None:
        if self.text is not None:
            self.text.append(data)

    def _end(self, name: str) -> None:
        if self.text is None or name.rsplit(" ", 1)[-1] != "loc":
            return
        url = resolve(self.where, "".join(self.text).strip())
        self.text = None
        if url is not None and host_key(url) == self.home:
            self.found.append(url)
            if len(self.found) >= MAX_URLS:
                raise _Enough
