"""robots.txt without I/O: decoding any body to storable text, the rules, the parse cache."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.robots import ALLOW_ALL, DISALLOW_ALL, RobotsCache, decode, rules_for

TEXT = "User-agent: *\nDisallow: /private\n"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("body", [
    TEXT.encode("utf-8-sig"), TEXT.encode("utf-16"), TEXT.encode("utf-16-be"),
    TEXT.encode("utf-32"), TEXT.encode("utf-16-le")])
def test_decode_reads_byte_order_marks_and_drops_nuls(body: bytes) -> None:
    text = decode(body, None)
    assert "\x00" not in text
    assert not rules_for(200, text).allowed("http://h/private/a", "Harvester")
    assert rules_for(200, text).allowed("http://h/open", "Harvester")


def test_decode_binary_and_unknown_charsets() -> None:
    assert decode(b"\x89PNG\x00\x00\xff", None) == "\ufffdPNG\ufffd"
    assert decode("é".encode("latin-1"), "latin-1") == "é"
    assert decode("é".encode(), "x-no-such-charset") == "é"


def test_rules_by_status() -> None:
    assert rules_for(None, None).policy == DISALLOW_ALL == rules_for(503, TEXT).policy
    assert rules_for(404, TEXT).policy == ALLOW_ALL == rules_for(304, None).policy
    parsed = rules_for(200, TEXT + "Crawl-delay: 2\nSitemap: http://h/s.xml\n")
    assert parsed.size == len(TEXT) + 39
    assert parsed.crawl_delay("Harvester") == 2.0 and parsed.sitemaps() == ["http://h/s.xml"]


def test_the_cache_keeps_one_copy_per_host() -> None:
    cache = RobotsCache()
    old, new = rules_for(200, TEXT), rules_for(200, "")
    cache.put("http://h", T0, old)
    assert cache.known(["http://h", "http://other"]) == {"http://h": (T0, old)}
    cache.put("http://h", T0 + timedelta(days=1), new)
    assert cache.known(["http://h"]) == {"http://h": (T0 + timedelta(days=1), new)}
    assert len(cache) == 1 and cache.chars == 0


def test_the_cache_is_bounded_by_entries_least_recently_used_first() -> None:
    cache = RobotsCache(max_entries=2)
    for host in ("http://a", "http://b"):
        cache.put(host, T0, rules_for(200, TEXT))
    cache.known(["http://a"])  # used: b is now the oldest
    cache.put("http://c", T0, rules_for(200, TEXT))
    assert set(cache.known(["http://a", "http://b", "http://c"])) == {"http://a", "http://c"}


def test_the_cache_is_bounded_by_the_size_of_what_it_parsed() -> None:
    cache = RobotsCache(max_chars=3 * len(TEXT))
    for i in range(10):
        cache.put(f"http://h{i}", T0, rules_for(200, TEXT))
    assert len(cache) == 3 and cache.chars == 3 * len(TEXT)
    big = "User-agent: *\n" + "Disallow: /x\n" * 1000
    cache.put("http://big", T0, rules_for(200, big))  # bigger than the bound: kept alone
    assert len(cache) == 1 and cache.known(["http://big"])
