"""Sitemaps (sitemaps.org protocol): the <loc> URLs of a urlset or a sitemap index. No I/O."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from xml.parsers import expat

from shared.urls import host_key, resolve

MAX_URLS = 50_000  # the protocol's own limit per sitemap
CHUNK = 64 * 1024  # bytes of XML parsed at a time


@dataclass
class Sitemap:
    urls: list[str] = field(default_factory=list)      # pages
    sitemaps: list[str] = field(default_factory=list)  # nested sitemaps (from an index)


async def parse_sitemap(body: bytes, where: str, max_bytes: int = 50 << 20) -> Sitemap:
    """Pages and nested sitemaps listed in ``body`` (gzipped or not, read up to ``max_bytes``
    once expanded), canonical, on the sitemap's own host (the protocol forbids others);
    malformed or truncated XML gives what was read. Parsed ``CHUNK`` bytes at a time (a few
    milliseconds each; 10 MiB take about a third of a second of CPU), letting the event loop
    run its other work between the pieces."""
    reader = SitemapReader(where)
    for chunk in xml_chunks(body, max_bytes):
        if reader.feed(chunk):
            break
        await asyncio.sleep(0)
    return reader.close()


def xml_chunks(body: bytes, max_bytes: int) -> Iterator[bytes]:
    """A sitemap's XML, expanded if gzipped (up to ``max_bytes``), in pieces of ``CHUNK`` bytes
    or less: a caller can parse 10 MiB a piece at a time and let other work run in between."""
    if body[:2] != b"\x1f\x8b":
        for at in range(0, len(body), CHUNK):
            yield body[at:at + CHUNK]
        return
    expand = zlib.decompressobj(16 + zlib.MAX_WBITS)
    left = max_bytes
    try:
        while left > 0 and not expand.eof:
            piece = expand.decompress(body, min(CHUNK, left))
            body = expand.unconsumed_tail
            if not piece:
                return  # truncated: what was expanded is all there is
            left -= len(piece)
            yield piece
    except zlib.error:
        return


class _Enough(Exception):
    """``MAX_URLS`` found: stop parsing."""


class SitemapReader:
    """Collects the ``<loc>`` URLs on the sitemap's own host as expat reads its XML, fed a piece
    at a time. No tree is built: a 10 MiB sitemap makes no 100,000 objects for the garbage
    collector to go through."""

    def __init__(self, where: str) -> None:
        self.where, self.home = where, host_key(where)
        self.out = Sitemap()
        self.found: list[str] | None = None  # out.urls or out.sitemaps, from the first piece
        self.text: list[str] | None = None  # inside a <loc>: its text so far
        self.done = False
        self.parser = expat.ParserCreate(namespace_separator=" ")
        self.parser.buffer_text = True
        self.parser.StartElementHandler = self._start
        self.parser.CharacterDataHandler = self._text
        self.parser.EndElementHandler = self._end

    def feed(self, xml: bytes) -> bool:
        """Parse the next piece; True once nothing more will be read (``MAX_URLS`` found, or
        malformed XML)."""
        if self.found is None:
            self.found = self.out.sitemaps if b"<sitemapindex" in xml[:2048] else self.out.urls
        if not self.done:
            try:
                self.parser.Parse(xml, False)
            except (expat.ExpatError, _Enough):
                self.done = True
        return self.done

    def close(self) -> Sitemap:
        """What was read (truncated XML ends here, keeping what came before)."""
        if not self.done:
            try:
                self.parser.Parse(b"", True)
            except (expat.ExpatError, _Enough):
                pass
            self.done = True
        return self.out

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
        if url is not None and host_key(url) == self.home and self.found is not None:
            self.found.append(url)
            if len(self.found) >= MAX_URLS:
                raise _Enough
