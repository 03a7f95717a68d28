"""MIME-type guessing from URLs and Content-Type normalisation, as the original crawler did."""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote, urlsplit

OCTET_STREAM = "application/octet-stream"
UNKNOWN = ""

_BY_EXTENSION = {
    ".gif": "image/gif",
    ".jpeg": "image/jpeg",
    ".jpg": "image/jpeg",
    ".png": "image/png",
    ".css": "text/css",
    ".js": "text/javascript",
}
# Types recorded as results but never fetched (with image/*); the SQL form is SKIP_MIME_SQL.
SKIP_PREFIX = "image/"
SKIP_EXACT = frozenset(
    {"text/css", "text/javascript", "application/javascript", "application/x-javascript"}
)
_HTML = frozenset({"text/html", "application/xhtml+xml"})


# The last path segment of a plain absolute URL (printable ASCII, no IPv6 brackets): the
# part of urlsplit() that guess_mime needs, several times faster. Anything else: urlsplit.
_NOT_PLAIN = r"\x00-\x20\x7f-\U0010ffff"
_LAST_SEGMENT_RE = re.compile(
    rf"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#\[\]{_NOT_PLAIN}]*"
    rf"(?:/(?:[^?#{_NOT_PLAIN}]*/)?([^/?#{_NOT_PLAIN}]*))?(?:[?#].*)?",
    re.DOTALL,
)


@functools.lru_cache(maxsize=1 << 15)  # a crawl's pages share most of their links
def guess_mime(url: str) -> str:
    """Guess a MIME type from the extension of the URL path's last segment.

    No extension means "text/html"; an extension outside the table means "" (unknown).
    """
    match = _LAST_SEGMENT_RE.fullmatch(url)
    if match is None:
        return _guess_from_path(unquote(_path(url)))
    segment = match[1] or ""
    return _guess_from_path(unquote(segment) if "%" in segment else segment)


def _path(url: str) -> str:
    try:
        return urlsplit(url).path
    except ValueError:
        return ""


def _guess_from_path(path: str) -> str:
    """The guess for a decoded path, or its decoded last segment."""
    extension = _extension(path)
    if not extension:
        return "text/html"
    return _BY_EXTENSION.get(extension.lower(), UNKNOWN)


def _extension(path: str) -> str:
    """Go's path.Ext: the suffix from the last "." of the last segment, or ""."""
    segment = path.rpartition("/")[2]
    dot = segment.rfind(".")
    return segment[dot:] if dot >= 0 else ""


def _essence(mime: str) -> str:
    """The type/subtype part of a MIME type, lower-cased."""
    return mime.partition(";")[0].strip().lower()


def is_skip_mime(mime: str) -> bool:
    """True for images, CSS and JavaScript: recorded as results, never fetched."""
    essence = _essence(mime)
    return essence.startswith(SKIP_PREFIX) or essence in SKIP_EXACT


def normalize_mime(content_type: str | None) -> str:
    """Reduce a Content-Type header to its lower-case essence; default octet-stream."""
    essence = _essence(content_type or "")
    return essence or OCTET_STREAM


def is_html(mime: str) -> bool:
    """True for text/html and application/xhtml+xml (parameters and case ignored)."""
    return _essence(mime) in _HTML
