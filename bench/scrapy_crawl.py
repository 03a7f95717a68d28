"""Scrapy, one tuned process: ``python -m bench.scrapy_crawl --start URL --allow HOST:PORT ...``.

A CrawlSpider-like spider: each response's links are extracted once with Scrapy's
``LinkExtractor`` (default ``deny_extensions``, ``allow_domains`` the bench hosts), written as one
item per page (JSON lines feed) and followed. Breadth-first order (as the Scrapy docs advise for
broad crawls) so that, as with Harvester, a page is reached at its shortest depth before
DEPTH_LIMIT is applied. At the end it prints one JSON line with the crawl's own timing:
wall and CPU seconds from spider_opened to spider_closed (the start-up imports excluded, as
Harvester's are).
"""

from __future__ import annotations

import argparse
import json
import time

import scrapy
from scrapy import signals
from scrapy.crawler import CrawlerProcess
from scrapy.linkextractors import LinkExtractor

from bench.selfstats import cpu_seconds, peak_rss_mb


class BenchSpider(scrapy.Spider):
    name = "bench"

    def __init__(self, start: str, allow: list[str], allow_regex: str | None = None,
                 **kw: object) -> None:
        super().__init__(**kw)
        self.start_urls = [start]
        # Many hosts (bench/manyhosts.py): one regex, not a domain list scanned per link.
        self.links = (LinkExtractor(allow=[allow_regex]) if allow_regex
                      else LinkExtractor(allow_domains=allow))
        self.timing: dict[str, float] = {}
        self.responses = 0
        self.last_response = 0.0

    @classmethod
    def from_crawler(cls, crawler, *args, **kwargs):  # type: ignore[no-untyped-def]
        spider = super().from_crawler(crawler, *args, **kwargs)
        crawler.signals.connect(spider._opened, signal=signals.spider_opened)
        crawler.signals.connect(spider._closed, signal=signals.spider_closed)
        return spider

    def _opened(self, spider: scrapy.Spider) -> None:
        self.timing["t0"], self.timing["cpu0"] = time.monotonic(), cpu_seconds()

    def _closed(self, spider: scrapy.Spider, reason: str) -> None:
        self.timing["t1"], self.timing["cpu1"] = time.monotonic(), cpu_seconds()
        self.timing["reason"] = reason  # type: ignore[assignment]

    # The start request is filtered like any other (Scrapy's default start requests are not,
    # so the root would be fetched twice when a page links back to it).
    async def start(self):  # type: ignore[no-untyped-def] # Scrapy >= 2.13
        for url in self.start_urls:
            yield scrapy.Request(url, callback=self.parse)

    def start_requests(self):  # type: ignore[no-untyped-def] # Scrapy < 2.13
        for url in self.start_urls:
            yield scrapy.Request(url, callback=self.parse)

    def parse(self, response):  # type: ignore[no-untyped-def]
        self.responses += 1
        self.last_response = time.monotonic()
        if not isinstance(response, scrapy.http.TextResponse):
            return
        found = self.links.extract_links(response)
        yield {"url": response.url, "links": [link.url for link in found]}
        for link in found:
            yield scrapy.Request(link.url, callback=self.parse)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--start", required=True)
    p.add_argument("--allow", action="append", default=[], help="host:port to follow")
    p.add_argument("--allow-regex", default=None, help="follow the URLs this matches instead")
    p.add_argument("--per-domain", type=int, default=None,
                   help="CONCURRENT_REQUESTS_PER_DOMAIN (default: --concurrency)")
    p.add_argument("--delay", type=float, default=0.0,
                   help="DOWNLOAD_DELAY, never randomised (0)")
    p.add_argument("--depth-limit", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--out", required=True, help="JSON lines file: one item per page")
    p.add_argument("--loop", default=None, help="ASYNCIO_EVENT_LOOP, e.g. uvloop.Loop")
    p.add_argument("--reactor", default=None,
                   help="TWISTED_REACTOR (default: Scrapy's, the asyncio reactor)")
    a = p.parse_args()
    if not a.allow and not a.allow_regex:
        p.error("--allow or --allow-regex is required")
    settings = {
        "CONCURRENT_REQUESTS": a.concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": a.per_domain or a.concurrency,
        "CONCURRENT_REQUESTS_PER_IP": 0,
        "DOWNLOAD_DELAY": a.delay,
        "RANDOMIZE_DOWNLOAD_DELAY": False,
        "AUTOTHROTTLE_ENABLED": False,
        "ROBOTSTXT_OBEY": False,
        "DEPTH_LIMIT": a.depth_limit,
        # breadth-first (docs: "Do I need to crawl in BFO or DFO order?")
        "DEPTH_PRIORITY": 1,
        "SCHEDULER_DISK_QUEUE": "scrapy.squeues.PickleFifoDiskQueue",
        "SCHEDULER_MEMORY_QUEUE": "scrapy.squeues.FifoMemoryQueue",
        "LOG_LEVEL": "WARNING",
        "HTTPCACHE_ENABLED": False,
        "COOKIES_ENABLED": False,
        "TELNETCONSOLE_ENABLED": False,
        "REACTOR_THREADPOOL_MAXSIZE": 4,
        "FEEDS": {a.out: {"format": "jsonlines", "overwrite": True}},
        "USER_AGENT": "Scrapy-bench",
    }
    if a.loop:
        settings["ASYNCIO_EVENT_LOOP"] = a.loop
    if a.reactor:
        settings["TWISTED_REACTOR"] = a.reactor
    process = CrawlerProcess(settings=settings)
    crawler = process.create_crawler(BenchSpider)
    process.crawl(crawler, start=a.start, allow=a.allow, allow_regex=a.allow_regex)
    process.start()
    spider = crawler.spider
    t = spider.timing
    stats = crawler.stats.get_stats() if crawler.stats else {}
    print(json.dumps({
        "wall": t["t1"] - t["t0"], "cpu": t["cpu1"] - t["cpu0"], "cpu_process": cpu_seconds(),
        "last_response_after": spider.last_response - t["t0"], "responses": spider.responses,
        "reason": t.get("reason"),
        "requests": stats.get("downloader/request_count"),
        "status_200": stats.get("downloader/response_status_count/200"),
        "status_404": stats.get("downloader/response_status_count/404"),
        "items": stats.get("item_scraped_count"),
        "depth_max": stats.get("request_depth_max"),
        "vmhwm_mb": peak_rss_mb(),
    }), flush=True)


if __name__ == "__main__":
    main()
