"""The bench's issue 15 parts: the in-memory crawler (bench/inmemory.py) on a small site served
on 127.0.0.1, the external site's arguments (--site/--depth), the spread and deadlocks in the
report."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from bench import extsite, inmemory, report
from bench.__main__ import _args

# path -> (content type, body). Levels from "/": 0 "/", 1 "/a", "/b/", 2 "/c.html" (also
# linked from the deeper "/d" page), 3 "/d", 4 "/e" (only linked from "/d").
PAGES: dict[str, tuple[str, str]] = {
    "/": ("text/html", '<a href="/a">a</a> <a href="b/">b</a> <a href="/a#top">again</a>'),
    "/a": ("text/html", ('<a href="c.html">c</a><img src="/img/x.png">'
                         '<link rel="stylesheet" href="/s.css"><script src="/app.js"></script>'
                         '<a href="http://127.0.0.2:1/elsewhere">other host</a>')),
    "/b/": ("text/html", ('<a href="../c.html">c</a> <a href="/missing">gone</a>'
                          '<a href="/doc.txt">text</a>')),
    "/c.html": ("text/html", '<a href="/d">d</a> <a href="/">home</a>'),
    "/d": ("text/html", '<a href="/e">e</a> <a href="/c.html">c</a>'),
    "/e": ("text/html", "<p>the end</p>"),
    "/doc.txt": ("text/plain", '<a href="/e">not a page: no links read</a>'),
}


@pytest.fixture
def site() -> Iterator[tuple[str, Counter[str]]]:
    """The pages above on 127.0.0.1 (a port of its own), with a count of requests per path."""
    hits: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.Response:
        hits[request.path] += 1
        if request.path not in PAGES:
            return web.Response(status=404, text="not found")
        ctype, body = PAGES[request.path]
        return web.Response(text=body, content_type=ctype)

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(tcp.start())
    port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{port}", hits
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _crawl(host: str, depth: int) -> inmemory.Crawl:
    state, wall, cpu = asyncio.run(inmemory.crawl(f"http://{host}/", {host}, depth, 4))
    assert wall > 0 and cpu >= 0
    return state


def test_finds_exactly_the_pages_to_the_depth_and_stops_there(
        site: tuple[str, Counter[str]]) -> None:
    host, hits = site
    state = _crawl(host, 3)
    assert sorted(state.pages) == [f"http://{host}{p}" for p in ("/", "/a", "/b/", "/c.html")]
    # levels 0..2 fetched (the 404 and the text file are level 2 too), nothing deeper
    assert state.levels == [1, 2, 3]
    assert hits == Counter({"/": 1, "/a": 1, "/b/": 1, "/c.html": 1, "/missing": 1,
                            "/doc.txt": 1})
    assert state.statuses == Counter({"200": 5, "404": 1})
    # c.html's links were read (it is on the last level: 2 of the 2 + 5 + 3 + 2), not followed
    assert state.links == 12 and "/d" not in hits


def test_full_depth_takes_the_shortest_path_and_skips_assets_and_other_hosts(
        site: tuple[str, Counter[str]]) -> None:
    host, hits = site
    state = _crawl(host, 10)
    assert sorted(state.pages) == sorted(f"http://{host}{p}" for p in
                                         ("/", "/a", "/b/", "/c.html", "/d", "/e"))
    assert state.levels == [1, 2, 3, 1, 1]
    assert all(n == 1 for n in hits.values())  # each URL fetched once
    assert not {"/img/x.png", "/s.css", "/app.js", "/elsewhere"} & set(hits)
    assert _crawl(host, 1).pages == [f"http://{host}/"]


def test_main_prints_one_json_line_and_writes_the_pages(
        site: tuple[str, Counter[str]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    host, _ = site
    out = tmp_path / "found.txt"
    inmemory.main(["--start", f"http://{host}/", "--allow", host, "--depth", "2",
                   "--concurrency", "2", "--out", str(out), "--no-uvloop"])
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["pages"] == 3 and info["requests"] == 3 and info["statuses"] == {"200": 3}
    assert info["pages_per_level"] == [1, 2] and info["links"] > 0 and info["wall"] > 0
    assert sorted(out.read_text().split()) == [f"http://{host}{p}" for p in ("/", "/a", "/b/")]


def test_check_found_against_the_expected_pages_or_counts() -> None:
    r = inmemory.check_found({}, ["u1", "u2", "u3"], ["u1", "u2"])
    assert r["valid"] and r["found"] == 2 and r["extra"] == 1
    r = inmemory.check_found({}, ["u1"], ["u1", "u2"])
    assert not r["valid"] and r["found"] == 1 and r["missing_sample"] == ["u2"]
    assert inmemory.check_found({}, ["u1", "u1", "u3"], [])["found"] == 2


def _site_dir(tmp_path: Path) -> Path:
    d = tmp_path / "mysite"
    (d / "docs").mkdir(parents=True)
    (d / "index.html").write_text('<a href="docs/">docs</a>')
    (d / "docs" / "index.html").write_text('<a href="/">home</a>')
    (d / "start.html").write_text('<a href="/">home</a>')
    return d


def test_site_and_depth_arguments(tmp_path: Path) -> None:
    d = _site_dir(tmp_path)
    a = _args(["--site", str(d), "--depth", "3"])
    assert a.site == d and a.depth == 3 and a.root == "index.html"
    assert a.systems == ["harvester", "scrapy", "inmemory"]
    assert _args(["--site", str(d), "--depth", "1", "--root", "start.html"]).root == "start.html"
    assert _args(["--site", str(d), "--depth", "1", "--root", "/docs/"]).depth == 1
    assert "inmemory" in _args([]).systems  # a peer of the default set
    for bad in (["--site", str(d)],                              # no depth
                ["--depth", "3"],                                # no site
                ["--site", str(d), "--depth", "0"],
                ["--site", str(tmp_path / "nowhere"), "--depth", "2"],
                ["--site", str(d), "--depth", "2", "--root", "missing.html"],
                ["--site", str(d), "--depth", "2", "--systems", "harvester,ceiling"],
                ["--site", str(d), "--depth", "2", "--hosts", "10"]):
        with pytest.raises(SystemExit):
            _args(bad)


def test_external_site_layout_and_depths(tmp_path: Path) -> None:
    d = _site_dir(tmp_path)
    s = extsite.prepare(d, "index.html", 4, 18999, tmp_path / "out" / "extsite")
    assert s.start_url == "http://127.0.0.1:18999/index.html"
    assert s.harvester_depth == 4 and s.scrapy_depth_limit == 3 and s.expected == []
    assert (s.root / "a").resolve() == d.resolve()
    assert (s.root / "b" / "index.html").is_file()  # Harvester's small job after the crawl
    assert s.meta["files"] == 3 and s.meta["html_files"] == 3
    again = extsite.prepare(d, "/", 2, 18999, tmp_path / "out" / "extsite")  # replaced
    assert again.start_url == "http://127.0.0.1:18999/" and again.harvester_depth == 2
    assert (d / "index.html").is_file() and (d / "docs" / "index.html").is_file()  # untouched


def test_external_site_valid_only_when_all_counts_agree() -> None:
    def run(system: str, found: int) -> dict[str, object]:
        return {"system": system, "label": "r1", "found": found, "valid": True, "wall": 1.0}

    same = [run("harvester", 10), run("scrapy", 10), run("inmemory", 10)]
    assert extsite.judge(same) == 10 and all(r["valid"] for r in same)
    differ = [run("harvester", 10), run("scrapy", 9), run("inmemory", 10)]
    assert extsite.judge(differ) is None
    assert not any(r["valid"] for r in differ)
    assert differ[0]["error"] == ("page counts differ: r1 harvester 10, r1 scrapy 9, "
                                  "r1 inmemory 10")


def test_spread_beside_the_medians_and_deadlocks_per_run() -> None:
    assert report.spread([3.0, 1.0, 2.0], "{:.0f}") == " (1–3)"
    assert report.spread([2.0]) == "" and report.spread([]) == ""
    runs = [{"system": "harvester", "label": f"w2-f1-r{i}", "valid": True, "found": 1000,
             "wall": wall, "cpu": cpu, "workers": 2, "foremen": 1, "pg_deadlocks": dl}
            for i, (wall, cpu, dl) in enumerate(((10.0, 2.0, 0), (20.0, 1.0, 2), (5.0, 3.0, 1)))]
    s = report.summarize(runs, 1000)
    assert s["pages_per_s_runs"] == [100.0, 50.0, 200.0]
    row = report.table([s]).splitlines()[2]
    assert row == ("| harvester (2 workers) | 1,000 / 1,000 | 10.0 | 100 (50–200) | 2.0 "
                   "| 2.00 (1.00–3.00) |  | 0, 2, 1 |")
    one = report.summarize(runs[:1], 1000)
    assert report.table([one]).splitlines()[2].endswith("| 100 | 2.0 | 2.00 |  | 0 |")
    m = report.summarize([{"system": "inmemory", "label": "r1", "valid": True, "found": 1000,
                           "wall": 5.0, "cpu": 1.0}], 1000)
    assert report.table([m]).splitlines()[2].endswith("| — |")
    lines = report.ratios({"harvester": s, "inmemory": m})
    assert lines[0] == "* Harvester / inmemory: pages/s × **0.5**, CPU per page × **2**"
    assert lines[-1] == ("* issue 15 targets: pages/s × 0.5 the in-memory crawler's (≥ 1: "
                         "**missed**); CPU 2.00 ms per page (≤ 1.0: **missed**)")
