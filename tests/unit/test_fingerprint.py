"""SZ-T2: request fingerprints (shared/fingerprint.py). Scrapy 1.5's algorithm against the
reference's vectors (reference-seed-systems.md §7, w3lib 2.5); equivalent URLs collapse, a
method or a body does not; headers count only when included; for a GET the fingerprint is the
canonical URL's (so ``job_visit``'s key is the fingerprint key); a job's ``ignoreParams`` and
``keepFragment`` (Scrapy 2's ``keep_fragments``: the canonical URL keeping its fragment)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.fingerprint import JobFingerprint, fingerprint
from shared.robots import rules_for
from shared.urls import canonicalize, host_key

Q = "http://www.example.com/query?id=111&cat=222"
VECTORS = [
    ("GET", Q, b"", None, (), "fad8cefa4d6198af8cb1dcf46add2941b4d32d78"),
    ("GET", "http://www.example.com/query?cat=222&id=111#frag", b"", None, (),
     "fad8cefa4d6198af8cb1dcf46add2941b4d32d78"),
    ("GET", "http://www.example.com", b"", None, (), "818492beabce92630298c5cc9d88fbe69a26be47"),
    ("GET", "http://WWW.Example.com/a b?x=&y=1", b"", None, (),
     "787b2b022240a906cd045f3068a1d160434df76d"),
    ("GET", "http://www.example.com/%7euser/?b=2&a=1&a=0", b"", None, (),
     "7b0c29991c440cd5ed098bf1f454221d2afc2568"),
    ("GET", "https://github.com/torvalds?tab=repositories", b"", None, (),
     "c6e001f3b152247da84660fdf9c73ecc383e5a4e"),
    ("GET", "https://github.com/torvalds?tab=followers", b"", None, (),
     "7f8850c596af8534b75abd971ac9169cb1fec1bc"),
    ("GET", "https://github.com/torvalds?tab=followers#x", b"", None, (),
     "7f8850c596af8534b75abd971ac9169cb1fec1bc"),
    ("POST", "http://www.example.com/post", b"a=1", None, (),
     "c7a51d94a45b3ae40b93e91ec2b9e3b59fc8798e"),
    ("GET", Q, b"", {"Accept-Language": "en"}, ("Accept-Language",),
     "81c5557b15a18b0c19f45e755b69fc199fdfe3a8"),
    ("GET", Q, b"", {"Cookie": "a=1"}, ("Accept-Language",),
     "fad8cefa4d6198af8cb1dcf46add2941b4d32d78"),
]


@pytest.mark.parametrize(("method", "url", "body", "headers", "include", "sha1"), VECTORS)
def test_the_reference_vectors(method: str, url: str, body: bytes, headers: dict[str, str] | None,
                               include: tuple[str, ...], sha1: str) -> None:
    assert fingerprint(method, url, body, headers, include) == sha1


def test_what_collapses_and_what_does_not() -> None:
    base = fingerprint("GET", Q)
    assert fingerprint("GET", "http://www.example.com/query?cat=222&id=111#x") == base
    assert fingerprint("POST", Q) != base
    assert fingerprint("GET", Q, b"x") != base
    assert fingerprint("GET", Q, headers={"Accept-Language": "en"}) == base  # not included
    en = fingerprint("GET", Q, headers={"accept-language": "en"}, include_headers=["ACCEPT-language"])
    assert en == VECTORS[9][5]  # names in any case
    assert fingerprint("GET", Q, headers={"Accept-Language": ["en", "fr"]},
                       include_headers=["Accept-Language"]) != en
    assert fingerprint("GET", Q, headers={"Accept-Language": b"en"},
                       include_headers=["Accept-Language"]) == en


_segment = st.text(alphabet="abcXYZ09-._~%/ ", min_size=0, max_size=8)
_param = st.tuples(st.sampled_from(["a", "b", "B", "c d", "é"]), st.text(alphabet="xy1 &", max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["http://h.example", "http://H.example:80",
                                            "https://h.example", "http://g.example"]),
                          _segment, st.lists(_param, max_size=3),
                          st.sampled_from(["", "#f", "#g"])), min_size=2, max_size=2))
def test_get_fingerprints_agree_with_the_canonical_url(urls: list[tuple[str, str, list[tuple[str, str]], str]]) -> None:
    """Equal fingerprints of GETs without headers <=> equal canonical URLs (the visit key),
    default ports aside (w3lib keeps them; canonicalize drops them: ours only merges more)."""
    made = [f"{h}/{p}" + ("?" + "&".join(f"{k}={v}" for k, v in q) if q else "") + f
            for h, p, q, f in urls]
    try:
        a, b = (canonicalize(u) for u in made)
    except ValueError:
        return
    same_fp = fingerprint("GET", made[0]) == fingerprint("GET", made[1])
    if same_fp:
        assert a == b
    elif a == b:  # only by a default port written out
        assert ":80" in made[0] + made[1]


def test_a_jobs_ignored_params() -> None:
    assert JobFingerprint.from_stored({}) is None
    assert JobFingerprint.from_stored({"fingerprint": {"ignoreParams": []}}) is None
    fp = JobFingerprint.from_stored({"fingerprint": {"ignoreParams": ["utm_*", "SID"]}})
    assert fp is not None
    assert fp.canonical("http://h.example/a?id=1&utm_source=x&utm_x=") == "http://h.example/a?id=1"
    assert fp.canonical("http://h.example/a?sid=3") == "http://h.example/a"
    assert fp.canonical("http://h.example/a?a=1&b=2") == "http://h.example/a?a=1&b=2"
    assert fp.canonical("http://h.example/a") == "http://h.example/a"
    assert fp.rewrite(["http://h.example/b?utm_a=1", "http://h.example/b", "http://h.example/a"]) == [
        "http://h.example/a", "http://h.example/b"]
    # the worker's rewrite of a page's (url, guessed type) links: the first type kept
    assert fp.rewrite_links([("http://h.example/b?utm_a=1", "text/html"), ("http://h.example/b", ""),
                             ("http://h.example/a", "")]) == (
        ("http://h.example/a", ""), ("http://h.example/b", "text/html"))


def test_keep_fragments_is_scrapys() -> None:
    """Scrapy 2's ``request_fingerprint(..., keep_fragments=True)``: w3lib's canonical URL with
    its fragment; without it, the fragment is dropped (the 1.5 vectors above)."""
    plain = fingerprint("GET", Q)
    a = fingerprint("GET", Q + "#a", keep_fragments=True)
    assert fingerprint("GET", Q, keep_fragments=True) == plain
    assert a != plain and a != fingerprint("GET", Q + "#b", keep_fragments=True)
    assert a == fingerprint("GET", "http://www.example.com/query?cat=222&id=111#a",
                            keep_fragments=True)
    assert fingerprint("GET", Q + "#a") == plain


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["http://h.example", "https://h.example",
                                            "http://g.example"]),
                          _segment, st.lists(_param, max_size=3),
                          st.sampled_from(["", "#", "#f", "#g", "#f g", "#é", "#%7e", "#~"])),
                min_size=2, max_size=2))
def test_fragment_fingerprints_agree_with_the_canonical_url_keeping_it(
        urls: list[tuple[str, str, list[tuple[str, str]], str]]) -> None:
    made = [f"{h}/{p}" + ("?" + "&".join(f"{k}={v}" for k, v in q) if q else "") + f
            for h, p, q, f in urls]
    try:
        a, b = (canonicalize(u, keep_fragment=True) for u in made)
    except ValueError:
        return
    same_fp = (fingerprint("GET", made[0], keep_fragments=True)
               == fingerprint("GET", made[1], keep_fragments=True))
    assert same_fp == (a == b)


def test_a_jobs_kept_fragment() -> None:
    assert JobFingerprint.from_stored({"fingerprint": {"keepFragment": False}}) is None
    fp = JobFingerprint.from_stored({"fingerprint": {"keepFragment": True}})
    assert fp is not None and fp.keep_fragment and not fp.ignore_params
    assert fp.canonical("http://h.example/a?utm_a=1#x") == "http://h.example/a?utm_a=1#x"
    both = JobFingerprint.from_stored({"fingerprint": {"keepFragment": True,
                                                       "ignoreParams": ["utm_*"]}})
    assert both is not None
    assert both.canonical("http://h.example/a?id=1&utm_a=1#x") == "http://h.example/a?id=1#x"
    assert both.canonical("http://h.example/a?utm_a=1#x") == "http://h.example/a#x"
    assert both.rewrite(["http://h.example/a?utm_a=1#x", "http://h.example/a#x",
                         "http://h.example/a"]) == ["http://h.example/a", "http://h.example/a#x"]


def test_robots_txt_matches_the_path_without_the_fragment() -> None:
    rules = rules_for(200, "User-agent: *\nDisallow: /p$\n")
    assert not rules.allowed("http://h.example/p#a", "harvester")
    assert rules.allowed("http://h.example/q#p", "harvester")
    assert host_key("http://h.example:8080/p#a") == "http://h.example:8080"
