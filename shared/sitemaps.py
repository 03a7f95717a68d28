"""Sitemaps (sitemaps.org protocol): the <loc> URLs of a urlset or a sitemap index. No I/O."""

from __future__ import annotations

import gzip
import io
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

from shared.urls import host_key, resolve

MAX_URLS = 50_000  # the protocol's own limit per sitemap


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
    home = host_key(where)
    parser: ET.XMLPullParser = ET.XMLPullParser(events=("end",))
    try:
        parser.feed(body)
        parser.close()
    except ET.ParseError:
        pass
    found = out.sitemaps if b"<sitemapindex" in body[:2048] else out.urls
    events = cast(Iterator[tuple[str, object]], parser.read_events())  # typeshed is too narrow
    for _, el in events:
        if not isinstance(el, ET.Element) or el.tag.rsplit("}", 1)[-1] != "loc" or not el.text:
            continue
        url = resolve(where, el.text.strip())
        if url is not None and host_key(url) == home:
            found.append(url)
            if len(found) >= MAX_URLS:
                break
    return out
