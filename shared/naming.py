"""Names of saved bodies (``save`` ``files`` and ``tar`` patterns, the tar export).

A pattern is text with fields in braces: ``{name}`` or a slice of one, ``{name[a:b]}`` (what
``str.format`` lacks: ``{id[:2]}/{id}.xml`` shards by the id's first two characters);
``{{`` and ``}}`` are literal braces. Names (:data:`NAMES`): ``id`` (also ``0``: the id in an
id crawl, percent-encoded, else the URL's id), ``host`` (host[:port]), ``path`` (the URL path
without its leading ``/``, then ``_`` and a hash of the query when there is one), ``ext`` (the
path's extension, without the dot), ``urlhash`` (MD5 hex of the canonical URL, as the store
keys it), ``urlid`` (the URL's id), ``sha1`` and ``sha256`` (hex of the body).

Names are unique: a pattern must hold one of :data:`UNIQUE` whole (not sliced). An id is
percent-encoded (``%``, ``/``, ``\\`` and control characters as ``%XX``: ``a/`` is ``a%2F``,
never ``a``), and in an id crawl a page whose URL the format did not make has ``{id}`` =
``%u<urlid>``, which no encoded id can be; literal text may not hold ``%``. A rendered name is
always relative, without ``..`` or empty segments: each segment is sanitized (control
characters and ``\\`` become ``_``, ``.``/``..`` become ``_``), so no URL or id can write outside
the output directory; a segment longer than 200 bytes is cut there and ends with ``~`` and 32
hex digits of its SHA-256 (longer than any uncut segment, so two names never clash).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from shared.ids import id_of

NAMES = ("id", "0", "host", "path", "ext", "urlhash", "urlid", "sha1", "sha256")
UNIQUE = ("id", "0", "urlhash", "urlid", "sha1", "sha256")  # distinct for distinct pages
MAX_PATTERN_CHARS = 1000
MAX_SEGMENT_BYTES = 200
_FIELD = re.compile(r"\{\{|\}\}|\{([^{}\[\]]*)(?:\[(-?\d*):(-?\d*)\])?\}|[{}]")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\]")


def check_pattern(p: str) -> str | None:
    """The problem with a name pattern, or None."""
    if not p:
        return "empty pattern"
    if len(p) > MAX_PATTERN_CHARS:
        return f"longer than {MAX_PATTERN_CHARS} characters"
    if p.startswith("/"):
        return "an absolute path (names are relative to the output directory)"
    if any(seg == ".." for seg in p.split("/")):
        return "a '..' segment"
    if _UNSAFE.search(p):
        return "control characters or '\\' are not allowed"
    fields = 0
    unique = False
    for m in _FIELD.finditer(p):
        text = m.group(0)
        if text in ("{{", "}}"):
            continue
        if text in ("{", "}"):
            return f"unbalanced {text!r} at position {m.start()} (write {text * 2} for one)"
        if m.group(1) not in NAMES:
            return f"unknown field {{{m.group(1)}}} (known: {', '.join(NAMES)})"
        fields += 1
        unique = unique or (m.group(1) in UNIQUE and m.group(2) is None)
    if not fields:
        return "no field: every page would get the same name"
    if "%" in _FIELD.sub("", p):
        return "'%' in literal text (names use it for escapes)"
    if not unique:
        return ("no unique field: give one of {id}, {urlhash}, {urlid}, {sha1}, {sha256} whole "
                "(not sliced), or two pages may get the same name")
    return None


def render(p: str, fields: Mapping[str, str]) -> str:
    """``p`` with its fields filled in from ``fields`` (``0`` is ``id``): a relative path with
    sanitized segments, never empty. KeyError for a field not given."""

    def sub(m: re.Match[str]) -> str:
        text = m.group(0)
        if text in ("{{", "}}"):
            return text[0]
        name = m.group(1)
        if name is None:  # an unbalanced brace: check_pattern refuses it, render keeps it
            return text
        value = fields["id" if name == "0" else name]
        if m.group(2) is not None:
            a, b = m.group(2), m.group(3)
            value = value[int(a) if a else None:int(b) if b else None]
        return value

    rendered = _FIELD.sub(sub, p)
    segments = [_segment(s) for s in rendered.split("/") if s]
    return "/".join(segments) or "_"


def _segment(s: str) -> str:
    s = _UNSAFE.sub("_", s)
    if s in (".", ".."):
        return "_"
    raw = s.encode("utf-8")
    if len(raw) > MAX_SEGMENT_BYTES:
        s = (raw[:MAX_SEGMENT_BYTES].decode("utf-8", "ignore") + "~"
             + hashlib.sha256(raw).hexdigest()[:32])
    return s


_ESCAPE = re.compile(r"[%/\\\x00-\x1f\x7f]")


def escape_id(ident: str) -> str:
    """An id as a name's text: ``%``, ``/``, ``\\`` and control characters as ``%XX``."""
    return _ESCAPE.sub(lambda m: f"%{ord(m.group(0)):02X}", ident)


def name_fields(url: str, url_id: int, payload: bytes | None = None,
                url_format: str | None = None) -> dict[str, str]:
    """The fields of :data:`NAMES` for a page: its canonical URL and id, its body (for
    ``sha1``/``sha256``; empty without one) and, in an id crawl, the job's ``urlFormat``."""
    parts = urlsplit(url)
    path = parts.path.lstrip("/")
    if url_format:
        found = id_of(url_format, url)
        ident = escape_id(found) if found is not None else f"%u{url_id}"
    else:
        ident = str(url_id)
    body = payload if payload is not None else b""
    if parts.query:
        path += "_" + hashlib.sha256(parts.query.encode("utf-8")).hexdigest()[:12]
    return {
        "id": ident, "0": ident,
        "host": (parts.netloc.rpartition("@")[2]).lower(),
        "path": path or "_",
        "ext": posixpath.splitext(posixpath.basename(path))[1].lstrip("."),
        "urlhash": hashlib.md5(url.encode("utf-8")).hexdigest(),
        "urlid": str(url_id),
        "sha1": hashlib.sha1(body).hexdigest() if payload is not None else "",
        "sha256": hashlib.sha256(body).hexdigest() if payload is not None else "",
    }
