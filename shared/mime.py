"""MIME-type guessing from URLs and Content-Type normalisation, as the original crawler did."""

from __future__ import annotations

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
_SKIP_EXACT = frozenset(
    {"text/css", "text/javascript", "application/javascript", "application/x-javascript"}
)
_HTML = frozenset({"text/html", "application/xhtml+xml"})


def guess_mime(url: str) -> str:
    """Guess a MIME type from the extension of the URL path's last segment.

    No extension means "text/html"; an extension outside the table means "" (unknown).
    """
    try:
        path = urlsplit(url).path
    except ValueError:
        path = ""
    extension = _extension(unquote(path))
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
    return essence.startswith("image/") or essence in _SKIP_EXACT


def normalize_mime(content_type: str | None) -> str:
    """Reduce a Content-Type header to its lower-case essence; default octet-stream."""
    essence = _essence(content_type or "")
    return essence or OCTET_STREAM


def is_html(mime: str) -> bool:
    """True for text/html and application/xhtml+xml (parameters and case ignored)."""
    return _essence(mime) in _HTML
