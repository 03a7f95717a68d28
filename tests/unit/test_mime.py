"""Tests for shared.mime: URL-based MIME guessing and Content-Type handling."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import mime
from shared.mime import guess_mime, is_html, is_skip_mime, normalize_mime


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://h/a.gif", "image/gif"),
        ("http://h/a.GIF", "image/gif"),
        ("http://h/photo.jpeg", "image/jpeg"),
        ("http://h/photo.JPG", "image/jpeg"),
        ("http://h/p/logo.png?v=3", "image/png"),
        ("http://h/site.css", "text/css"),
        ("http://h/app.js#x", "text/javascript"),
        ("http://h/", "text/html"),
        ("http://h", "text/html"),
        ("http://h/dir/page", "text/html"),
        ("http://h/dir.v2/page", "text/html"),  # only the last segment counts
        ("http://h/page?file=x.png", "text/html"),  # the query does not count
        ("http://h/a%2Epng", "image/png"),  # the path is decoded first, like Go's url.Path
        ("http://h/index.html", ""),
        ("http://h/index.htm", ""),
        ("http://h/img.svg", ""),
        ("http://h/doc.pdf", ""),
        ("http://h/pic.webp", ""),
        ("http://h/archive.tar.gz", ""),
        ("http://h/.htaccess", ""),
        ("http://h/trailing.", ""),
        ("http://h/dir/", "text/html"),
    ],
)
def test_guess_mime(url: str, expected: str) -> None:
    assert guess_mime(url) == expected


_MIME_URL_TOKENS = st.sampled_from(
    ["http://", "https://", "HTTP://", "h", "[::1]", "[", ":8080", "/", "//", ".", ".png",
     ".JS", ".css", "%2E", "%2F", "%2", "%zz", "?", "#", "x.gif", "a", " ", "\t", "é", "\\"]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_MIME_URL_TOKENS, max_size=10).map("".join))
def test_guess_mime_fast_path_agrees_with_urlsplit(url: str) -> None:
    """The regex path gives what decoding urlsplit(url).path gives (the reference)."""
    assert guess_mime(url) == mime._guess_from_path(unquote(mime._path(url)))


@pytest.mark.parametrize(
    "mime",
    [
        "image/png",
        "image/svg+xml",
        "IMAGE/GIF",
        "text/css",
        "Text/CSS; charset=utf-8",
        "text/javascript",
        "application/javascript",
        "application/x-javascript",
    ],
)
def test_skip_mimes(mime: str) -> None:
    assert is_skip_mime(mime) is True


@pytest.mark.parametrize(
    "mime",
    ["text/html", "application/xhtml+xml", "", "application/pdf", "text/plain", "imagex/png"],
)
def test_fetched_mimes(mime: str) -> None:
    assert is_skip_mime(mime) is False


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("text/html; charset=UTF-8", "text/html"),
        ("  Text/HTML  ", "text/html"),
        ("application/JSON;charset=utf-8;q=1", "application/json"),
        (None, "application/octet-stream"),
        ("", "application/octet-stream"),
        ("   ", "application/octet-stream"),
        ("; charset=utf-8", "application/octet-stream"),
    ],
)
def test_normalize_mime(header: str | None, expected: str) -> None:
    assert normalize_mime(header) == expected


@pytest.mark.parametrize(
    ("mime", "expected"),
    [
        ("text/html", True),
        ("TEXT/HTML; charset=utf-8", True),
        ("application/xhtml+xml", True),
        ("text/plain", False),
        ("application/xml", False),
        ("", False),
    ],
)
def test_is_html(mime: str, expected: bool) -> None:
    assert is_html(mime) is expected
