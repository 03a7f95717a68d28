"""Sitemap parsing: urlsets, indexes, gzip, other hosts, relative and malformed entries."""

from __future__ import annotations

import gzip

from shared.sitemaps import parse_sitemap

NS = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'


def test_urlset_keeps_own_host_pages_canonical() -> None:
    body = (f'<urlset {NS}><url><loc> HTTP://H.example/a#x </loc></url><url><loc>/b</loc></url>'
            '<url><loc>http://other.example/c</loc></url><url><loc>mailto:x@y</loc></url>'
            '</urlset>').encode()
    found = parse_sitemap(body, "http://h.example/sitemap.xml")
    assert found.urls == ["http://h.example/a", "http://h.example/b"] and found.sitemaps == []


def test_index_and_gzip() -> None:
    body = gzip.compress(f'<sitemapindex {NS}><sitemap><loc>http://h.example/s1.xml.gz</loc>'
                         '</sitemap></sitemapindex>'.encode())
    found = parse_sitemap(body, "http://h.example/index.xml")
    assert found.sitemaps == ["http://h.example/s1.xml.gz"] and found.urls == []


def test_malformed_xml_gives_what_was_read() -> None:
    body = f'<urlset {NS}><url><loc>http://h.example/a</loc></url><url><loc>'.encode()
    assert parse_sitemap(body, "http://h.example/s.xml").urls == ["http://h.example/a"]


def test_a_big_sitemap_is_read_across_chunks_up_to_the_protocols_limit() -> None:
    entries = "".join(f"<url><loc>http://h.example/{'x' * (i % 97)}/{i}</loc></url>"
                      for i in range(60_000))
    body = f'<?xml version="1.0"?><urlset {NS}>{entries}</urlset>'.encode()
    found = parse_sitemap(body, "http://h.example/s.xml").urls
    assert len(found) == 50_000 and found[-1] == f"http://h.example/{'x' * (49_999 % 97)}/49999"
    assert found[1234] == f"http://h.example/{'x' * (1234 % 97)}/1234"


def test_entities_and_prefixed_namespaces() -> None:
    body = (b'<s:urlset xmlns:s="http://www.sitemaps.org/schemas/sitemap/0.9"><s:url>'
            b'<s:loc>http://h.example/a?b=1&amp;c=2</s:loc></s:url></s:urlset>')
    assert parse_sitemap(body, "http://h.example/s.xml").urls == ["http://h.example/a?b=1&c=2"]


def test_a_gzipped_sitemap_is_expanded_up_to_the_cap_and_a_truncated_one_read_so_far() -> None:
    entries = "".join(f"<url><loc>http://h.example/{i}</loc></url>" for i in range(2000))
    body = gzip.compress(f"<urlset {NS}>{entries}</urlset>".encode())
    assert len(parse_sitemap(body, "http://h.example/s.xml").urls) == 2000
    capped = parse_sitemap(body, "http://h.example/s.xml", max_bytes=10_000).urls
    assert 0 < len(capped) < 2000 and capped == [f"http://h.example/{i}" for i in range(len(capped))]
    cut = parse_sitemap(body[:len(body) // 2], "http://h.example/s.xml").urls
    assert 0 < len(cut) < 2000
    assert parse_sitemap(b"\x1f\x8bnot gzip at all", "http://h.example/s.xml").urls == []
