"""Sitemap parsing (worker/extractors/sitemaps.py ``parse_sitemap``, as the host gate runs it): urlsets,
indexes, gzip, other hosts, relative and malformed entries, and a big one parsed in pieces with
the event loop's other work in between."""

from __future__ import annotations

import asyncio
import gzip

from worker.extractors.sitemaps import CHUNK, SitemapReader, parse_sitemap

NS = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'


async def test_urlset_keeps_own_host_pages_canonical() -> None:
    body = (f'<urlset {NS}><url><loc> HTTP://H.example/a#x </loc></url><url><loc>/b</loc></url>'
            '<url><loc>http://other.example/c</loc></url><url><loc>mailto:x@y</loc></url>'
            '</urlset>').encode()
    found = await parse_sitemap(body, "http://h.example/sitemap.xml")
    assert found.urls == ["http://h.example/a", "http://h.example/b"] and found.sitemaps == []


async def test_index_and_gzip() -> None:
    body = gzip.compress(f'<sitemapindex {NS}><sitemap><loc>http://h.example/s1.xml.gz</loc>'
                         '</sitemap></sitemapindex>'.encode())
    found = await parse_sitemap(body, "http://h.example/index.xml")
    assert found.sitemaps == ["http://h.example/s1.xml.gz"] and found.urls == []


async def test_malformed_xml_gives_what_was_read() -> None:
    body = f'<urlset {NS}><url><loc>http://h.example/a</loc></url><url><loc>'.encode()
    assert (await parse_sitemap(body, "http://h.example/s.xml")).urls == ["http://h.example/a"]


async def test_a_big_sitemap_is_read_across_chunks_up_to_the_protocols_limit() -> None:
    entries = "".join(f"<url><loc>http://h.example/{'x' * (i % 97)}/{i}</loc></url>"
                      for i in range(60_000))
    body = f'<?xml version="1.0"?><urlset {NS}>{entries}</urlset>'.encode()
    found = (await parse_sitemap(body, "http://h.example/s.xml")).urls
    assert len(found) == 50_000 and found[-1] == f"http://h.example/{'x' * (49_999 % 97)}/49999"
    assert found[1234] == f"http://h.example/{'x' * (1234 % 97)}/1234"


async def test_entities_and_prefixed_namespaces() -> None:
    body = (b'<s:urlset xmlns:s="http://www.sitemaps.org/schemas/sitemap/0.9"><s:url>'
            b'<s:loc>http://h.example/a?b=1&amp;c=2</s:loc></s:url></s:urlset>')
    assert (await parse_sitemap(body, "http://h.example/s.xml")).urls == ["http://h.example/a?b=1&c=2"]


async def test_a_gzipped_sitemap_is_expanded_up_to_the_cap_and_a_truncated_one_read_so_far() -> None:
    entries = "".join(f"<url><loc>http://h.example/{i}</loc></url>" for i in range(2000))
    body = gzip.compress(f"<urlset {NS}>{entries}</urlset>".encode())
    assert len((await parse_sitemap(body, "http://h.example/s.xml")).urls) == 2000
    capped = (await parse_sitemap(body, "http://h.example/s.xml", max_bytes=10_000)).urls
    assert 0 < len(capped) < 2000 and capped == [f"http://h.example/{i}" for i in range(len(capped))]
    cut = (await parse_sitemap(body[:len(body) // 2], "http://h.example/s.xml")).urls
    assert 0 < len(cut) < 2000
    assert (await parse_sitemap(b"\x1f\x8bnot gzip at all", "http://h.example/s.xml")).urls == []


async def test_a_big_sitemap_is_parsed_in_pieces_with_other_work_in_between() -> None:
    """The loop runs its other tasks between every two pieces of ``CHUNK`` bytes (counted, not
    timed), and the result is the same as the whole body parsed in one piece."""
    entries = "".join(f"<url><loc>http://h.example/{i}</loc></url>" for i in range(40_000))
    body = f"<urlset {NS}>{entries}</urlset>".encode()
    pieces = -(-len(body) // CHUNK)
    assert pieces > 10
    ticks = 0

    async def other_work() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.ensure_future(other_work())
    await asyncio.sleep(0)
    before = ticks
    try:
        found = await parse_sitemap(body, "http://h.example/s.xml")
    finally:
        ticker.cancel()
    assert ticks - before >= pieces - 1
    whole = SitemapReader("http://h.example/s.xml")
    whole.feed(body)
    assert found.urls == whole.close().urls and len(found.urls) == 40_000
