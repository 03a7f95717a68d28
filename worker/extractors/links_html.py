"""Link extraction from HTML with selectolax: one parse, one CSS query, resolved, de-duplicated."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from selectolax.lexbor import LexborCSSSelector, LexborNode
from selectolax.lexbor import LexborHTMLParser as _Parser

from shared.urls import FragmentResolver, Resolver, resolve

# Elements that can carry a link; <img> and <source> may have srcset without src.
_SELECTOR = "base[href],a[href],area[href],link[href],img,source,script[src],iframe[src],frame[src]"
# Which attributes of each element hold a single URL; srcset is handled separately.
_URL_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "a": ("href",),
    "area": ("href",),
    "link": ("href",),
    "img": ("src",),
    "source": ("src",),
    "script": ("src",),
    "iframe": ("src",),
    "frame": ("src",),
}
_SRCSET_TAGS = frozenset({"img", "source"})
_HTML_WHITESPACE = " \t\n\r\f"
_CANDIDATE_SEPARATORS = _HTML_WHITESPACE + ","


def extract_links(body: bytes | str, base_url: str, encoding: str | None = None,
                  keep_fragments: bool = False) -> list[str]:
    """Return the canonical http(s) links of a page, de-duplicated, in document order; with
    ``keep_fragments`` (a job's ``fingerprint.keepFragment``) each keeps its fragment."""
    html = decode_body(body, encoding)
    base: str | None = None
    base_seen = False
    raw: list[str] = []
    for node in _link_nodes(_Parser(html)):
        attributes = node.attributes
        tag = node.tag or ""
        if tag == "base":
            # Only the first <base href> counts, even when its URL is unusable.
            if not base_seen:
                base, base_seen = _base_from(attributes, base_url), True
            continue
        raw.extend(_values(tag, attributes))
    return _resolve_all((FragmentResolver if keep_fragments else Resolver)(base or base_url), raw)


def _link_nodes(document: _Parser) -> list[LexborNode]:
    """``document.css(_SELECTOR)`` through this thread's selector, made once: ``css`` makes a
    parser's own on first use (lexbor's CSS parser and selector engine), about a tenth of a
    page's extraction each time."""
    root = document.root
    if root is None:
        return []
    selector = getattr(_local, "selector", None)
    if selector is None:
        selector = _local.selector = LexborCSSSelector()  # type: ignore[no-untyped-call]
    return selector.find(_SELECTOR, root)


_local = threading.local()


def decode_body(body: bytes | str, encoding: str | None = None) -> str:
    """Decode a response body with ``encoding`` (UTF-8 if absent or unknown), replacing errors."""
    if isinstance(body, str):
        return body
    if encoding:
        try:
            return body.decode(encoding, errors="replace")
        except LookupError:
            pass
    return body.decode("utf-8", errors="replace")


def _base_from(attributes: dict[str, Any], base_url: str) -> str | None:
    """The document base set by a <base href>, resolved against the page URL."""
    href = attributes.get("href")
    return resolve(base_url, href) if isinstance(href, str) else None


def _values(tag: str, attributes: dict[str, Any]) -> Iterator[str]:
    """Raw URL strings of one element, in attribute-table order."""
    for name in _URL_ATTRIBUTES.get(tag, ()):
        value = attributes.get(name)
        if isinstance(value, str):
            yield value
    if tag in _SRCSET_TAGS:
        srcset = attributes.get("srcset")
        if isinstance(srcset, str):
            yield from parse_srcset(srcset)


def _resolve_all(resolver: Resolver, raw: list[str]) -> list[str]:
    """Resolve every raw value with the page's ``resolver``; drop failures and duplicates."""
    seen: dict[str, None] = {}  # insertion-ordered: document order
    for value in dict.fromkeys(raw):  # each distinct raw value once
        url = resolver(value)
        if url is not None:
            seen.setdefault(url, None)
    return list(seen)


def parse_srcset(srcset: str) -> list[str]:
    """The candidate URLs of a srcset attribute (WHATWG parsing, descriptors skipped)."""
    urls: list[str] = []
    position, length = 0, len(srcset)
    while position < length:
        while position < length and srcset[position] in _CANDIDATE_SEPARATORS:
            position += 1
        start = position
        while position < length and srcset[position] not in _HTML_WHITESPACE:
            position += 1
        url = srcset[start:position]
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            position = _skip_descriptors(srcset, position)
        if url:
            urls.append(url)
    return urls


def _skip_descriptors(srcset: str, position: int) -> int:
    """Advance past a candidate's descriptors to just after the next top-level comma."""
    depth = 0
    for index in range(position, len(srcset)):
        char = srcset[index]
        if char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif char == "," and not depth:
            return index + 1
    return len(srcset)
