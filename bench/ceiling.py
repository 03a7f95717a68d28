"""The ceiling: a bare aiohttp fetch loop over the known URL list, one process, N concurrent.

``python -m bench.ceiling --urls FILE [--concurrency 64] [--parse]``. Reads every body; with
``--parse`` also extracts links with Harvester's own extractor (``worker.extractors.links_html``: selectolax
and canonicalisation), to show what parsing costs on its own. Prints one JSON line: wall and
CPU seconds of the fetch loop (start-up excluded) and the status counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter

from bench.selfstats import cpu_seconds, peak_rss_mb


async def crawl(urls: list[str], concurrency: int, parse: bool) -> dict[str, object]:
    import aiohttp

    extract = None
    if parse:
        from worker.extractors.links_html import extract_links
        extract = extract_links
    statuses: Counter[int] = Counter()
    links = 0
    nbytes = 0
    todo = iter(urls)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one_loop() -> None:
            nonlocal links, nbytes
            for url in todo:
                async with session.get(url, allow_redirects=False) as resp:
                    body = await resp.read()
                    statuses[resp.status] += 1
                    nbytes += len(body)
                    if extract is not None and resp.status == 200:
                        links += len(extract(body, url, resp.charset))

        t0, c0 = time.monotonic(), cpu_seconds()
        await asyncio.gather(*(one_loop() for _ in range(concurrency)))
        t1, c1 = time.monotonic(), cpu_seconds()
    return {"wall": t1 - t0, "cpu": c1 - c0, "cpu_process": cpu_seconds(),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "bytes": nbytes, "links": links,
            "vmhwm_mb": peak_rss_mb()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--urls", required=True)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--parse", action="store_true")
    p.add_argument("--no-uvloop", action="store_true")
    a = p.parse_args()
    with open(a.urls) as f:
        urls = f.read().split()
    if not a.no_uvloop:
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            pass
    print(json.dumps(asyncio.run(crawl(urls, a.concurrency, a.parse))), flush=True)


if __name__ == "__main__":
    main()
