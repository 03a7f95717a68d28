"""The in-memory peer (issue 15): one process discovering the site from its root, nothing kept.

``python -m bench.inmemory --start URL --allow HOST:PORT [...] --depth D [--concurrency 64]
[--out FILE]``. aiohttp (+ uvloop, as Harvester's tiers use) with ``--concurrency`` requests in
flight, links extracted with Harvester's own extractor (``worker.extractors.links_html``:
selectolax and canonicalisation, as ``ceiling --parse``), so the link sets agree. Breadth-first
by level with a barrier between levels, so a page is always fetched at its shortest distance:
levels 0 .. D-1 are fetched (Harvester's ``depth``), the links of level D-1 are not. A link is
followed when it is on an ``--allow`` host and not an image, CSS or JavaScript URL (Harvester's
``shared.mime`` rule: recorded, never fetched); a ``set`` of canonical URLs keeps it to one
fetch. Nothing is persisted during the crawl; ``--out`` gets the pages found (2xx HTML) after
it, outside the timing. Prints one JSON line like ``bench.ceiling``'s: wall and CPU seconds
from the first request to the last response, pages, links, statuses, pages per level.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.selfstats import cpu_seconds, peak_rss_mb
from shared.mime import guess_mime, is_html, is_skip_mime
from shared.urls import canonicalize


class Crawl:
    """One breadth-first crawl's state: what was seen, what was found, the counts."""

    def __init__(self, allow: set[str], depth: int) -> None:
        self.allow = allow            # host:port pairs the crawl may fetch
        self.depth = depth            # levels 0 .. depth-1 are fetched
        self.seen: set[str] = set()
        self.pages: list[str] = []    # 2xx HTML pages, in the order fetched
        self.levels: list[int] = []   # pages fetched (any answer) per level
        self.statuses: Counter[str] = Counter()
        self.links = 0
        self.bytes = 0

    def follows(self, url: str) -> bool:
        """Should a link to ``url`` (canonical) be fetched? Once, on an allowed host, and not
        an image, CSS or JavaScript URL (never fetched by Harvester either)."""
        if url in self.seen:
            return False
        if urlsplit(url).netloc not in self.allow or is_skip_mime(guess_mime(url)):
            return False
        self.seen.add(url)
        return True


async def crawl(start: str, allow: set[str], depth: int, concurrency: int) -> tuple[Crawl, float,
                                                                                    float]:
    """Crawl from ``start``; the state, and the wall and CPU seconds of the fetch loop."""
    import aiohttp

    from worker.extractors.links_html import extract_links

    state = Crawl(allow, depth)
    level = [canonicalize(start)]
    state.seen.add(level[0])
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def fetch(url: str, found: list[str]) -> None:
            try:
                async with session.get(url) as resp:
                    body = await resp.read()
                    state.statuses[str(resp.status)] += 1
                    state.bytes += len(body)
                    if 200 <= resp.status < 300 and is_html(resp.content_type):
                        state.pages.append(url)
                        links = extract_links(body, str(resp.url), resp.charset)
                        state.links += len(links)
                        found += links
            except (TimeoutError, aiohttp.ClientError) as e:
                state.statuses[type(e).__name__] += 1

        async def one_loop(todo: Any, found: list[str]) -> None:
            for url in todo:
                await fetch(url, found)

        t0, c0 = time.monotonic(), cpu_seconds()
        while level:
            todo = iter(level)
            found: list[str] = []
            await asyncio.gather(*(one_loop(todo, found)
                                   for _ in range(min(concurrency, len(level)))))
            state.levels.append(len(level))
            # the last level's links are read (counted) but not followed
            level = [u for u in found if state.follows(u)] if len(state.levels) < depth else []
        t1, c1 = time.monotonic(), cpu_seconds()
    return state, t1 - t0, c1 - c0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.inmemory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--start", required=True, help="the root page's URL")
    p.add_argument("--allow", action="append", required=True, help="host:port to follow")
    p.add_argument("--depth", type=int, required=True,
                   help="levels fetched, the root's included (Harvester's job depth)")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--out", type=Path, default=None, help="write the pages found here")
    p.add_argument("--no-uvloop", action="store_true")
    a = p.parse_args(argv)
    if a.depth < 1:
        p.error("--depth must be at least 1")
    if not a.no_uvloop:
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            pass
    state, wall, cpu = asyncio.run(crawl(a.start, set(a.allow), a.depth, a.concurrency))
    if a.out is not None:
        a.out.write_text("".join(u + "\n" for u in state.pages))
    print(json.dumps({"wall": wall, "cpu": cpu, "cpu_process": cpu_seconds(),
                      "pages": len(state.pages), "requests": sum(state.statuses.values()),
                      "links": state.links, "bytes": state.bytes,
                      "statuses": dict(sorted(state.statuses.items())),
                      "pages_per_level": state.levels, "vmhwm_mb": peak_rss_mb()}), flush=True)


def run_inmemory(site: Any, out: Path, label: str, concurrency: int,
                 timeout: float) -> dict[str, object]:
    """Run the crawler on ``site`` (a ``bench.site.Site``) in its own process and check it found
    every expected page (or, on an external site without them, count what it found)."""
    from bench.others import peer_args, run_peer

    found_file = out / f"inmemory-{label}.txt"
    found_file.unlink(missing_ok=True)
    args = peer_args("bench.inmemory", site, concurrency, found_file,
                     "--depth", str(site.harvester_depth))
    result = run_peer("inmemory", label, args, out, timeout, {"depth": site.harvester_depth},
                      "the crawler")
    if "error" in result:
        return result
    return check_found(result, found_file.read_text().split(), site.expected)


def check_found(result: dict[str, Any], pages: list[str],
                expected: list[str]) -> dict[str, Any]:
    """``result`` with what ``pages`` hold of the ``expected`` ones (``found``, ``valid``,
    ``missing_sample``, ``extra``); with nothing expected (an external site), ``found`` is the
    count, judged later against the other systems'."""
    got = set(pages)
    if not expected:
        result.update({"found": len(got), "valid": True})
        return result
    missing = [u for u in expected if u not in got]
    result.update({"found": len(expected) - len(missing), "missing_sample": missing[:5],
                   "extra": len(got - set(expected)), "valid": not missing})
    if missing:
        result["error"] = f"{len(missing)} expected pages not found"
    return result


if __name__ == "__main__":
    main()
