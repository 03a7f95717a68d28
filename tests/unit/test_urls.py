"""Tests for shared.urls: canonicalisation, job-line validation, link resolution, host keys."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import urls
from shared.errors import BadRequest, InvalidURL
from shared.urls import Resolver, canonicalize, host_key, resolve, validate_job_url

PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# --- strategies -----------------------------------------------------------------------------

_URL_TOKENS = st.sampled_from(
    list("/?#&=%;:.+@ ~-_[]!$'()*,|\\^`{}\"<>\t\n")
    + ["%2F", "%7e", "%7E", "%20", "%25", "%41", "%zz", "%c3%a9", "..", ".", "%2e", "%2E%2e"]
    + ["%3F", "%23", "%26", "%3D", "%2B", "é", "ü", "日本", "\u00a0", "a", "Z", "0"]
)
_ANY_CHAR = st.characters(codec="utf-8")
url_tail = st.lists(st.one_of(_URL_TOKENS, _ANY_CHAR), max_size=16).map("".join)
hosts = st.one_of(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9\-]{0,8}(\.[A-Za-z0-9\-]{1,8}){0,3}", fullmatch=True),
    st.sampled_from(["bücher.de", "[::1]", "[2001:DB8::0:1]", "127.0.0.1", "EXAMPLE.com."]),
)
ports = st.sampled_from(["", ":80", ":443", ":8080", ":080", ":", ":65535"])
schemes = st.sampled_from(["http", "https", "HTTP", "HtTpS"])


@st.composite
def http_urls(draw: st.DrawFn) -> str:
    return f"{draw(schemes)}://{draw(hosts)}{draw(ports)}{draw(url_tail)}"


# A narrower alphabet that mostly produces URLs eligible for the no-w3lib fast path.
_SIMPLE = st.text(alphabet="abcXYZ019._~-!$&'()*+,=:@/;%?#", max_size=24)


@st.composite
def simple_urls(draw: st.DrawFn) -> str:
    host = draw(st.sampled_from(["h", "example.com", "a-b.c0", "Example.com"]))
    return f"{draw(st.sampled_from(['http', 'https']))}://{host}{draw(ports)}/{draw(_SIMPLE)}"


# --- validate_job_url -----------------------------------------------------------------------

GOOD_LINES = [
    ("http://example.com/", "http://example.com/"),
    ("https://example.com/a?b=2&a=1", "https://example.com/a?a=1&b=2"),
    ("HTTP://Example.COM:80/a/../b#frag", "http://example.com/b"),
    ("HTTPS://EXAMPLE.com:443", "https://example.com/"),
    ("http://example.com:8080", "http://example.com:8080/"),
    ("http://example.com/\r", "http://example.com/"),  # CRLF remnant
    ("  http://example.com/x \t", "http://example.com/x"),
    ("example.com", "http://example.com/"),
    ("example.com/a", "http://example.com/a"),
    ("example.com:8080/x", "http://example.com:8080/x"),
    ("localhost:8080", "http://localhost:8080/"),
    ("localhost", "http://localhost/"),
    ("127.0.0.1:9000/p?q=1", "http://127.0.0.1:9000/p?q=1"),
    ("[::1]:8080/a", "http://[::1]:8080/a"),
    ("//example.com/x", "http://example.com/x"),
    ("http://bücher.de/straße", "http://xn--bcher-kva.de/stra%C3%9Fe"),
    ("http://example.com/a b", "http://example.com/a%20b"),
    ("http://h:/x", "http://h/x"),
    ("https://example.com:80/", "https://example.com:80/"),
    ("http://example.com:443/", "http://example.com:443/"),
]

BAD_LINES = [
    "",
    "   ",
    "\r",
    "http://",
    "https://",
    "http:///x",
    "/x",
    "/path/only",
    "ftp://x",
    "ftp://example.com/file",
    "mailto:a@b",
    "javascript:alert(1)",
    "data:text/html,hi",
    "file:///etc/passwd",
    "http:example.com",
    "http:80",
    "http://exa mple.com/",
    "http://exa\tmple.com/",
    "http://example.com:abc/",
    "http://example.com:99999/",
    "http://example.com:0/",
    "http://example.com:-1/",
    "example.com:abc",
    "http://[::1/",
    "http://<host>/",
    "http://%41.com/",
]


@pytest.mark.parametrize(("line", "expected"), GOOD_LINES)
def test_validate_accepts_and_canonicalises(line: str, expected: str) -> None:
    assert validate_job_url(line) == expected


@pytest.mark.parametrize("line", BAD_LINES)
def test_validate_rejects(line: str) -> None:
    with pytest.raises(InvalidURL) as caught:
        validate_job_url(line)
    assert caught.value.line == line.strip()
    assert str(caught.value) == f"Invalid URL: {line.strip()}"
    assert isinstance(caught.value, BadRequest)


def test_validate_reports_the_stripped_line() -> None:
    with pytest.raises(InvalidURL) as caught:
        validate_job_url("  ftp://x\r\n")
    assert caught.value.line == "ftp://x"


# --- canonicalize ---------------------------------------------------------------------------

CANONICAL_CASES = [
    ("http://EXAMPLE.com/Path", "http://example.com/Path"),  # host lower-cased, path kept
    ("HTTP://example.com/", "http://example.com/"),
    ("http://example.com:80/a", "http://example.com/a"),
    ("https://example.com:443/a", "https://example.com/a"),
    ("http://example.com:8080/a", "http://example.com:8080/a"),
    ("http://example.com:080/a", "http://example.com/a"),
    ("http://[::1]:80/a", "http://[::1]/a"),
    ("http://user:pw@Example.com:80/", "http://user:pw@example.com/"),
    ("http://example.com", "http://example.com/"),
    ("http://example.com?a=1", "http://example.com/?a=1"),
    ("http://example.com/%7e", "http://example.com/~"),
    ("http://example.com/%7Euser", "http://example.com/~user"),
    ("http://example.com/~user", "http://example.com/~user"),
    ("http://example.com/a%2fb", "http://example.com/a%2Fb"),
    ("http://example.com/%41", "http://example.com/A"),
    ("http://example.com/?b=2&a=1&a=0", "http://example.com/?a=0&a=1&b=2"),
    ("http://example.com/p#frag", "http://example.com/p"),
    ("http://example.com/a/./b/../c", "http://example.com/a/c"),
    ("http://example.com/é", "http://example.com/%C3%A9"),
    ("http://bücher.de/", "http://xn--bcher-kva.de/"),
    ("http://example.com/?", "http://example.com/"),
]


@pytest.mark.parametrize(("url", "expected"), CANONICAL_CASES)
def test_canonicalize_cases(url: str, expected: str) -> None:
    assert canonicalize(url) == expected
    assert canonicalize(expected) == expected


def test_w3lib_keeps_default_ports_and_canonicalize_removes_them() -> None:
    from w3lib.url import canonicalize_url

    assert canonicalize_url("http://example.com:80/") == "http://example.com:80/"
    assert canonicalize("http://example.com:80/") == "http://example.com/"


def test_percent_encoded_and_literal_tilde_are_one_url() -> None:
    assert canonicalize("http://h/%7e/x") == canonicalize("http://h/~/x")


def test_query_order_does_not_matter() -> None:
    assert canonicalize("http://h/?z=1&a=2&m=3") == canonicalize("http://h/?m=3&a=2&z=1")


@PROPERTY_SETTINGS
@given(http_urls())
def test_canonicalize_is_idempotent(url: str) -> None:
    try:
        once = canonicalize(url)
    except ValueError:
        return
    assert canonicalize(once) == once


@PROPERTY_SETTINGS
@given(st.one_of(simple_urls(), http_urls()))
def test_fast_path_agrees_with_w3lib(url: str) -> None:
    fast = urls._fast_canonical(url)
    if fast is None:
        return
    assert fast == urls._canonicalize_slow(url)


def test_fast_path_is_taken_for_plain_urls() -> None:
    assert urls._fast_canonical("http://h:80/a/b.html?z=1&a=2#x") == "http://h/a/b.html?a=2&z=1"
    assert urls._fast_canonical("http://H/a") is None  # upper-case host goes through w3lib
    assert urls._fast_canonical("http://h/a/../b") is None  # dot segments go through w3lib


# --- resolve --------------------------------------------------------------------------------

BASE = "http://h/dir/page1.html"

RESOLUTIONS = [
    ("deep1.html", "http://h/dir/deep1.html"),  # the original Go crawler's bug
    ("sub/deep.html", "http://h/dir/sub/deep.html"),
    ("../x", "http://h/x"),
    ("../../../x", "http://h/x"),
    ("./x", "http://h/dir/x"),
    (".", "http://h/dir/"),
    ("..", "http://h/"),
    ("/abs", "http://h/abs"),
    ("//otherhost/p", "http://otherhost/p"),
    ("//OtherHost:80/p", "http://otherhost/p"),
    ("?q=1", "http://h/dir/page1.html?q=1"),
    ("#frag", "http://h/dir/page1.html"),
    ("#", "http://h/dir/page1.html"),
    ("", "http://h/dir/page1.html"),
    ("x#frag", "http://h/dir/x"),
    ("https://secure.example/a", "https://secure.example/a"),
    ("HTTP://H/x", "http://h/x"),
    ("hTTps://H:443/x", "https://h/x"),
    ("http:rel", "http://h/dir/rel"),
    ("  deep1.html\n", "http://h/dir/deep1.html"),
    ("de\tep\n1.ht\rml", "http://h/dir/deep1.html"),
    ("a b.html", "http://h/dir/a%20b.html"),
    ("/p?b=2&a=1#f", "http://h/p?a=1&b=2"),
]


@pytest.mark.parametrize(("href", "expected"), RESOLUTIONS)
def test_resolve_relative_forms(href: str, expected: str) -> None:
    assert resolve(BASE, href) == expected


@pytest.mark.parametrize(
    "href",
    [
        "mailto:a@b.c",
        "javascript:void(0)",
        "JavaScript:alert(1)",
        "data:text/html,hi",
        "tel:+123",
        "ftp://h/file",
        "file:///etc/passwd",
        "http://",
        "http:///x",
        "http://[::1/",
        "http://exa mple.com/",
        "http://h:99999/",
    ],
)
def test_resolve_rejects_unusable(href: str) -> None:
    assert resolve(BASE, href) is None


def test_resolve_against_non_canonical_base() -> None:
    assert resolve("HTTP://H:80/dir/page.html?x=1#top", "next.html") == "http://h/dir/next.html"


@PROPERTY_SETTINGS
@given(http_urls(), url_tail)
def test_resolve_returns_canonical_http_or_none(base: str, href: str) -> None:
    result = resolve(base, href)
    if result is None:
        return
    assert result.startswith(("http://", "https://"))
    assert "#" not in result
    assert result.isascii()
    assert canonicalize(result) == result


# Hrefs mostly eligible for the Resolver's own join: path characters, dot segments, queries.
_REF_TOKENS = st.sampled_from(
    ["a", "b0", "/", "//", ".", "..", "./", "../", "?", "#", "&", "=", "%2e", "%2F", "~", ":",
     ";", "@", "x=1", "é", " ", "\\", "http:", "mailto:", "-", "_", "!", "$", "'", "(", "*"]
)
simple_refs = st.lists(_REF_TOKENS, max_size=10).map("".join)
resolver_bases = st.one_of(
    simple_urls(),
    http_urls(),
    st.sampled_from([BASE, "http://h/", "http://h/a/", "https://h:8443/a/b?x=1&y=2",
                     "http://h/a?q=1"]),
)


@PROPERTY_SETTINGS
@given(resolver_bases, st.one_of(simple_refs, url_tail))
def test_resolver_agrees_with_resolve(base: str, href: str) -> None:
    assert Resolver(base)(href) == resolve(base, href)


@pytest.mark.parametrize(("href", "expected"), RESOLUTIONS)
def test_resolver_relative_forms(href: str, expected: str) -> None:
    assert Resolver(BASE)(href) == expected


def test_resolver_joins_plain_hrefs_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = Resolver("http://h/a/b/page?x=1")
    monkeypatch.setattr(urls, "urljoin", None)  # the fast join must not need it
    assert resolver("../c/d.html?b=2&a=1#top") == "http://h/a/c/d.html?a=1&b=2"
    assert resolver("/root") == "http://h/root"
    assert resolver("e/./f/../g") == "http://h/a/b/e/g"


# --- host_key -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://example.com/a/b?c=1", "http://example.com"),
        ("https://example.com:8443/", "https://example.com:8443"),
        ("http://user:pw@example.com:8080/x", "http://example.com:8080"),
        ("http://[::1]:9000/", "http://[::1]:9000"),
    ],
)
def test_host_key(url: str, expected: str) -> None:
    assert host_key(url) == expected


def test_host_key_of_canonical_urls_merges_default_ports() -> None:
    assert host_key(canonicalize("HTTP://Example.com:80/a")) == host_key(
        canonicalize("http://example.com/b")
    )


# --- keeping the fragment (a job's fingerprint.keepFragment) --------------------------------

FRAGMENT_CASES = [
    ("http://h/p#a", "http://h/p#a"),
    ("HTTP://H:80/p?b=1&a=2#Frag", "http://h/p?a=2&b=1#Frag"),
    ("http://h/p", "http://h/p"),
    ("http://h/p#", "http://h/p"),  # an empty fragment is none (w3lib)
    ("http://h/p#a b", "http://h/p#a%20b"),
    ("http://h/p#é", "http://h/p#%C3%A9"),
    ("http://h/p#a#b", "http://h/p#a%23b"),
    ("http://h/a/../p#x/../y?z", "http://h/p#x/../y?z"),  # the fragment is not a path
    ("http://h/p#%7e%zz", "http://h/p#%7e%zz"),  # nor decoded
    ("http://h#top", "http://h/#top"),
]


@pytest.mark.parametrize(("url", "expected"), FRAGMENT_CASES)
def test_canonicalize_keeping_fragment_cases(url: str, expected: str) -> None:
    assert urls.canonicalize(url, keep_fragment=True) == expected
    assert urls.canonicalize(expected, keep_fragment=True) == expected


def test_the_fragment_is_w3lib_keep_fragments() -> None:
    from w3lib.url import canonicalize_url

    for url, expected in FRAGMENT_CASES:
        assert expected.partition("#")[2] == canonicalize_url(url, keep_fragments=True).partition(
            "#")[2]


@PROPERTY_SETTINGS
@given(st.one_of(simple_urls(), http_urls()))
def test_keeping_the_fragment_changes_nothing_else(url: str) -> None:
    try:
        plain = canonicalize(url)
    except ValueError:
        with pytest.raises(ValueError):
            urls.canonicalize(url, keep_fragment=True)
        return
    kept = urls.canonicalize(url, keep_fragment=True)
    assert kept.partition("#")[0] == plain
    assert urls.canonicalize(kept, keep_fragment=True) == kept


@PROPERTY_SETTINGS
@given(st.one_of(simple_urls(), http_urls()))
def test_fast_path_keeping_the_fragment_agrees_with_w3lib(url: str) -> None:
    fast = urls._fast_canonical_keeping_fragment(url)
    if fast is None:
        return
    assert fast == urls._canonicalize_slow(url, keep_fragment=True)


def test_fast_path_keeping_the_fragment_is_taken_for_plain_urls() -> None:
    fast = urls._fast_canonical_keeping_fragment
    assert fast("http://h:80/a/b.html?z=1&a=2#x") == "http://h/a/b.html?a=2&z=1#x"
    assert fast("http://h/a#s/1?q=2&r") == "http://h/a#s/1?q=2&r"
    assert fast("http://h/a#é") is None  # a fragment to encode goes through w3lib


def test_validate_keeps_the_fragment_when_asked() -> None:
    assert validate_job_url("HTTP://Example.COM:80/a/../b#frag") == "http://example.com/b"
    assert validate_job_url("HTTP://Example.COM:80/a/../b#frag",
                            keep_fragment=True) == "http://example.com/b#frag"
    assert validate_job_url("example.com#x", keep_fragment=True) == "http://example.com/#x"
    with pytest.raises(InvalidURL):
        validate_job_url("ftp://x#y", keep_fragment=True)


FRAGMENT_RESOLUTIONS = [
    ("#frag", "http://h/dir/page1.html#frag"),
    ("#", "http://h/dir/page1.html"),
    ("", "http://h/dir/page1.html"),
    ("x#frag", "http://h/dir/x#frag"),
    ("/p?b=2&a=1#f", "http://h/p?a=1&b=2#f"),
    ("../x#a b", "http://h/x#a%20b"),
    ("//other/p#top", "http://other/p#top"),
    ("HTTP://H:80/x#Y", "http://h/x#Y"),
    ("?q=1#s", "http://h/dir/page1.html?q=1#s"),
    ("  x#f\n", "http://h/dir/x#f"),
    ("mailto:a@b#c", None),
]


@pytest.mark.parametrize(("href", "expected"), FRAGMENT_RESOLUTIONS)
def test_resolve_keeping_fragment(href: str, expected: str | None) -> None:
    assert urls.resolve(BASE, href, keep_fragment=True) == expected
    assert urls.FragmentResolver(BASE)(href) == expected
    assert urls.FragmentResolver(BASE + "#where")(href) == expected  # the base's own: none


@pytest.mark.parametrize(("href", "expected"), RESOLUTIONS)
def test_resolve_keeping_fragment_without_one_is_resolve(href: str, expected: str) -> None:
    if "#" not in href:
        assert urls.resolve(BASE, href, keep_fragment=True) == expected
        assert urls.FragmentResolver(BASE)(href) == expected


@PROPERTY_SETTINGS
@given(resolver_bases, st.one_of(simple_refs, url_tail))
def test_fragment_resolver_agrees_with_resolve_keeping_fragment(base: str, href: str) -> None:
    kept = urls.FragmentResolver(base)(href)
    assert kept == urls.resolve(base, href, keep_fragment=True)
    plain = resolve(base, href)
    assert (kept if kept is None else kept.partition("#")[0]) == plain
    if kept is not None:
        assert urls.canonicalize(kept, keep_fragment=True) == kept
        assert kept.isascii()
