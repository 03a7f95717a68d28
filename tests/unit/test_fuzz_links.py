"""Fuzzing the link extractor (worker/extractors/links_html.py ``extract_links``): any bytes a
page's author sends, in any declared encoding, give only canonical http(s) URLs (each its own
canonical form, with a host), never an exception. The pages are built from markup pieces
(link-carrying tags, attributes, broken entities, comments, bases) as well as raw bytes, so that
the generated links reach the resolver."""

from __future__ import annotations

from urllib.parse import urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.urls import canonicalize
from worker.extractors.links_html import extract_links

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

HREFS = st.sampled_from([
    "a", "/b?y=2&x=1#f", "//other.example/p", "http://h/%zz", "https://[::1]:443/", "http://[v1.x]/",
    "javascript:void(0)", "mailto:a@b", "data:text/html,<a>", "http://u:p@h/", "http://h:0/",
    "http://h:65536/", "HTTP://H.EXAMPLE:80/./a/../b", "\x00http://h/", "http://\u00e9x.example/",
    "http://xn--/", "http://h/\ud7ff", "?q", "#frag", "http://1.2.3/", "http://0x7f.1/",
    "../../../../x", "http://h/" + "%" * 50, "&#104;ttp://h/", "&amp;x", "http://h\t/a\nb",
]) | st.text(max_size=30)
TAGS = st.sampled_from(["a href", "area href", "link href", "img src", "img srcset",
                        "source srcset", "script src", "iframe src", "frame src", "base href"])


@st.composite
def pages(draw: st.DrawFn) -> bytes:
    parts: list[str] = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.integers(0, 4))
        if kind == 0:
            tag, attr = draw(TAGS).split()
            q = draw(st.sampled_from(['"', "'", ""]))
            parts.append(f"<{tag} {attr}={q}{draw(HREFS)}{q}>")
        elif kind == 1:
            parts.append(draw(st.sampled_from(["<!--", "-->", "<![CDATA[", "</a>", "<div>",
                                               "<svg><a xlink:href='/s'>", "<template>",
                                               "<noscript>", "<textarea>", "<plaintext>",
                                               "\ufeff", "\x00", "<meta charset=utf-16>"])))
        elif kind == 2:
            parts.append(draw(st.text(max_size=20)))
        else:
            parts.append(f'<a href="{draw(HREFS)}">x</a>')
    encoding = draw(st.sampled_from(["utf-8", "utf-16", "latin-1", "cp1251", "shift_jis"]))
    raw = "".join(parts).encode(encoding, errors="replace")
    if draw(st.booleans()):  # a few bytes broken anywhere
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(max_size=8)) + raw[at:]
    return raw


ENCODINGS = st.sampled_from([None, "utf-8", "utf-16", "latin-1", "cp1251", "shift_jis",
                             "x-no-such-encoding", "utf-7", ""])
BASES = st.sampled_from(["http://h/d/p.html", "https://h.example:8443/a/b?c#d",
                         "http://127.0.0.1:8080/", "http://[2001:db8::1]/x/"])


def check(links: list[str], fragments: bool) -> None:
    assert len(links) == len(set(links))
    for url in links:
        parts = urlsplit(url)
        assert parts.scheme in ("http", "https") and parts.hostname, url
        assert canonicalize(url, keep_fragment=fragments) == url
        if not fragments:
            assert "#" not in url


@FUZZ
@given(pages() | st.binary(max_size=500), BASES, ENCODINGS, st.booleans())
def test_any_page_gives_only_canonical_http_links(body: bytes, base: str,
                                                   encoding: str | None, fragments: bool) -> None:
    check(extract_links(body, base, encoding or None, fragments), fragments)


@settings(FUZZ, max_examples=100)
@given(st.text(max_size=400))
def test_any_text_gives_only_canonical_http_links(html: str) -> None:
    check(extract_links(html, "http://h/", None), False)
