"""The many-host benchmark (issue 14): ``python -m bench --hosts N`` (``make bench-hosts``).

A generated site spread over N hosts, each a distinct loopback address ``127.0.x.y`` (host k is
``127.0.{1 + k // 250}.{1 + k % 250}``), all served by ONE static server: nginx listening on
``*:port`` with ``root <site>/$host`` (or the aiohttp fallback, one socket per address). Pages
are split evenly over the hosts; each host is a tree of fan-out 10 under ``/``, the hosts' roots
form a tree of fan-out 10 from host 0's root (so every page is reachable), and every page also
links to random pages of its own host and of other hosts. Besides, ``/small/<i>.html`` (linked
from nothing) are the pages of the fairness case's small job.

Crawled at the default politeness (2 requests in flight and 0.5 s between starts per host, no
per-host override, robots off as in the single-host bench) by Harvester (``plain``, and
``bloom``: job spec ``bloom: {}``) and by Scrapy with the same per-host limits
(``CONCURRENT_REQUESTS_PER_DOMAIN=2``, ``DOWNLOAD_DELAY=0.5``, no randomisation,
``CONCURRENT_REQUESTS`` = 2 x hosts); ``single`` is Harvester on the same link graph (the same
pages, links per page and levels: host k's page ``/p<j>.html`` is ``/h<k>/p<j>.html`` there) on
one host without politeness limits (the single-host rate, as the single-host bench runs it);
``unpaced`` (not run by default) is Harvester on the N hosts with their politeness lifted (each
host as many requests in flight as a worker has slots, no delay): what the many hosts cost
without the politeness, so that the gap to ``single`` splits into the hosts' part and the
politeness's. The report
gives pages/s, the rate against the single-host one, against Scrapy and against the politeness
bound (hosts / delay pages/s), the fairness case (a 100-page job submitted at 25% of the big
crawl: its time against the same job alone, run after the crawl) and what the Bloom filter
saves (CPU per page, PostgreSQL CPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from bench.site import _bfs, _paragraphs, _Writer

REPO = Path(__file__).resolve().parent.parent
VERSION = 1               # bump when the generator changes: cached sites are regenerated
PAGE_FANOUT = 10          # children of a page in its host's tree
HOST_FANOUT = 10          # hosts whose roots a host's root links to
SAME_HOST_LINKS = 6       # random links to pages of the page's own host
OTHER_HOST_LINKS = 6      # random links to pages of other hosts
HOST_CONCURRENCY = 2      # the default politeness (shared/config.py), written explicitly
HOST_DELAY = 0.5
POLITE_HOSTS = 100        # up to this many hosts the politeness, not the CPU, is the limit
START_CURVE = 20.0        # seconds of a crawl's start recorded at every poll ("start")
SMALL_AT = 0.25           # the small job is submitted when the big one has processed this share


def host_addr(k: int) -> str:
    """Host k's loopback address: 127.0.1.1 .. 127.0.1.250, 127.0.2.1 ..."""
    if not 0 <= k < 250 * 254:
        raise ValueError(f"host {k} out of range")
    return f"127.0.{1 + k // 250}.{1 + k % 250}"


def pages_per_host(pages: int, hosts: int) -> list[int]:
    """Pages split evenly over the hosts (the first ones get one more)."""
    if hosts < 1 or pages < hosts:
        raise ValueError(f"need at least one page per host ({pages} pages, {hosts} hosts)")
    q, r = divmod(pages, hosts)
    return [q + (k < r) for k in range(hosts)]


def page_path(j: int) -> str:
    return "/" if j == 0 else f"/p{j}.html"


@dataclass
class HostsSpec:
    pages: int
    hosts: int
    seed: int
    port: int
    small_pages: int = 100   # the fairness case's job
    small_hosts: int = 10    # spread over the first hosts (shared with the big crawl)
    single: bool = False     # the single-host reference: the same graph, host k's pages on
                             # host 0 under /h<k>/ (same pages, links per page and levels)

    def origin(self, k: int) -> str:
        return f"http://{host_addr(0 if self.single else k)}:{self.port}"

    def url(self, k: int, j: int) -> str:
        return self.origin(k) + (f"/h{k}" if self.single else "") + page_path(j)

    @property
    def addresses(self) -> int:
        """The distinct loopback addresses the site is served on."""
        return 1 if self.single else self.hosts

    def small_urls(self) -> list[str]:
        n = max(1, min(self.small_hosts, self.hosts))
        return [f"{self.origin(i % n)}/small/{i}.html" for i in range(self.small_pages)]

    def key(self) -> dict[str, object]:
        key: dict[str, object] = {"version": VERSION, "pages": self.pages, "hosts": self.hosts,
                                  "seed": self.seed, "port": self.port,
                                  "small": [self.small_pages, self.small_hosts]}
        if self.single:
            key["single"] = True
        return key


@dataclass
class HostsSite:
    root: Path
    spec: HostsSpec
    expected: list[str]
    max_level: int
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def start_url(self) -> str:
        return self.spec.url(0, 0)

    @property
    def harvester_depth(self) -> int:
        return self.max_level + 1


def plan(spec: HostsSpec) -> dict[str, list[str]]:
    """The link graph: each page's URL -> the page URLs it links to, in page order (pure)."""
    rng = random.Random(spec.seed)
    sizes = pages_per_host(spec.pages, spec.hosts)
    graph: dict[str, list[str]] = {}
    for k, n in enumerate(sizes):
        for j in range(n):
            links = [spec.url(k, 0)]
            if j:
                links.append(spec.url(k, (j - 1) // PAGE_FANOUT))
            links += [spec.url(k, c) for c in range(PAGE_FANOUT * j + 1,
                                                      min(PAGE_FANOUT * j + PAGE_FANOUT + 1, n))]
            if j == 0:
                links += [spec.url(h, 0) for h in range(HOST_FANOUT * k + 1,
                                                        min(HOST_FANOUT * k + HOST_FANOUT + 1,
                                                            spec.hosts))]
            links += [spec.url(k, rng.randrange(n)) for _ in range(SAME_HOST_LINKS)]
            if spec.hosts > 1:
                for _ in range(OTHER_HOST_LINKS):
                    h = rng.randrange(spec.hosts - 1)
                    h += h >= k
                    links.append(spec.url(h, rng.randrange(sizes[h])))
            graph[spec.url(k, j)] = links
    return graph


def levels_of(spec: HostsSpec, graph: dict[str, list[str]]) -> dict[str, int]:
    levels = _bfs({u: set(v) for u, v in graph.items()}, spec.url(0, 0))
    if len(levels) != len(graph):
        raise AssertionError(f"{len(graph) - len(levels)} pages unreachable")
    return levels


def level_histogram(levels: dict[str, int]) -> list[int]:
    """Pages per level, level 0 first."""
    out = [0] * (max(levels.values()) + 1)
    for lv in levels.values():
        out[lv] += 1
    return out


def _href(spec: HostsSpec, page: str, target: str) -> str:
    """Root-relative on the page's own host, absolute elsewhere."""
    origin = page[:page.index("/", len("http://"))]
    return target[len(origin):] if target.startswith(origin + "/") else target


def generate(spec: HostsSpec, root: Path, *, force: bool = False) -> HostsSite:
    """Write ``root/<address>/...`` for every host unless an identical site is there."""
    meta_path = root / "meta.json"
    if not force and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == spec.key():
            expected = (root / "expected.txt").read_text().split()
            return HostsSite(root, spec, expected, int(meta["max_level"]), meta)
    t0 = time.monotonic()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    graph = plan(spec)
    levels = levels_of(spec, graph)
    rng = random.Random(spec.seed + 1)
    writer = _Writer(rng, _paragraphs(rng))
    total_bytes = total_links = 0
    made: set[Path] = set()

    def file_of(url: str) -> Path:
        path = url[url.index("/", len("http://")):]
        host = url[len("http://"):].split(":", 1)[0]
        f = root / host / (path.lstrip("/") + "index.html" if path.endswith("/")
                           else path.lstrip("/"))
        if f.parent not in made:
            f.parent.mkdir(parents=True, exist_ok=True)
            made.add(f.parent)
        return f

    for url, links in graph.items():
        path = url[url.index("/", len("http://")):]
        host = url[len("http://"):].split(":", 1)[0]
        body = [(_href(spec, url, t), f"Page {i}") for i, t in enumerate(links)]
        data = writer.page(f"Hosts page {path} on {host}", [], body[:2], body[2:], [], [],
                           rng.randint(5_000, 30_000))
        file_of(url).write_bytes(data)
        total_bytes += len(data)
        total_links += len(links)
    for url in spec.small_urls():
        data = writer.page("Small job page", [], [("/", "Home")],
                           [], [], [], rng.randint(5_000, 30_000))
        file_of(url).write_bytes(data)
    if spec.single:  # "/" answers (the server's readiness check); linked from nothing
        file_of(spec.origin(0) + "/").write_bytes(
            writer.page("Single-host reference", [], [], [], [], [], 1_000))
    expected = sorted(graph)
    per_level = level_histogram(levels)
    max_level = len(per_level) - 1
    meta = {"key": spec.key(), "pages": len(expected), "hosts": spec.hosts,
            "max_level": max_level, "pages_per_level": per_level, "links": total_links,
            "bytes": total_bytes, "mean_page_kb": round(total_bytes / len(expected) / 1024, 1),
            "generated_in_s": round(time.monotonic() - t0, 1)}
    (root / "expected.txt").write_text("\n".join(expected) + "\n")
    meta_path.write_text(json.dumps(meta, indent=1))
    print(f"site: generated {len(expected)} pages on {spec.addresses} hosts "
          + (f"(the graph of {spec.hosts} hosts, host k under /h<k>/) " if spec.single else "")
          + f"({total_bytes / 2**20:.0f} MiB, max level {max_level}) in "
          f"{meta['generated_in_s']} s", flush=True)
    return HostsSite(root, spec, expected, max_level, meta)


# ---------------------------------------------------------------------------------------------
# The report's arithmetic (pure).

def rate(pages: int, wall: float | None) -> float | None:
    return pages / wall if wall else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def politeness_bound(hosts: int, delay: float = HOST_DELAY) -> float:
    """Pages/s the politeness allows: each host starts a request every ``delay`` seconds."""
    return hosts / delay


def bloom_saving(plain: dict[str, Any], bloom: dict[str, Any], pages: int) -> dict[str, Any]:
    """CPU per page (ms) and PostgreSQL CPU (s) of the plain and bloom crawls; the saving as a
    share of plain's (positive: the Bloom filter saves)."""
    def per_page(r: dict[str, Any]) -> float | None:
        return r["cpu"] / pages * 1000 if r.get("cpu") is not None else None

    def pg(r: dict[str, Any]) -> float | None:
        return (r.get("cpu_by_kind") or {}).get("postgres")

    out: dict[str, Any] = {"cpu_ms_per_page": (per_page(plain), per_page(bloom)),
                           "postgres_cpu_s": (pg(plain), pg(bloom))}
    for k in ("cpu_ms_per_page", "postgres_cpu_s"):
        a, b = out[k]
        out[k + "_saved"] = 1 - b / a if a and b is not None else None
    return out


def verdicts(hosts: int, pages: int, runs: dict[str, dict[str, Any]]
             ) -> list[tuple[str, float | None, float | None, bool | None]]:
    """(what, measured ratio, target, met) for the issue's targets, from the runs by name
    (``harvester``, ``single``, ``scrapy``; each with ``wall`` and ``valid``). Up to
    ``POLITE_HOSTS`` hosts the politeness is the limit (the 100-host shape: target 0.9 of the
    bound), and the single-host rate and Scrapy are for information (target None); above it
    the CPU is (the 1,000-host shape: 0.9 of the single-host rate, 3x Scrapy)."""
    def r(name: str) -> float | None:
        run = runs.get(name) or {}
        return rate(pages, run.get("wall")) if run.get("valid") else None

    h = r("harvester")
    polite = hosts <= POLITE_HOSTS
    out: list[tuple[str, float | None, float | None, bool | None]] = []

    def add(what: str, v: float | None, target: float | None) -> None:
        out.append((what, v, target, None if v is None or target is None else v >= target))

    if polite:
        add("against the politeness bound", ratio(h, politeness_bound(hosts)), 0.9)
    if not polite or "single" in runs:
        add("against the single-host rate", ratio(h, r("single")), None if polite else 0.9)
    if "scrapy" in runs:
        add("against Scrapy (x)", ratio(h, r("scrapy")), None if polite else 3.0)
    if "unpaced" in runs:  # for information: the gap's parts
        add("against the unpaced rate (what the politeness costs)", ratio(h, r("unpaced")), None)
        if "single" in runs:
            add("unpaced against the single-host rate (what the hosts cost)",
                ratio(r("unpaced"), r("single")), None)
    return out


def by_repeat(runs: list[dict[str, Any]]) -> list[dict[str, dict[str, Any]]]:
    """The runs of each repeat by name (``label``), repeats in order (a run without ``repeat``
    is the first's)."""
    groups: dict[int, dict[str, dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(int(r.get("repeat") or 1), {})[r["label"]] = r
    return [groups[k] for k in sorted(groups)]


def median_verdicts(hosts: int, pages: int, runs: list[dict[str, Any]]
                    ) -> list[tuple[str, float | None, float | None, bool | None,
                                list[float | None]]]:
    """``verdicts`` of each repeat (its runs compared with each other: the same minutes of
    the machine), then per target (what, the median of the repeats that measured it, target,
    met by the median, each repeat's value). A repeat with an invalid run has no value for
    the ratios that need it; the median is over the others."""
    per = [verdicts(hosts, pages, group) for group in by_repeat(runs)]
    out = []
    for i, (what, _, target, _) in enumerate(per[0] if per else []):
        values = [p[i][1] if i < len(p) and p[i][0] == what else None for p in per]
        measured = [v for v in values if v is not None]
        med = statistics.median(measured) if measured else None
        out.append((what, med, target, None if med is None or target is None else med >= target,
                    values))
    return out


def _f(v: float | None, fmt: str = "{:.2f}") -> str:
    return "—" if v is None else fmt.format(v)


def _links_per_page(site: HostsSite) -> str:
    links = site.meta.get("links")
    return _f(cast(int, links) / len(site.expected) if links else None, "{:.1f}")


def render(a: argparse.Namespace, site: HostsSite, runs: list[dict[str, Any]],
           machine: dict[str, Any], started: datetime.datetime,
           single: HostsSite | None = None) -> str:
    pages = len(site.expected)
    repeats = by_repeat(runs)
    verdict_lines = median_verdicts(site.spec.hosts, pages, runs)
    several = len(repeats) > 1
    if several:  # each run named with its repeat below ("harvester r2")
        runs = [{**r, "label": f"{r['label']} r{r.get('repeat') or 1}"} for r in runs]
    lines = [f"# Harvester many-host benchmark — {started:%Y-%m-%d %H:%M %Z}", "",
             f"`python -m bench {' '.join(a.argv)}`".replace("  ", " "), "",
             (f"* machine: {machine.get('cpus')} CPUs, load average at start "
             f"{machine.get('loadavg')}; commit {machine.get('commit')}; server "
             f"{machine.get('server')}"),
             (f"* site: {pages:,} pages on {site.spec.hosts:,} hosts (127.0.x.y, one server "
             f"on *:{site.spec.port}), {_links_per_page(site)} links/page, mean "
             f"{site.meta.get('mean_page_kb')} KB, max level {site.max_level} (pages per level "
             f"{site.meta.get('pages_per_level')})"
             + ("" if single is None else
                f"; `single` crawls the same graph on one host (host k's pages under /h<k>/): "
                f"{len(single.expected):,} pages, {_links_per_page(single)} links/page, pages "
                f"per level {single.meta.get('pages_per_level')}")),
             (f"* politeness: hostConcurrency {HOST_CONCURRENCY}, hostDelay {HOST_DELAY}s, no "
             f"per-host limits, robots off; Harvester {a.workers} workers, \"concurrency\" "
             f"{a.concurrency} each; Scrapy CONCURRENT_REQUESTS_PER_DOMAIN={HOST_CONCURRENCY}, "
             f"DOWNLOAD_DELAY={HOST_DELAY}, RANDOMIZE_DOWNLOAD_DELAY=False, "
             f"CONCURRENT_REQUESTS={scrapy_concurrency(site.spec.hosts)}; politeness bound "
             f"{politeness_bound(site.spec.hosts):,.0f} pages/s"), "",
             "| run | valid | wall s | pages/s | CPU s | CPU ms/page | PostgreSQL CPU s |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        n = pages
        pr = rate(n, r.get("wall")) if r.get("valid") else None
        cpu = r.get("cpu")
        lines.append(f"| {r['label']} | {'yes' if r.get('valid') else 'NO'} | "
                     f"{_f(r.get('wall'), '{:.1f}')} | {_f(pr, '{:.0f}')} | "
                     f"{_f(cpu, '{:.1f}')} | {_f(cpu / n * 1000 if cpu else None, '{:.2f}')} | "
                     f"{_f((r.get('cpu_by_kind') or {}).get('postgres'), '{:.1f}')} |")
    lines += ["", "Targets (issue 14)" + (f", the median of {len(repeats)} repeats (each "
                                          "repeat's runs compared with each other)"
                                          if several else "") + ":", ""]
    for what, v, target, met, values in verdict_lines:
        spread = f"({', '.join(_f(x) for x in values)}) " if several else ""
        lines.append(f"* Harvester {what}: **{_f(v)}** {spread}" + (
            "(for information" + (": the hosts are the limit)" if site.spec.hosts <= POLITE_HOSTS
                                  else ")") if target is None else
            f"(target >= {target}: "
            f"{'met' if met else 'NOT met' if met is False else 'not measured'})"))
    for r in runs:
        if r.get("small_during") is None and r.get("small_alone") is None:
            continue
        lines.append(f"* fairness ({r['label']}): a {site.spec.small_pages}-page job on "
                     f"{min(site.spec.small_hosts, site.spec.hosts)} of the crawl's hosts, "
                     f"submitted at {SMALL_AT:.0%} of the crawl: "
                     f"**{_f(r.get('small_during'), '{:.1f}')} s** against "
                     f"{_f(r.get('small_alone'), '{:.1f}')} s alone (after the crawl): "
                     f"x{_f(ratio(r.get('small_during'), r.get('small_alone')))}")
    for rep, by in enumerate(repeats, 1):
        h = by.get("harvester") or {}
        if "bloom" not in by or not h:
            continue
        s = bloom_saving(h, by["bloom"], pages)
        p0, p1 = s["cpu_ms_per_page"]
        g0, g1 = s["postgres_cpu_s"]
        lines.append(f"* Bloom filter (`bloom: {{}}`{f', r{rep}' if several else ''}): CPU {_f(p0)} -> {_f(p1)} ms/page "
                     f"(saved {_f(s['cpu_ms_per_page_saved'], '{:.1%}')}), PostgreSQL "
                     f"{_f(g0, '{:.1f}')} -> {_f(g1, '{:.1f}')} s (saved "
                     f"{_f(s['postgres_cpu_s_saved'], '{:.1%}')})")
    for r in runs:
        lines += crawl_lines(r, pages)
    lines += ["", ("pages/s = expected pages / wall (Harvester: POST to `pending == 0`, every "
              "process of `harvester up`; Scrapy: spider_opened to spider_closed). A crawl that "
              "misses an expected page is invalid. Re-expansions: visits of pages already "
              "fetched, met again at a lower level (their links from the store, no fetch); "
              "counted at the crawl's end, the fetches include the small job's if it ran.")]
    for r in runs:
        if st := r.get("pg_stats"):
            lines += ["", (f"## PostgreSQL statements: {r['label']} (pg_stat_statements, "
                      f"the crawl; all statements {st['total_ms'] / 1000:,.1f} s, planning "
                      f"{_f(_per(st.get('plan_ms'), 1000), '{:,.1f}')} s more)"), ""]
            lines += statement_table(st["statements"], st["total_ms"])
            lines += ["", *table_writes(st.get("tables") or [])]
    lines += ["", "## Details", ""]
    for r in runs:
        keep = {k: v for k, v in r.items() if v not in (None, [], {}) and k != "pg_stats"}
        lines.append(f"    {json.dumps(keep, default=str)}")
    return "\n".join(lines) + "\n"


URL_STREAM, WORK_STREAM = "HARVESTER_URL_QUEUE", "HARVESTER_WORK_QUEUE"  # stream_name(...)


def crawl_lines(r: dict[str, Any], pages: int) -> list[str]:
    """A Harvester run's queues when the small job was submitted (``at_small``: the JetStream
    streams' messages, the jobs' pending and published visits in PostgreSQL) and its
    re-expansions (``counters``, read at the crawl's end)."""
    out = []
    if q := r.get("at_small"):
        st = q.get("streams") or {}
        jobs = q.get("pending_by_job") or {}
        out.append(f"* queues at {SMALL_AT:.0%} ({r['label']}, {q['t']} s, {q['processed']:,} "
                   f"processed): URL stream {_f(st.get(URL_STREAM), '{:,}')}, work stream "
                   f"{_f(st.get(WORK_STREAM), '{:,}')}; in PostgreSQL "
                   + (", ".join(f"job {j}: {v['pending']:,} pending, {v['published']:,} published"
                                for j, v in jobs.items()) or "—"))
    if (c := r.get("counters")) is not None:
        fs = c.get("visits_from_store")
        out.append(f"* re-expansions ({r['label']}): {_f(fs, '{:,.0f}')} from-store visits "
                   f"(`harvester_visits_from_store`: {_f(ratio(fs, pages), '{:.1%}')} of the "
                   f"pages); {_f(c.get('fetches'), '{:,.0f}')} fetches, "
                   f"{_f(c.get('visits_forwarded'), '{:,.0f}')} visits forwarded, "
                   f"{_f(c.get('visits_deferred'), '{:,.0f}')} deferred at their host by a "
                   f"worker, {_f(c.get('host_queue'), '{:,.0f}')} queued in one for its slot"
                   + (" (deferred: " + ", ".join(f"{w} {n:,.0f}" for w, n in sorted(why.items()))
                      + ")" if (why := r.get("deferred_by_why")) else ""))
    if p := r.get("progress"):
        out.append(f"* progress ({r['label']}): seconds to each tenth of the pages processed "
                   + ", ".join(f"{10 * (i + 1)}% {t}" for i, t in enumerate(p)))
    return out


def metric_totals(texts: list[str], names: tuple[str, ...]) -> dict[str, float | None]:
    """Each metric's samples summed over labels and processes (Prometheus text format, one text
    per process); None for a metric no process exposes."""
    out: dict[str, float | None] = dict.fromkeys(names)
    for text in texts:
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in out:
                out[name] = (out[name] or 0) + float(line.rsplit(" ", 1)[1])
    return out


def metric_by_label(texts: list[str], name: str, label: str) -> dict[str, float]:
    """One metric's samples summed over processes, by the value of its ``label``."""
    out: dict[str, float] = {}
    key = f'{label}="'
    for text in texts:
        for line in text.splitlines():
            if line.startswith(name + "{") and key in line:
                value = line.split(key, 1)[1].split('"', 1)[0]
                out[value] = out.get(value, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def _per(total: float | None, n: float) -> float | None:
    """``total / n``; None when ``total`` is missing or 0 (planning not tracked: an older
    report), printed as a dash."""
    return total / n if total else None


TABLE_WRITES = ("table", "inserted", "updated", "hot", "deleted", "autovacuums", "autoanalyzes")


def table_writes(tables: list[dict[str, Any]]) -> list[str]:
    """The tables' rows written over the crawl (``pg_stat_user_tables``) as a Markdown table:
    an update that is not HOT (heap-only: in place, no index entry) writes every index of its
    table again."""
    if not tables:
        return []
    lines = ["| table | inserted | updated | of which HOT | deleted | autovacuums | autoanalyzes |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for t in tables:
        hot = ratio(t["hot"], t["updated"])
        lines.append(f"| {t['table']} | {t['inserted']:,} | {t['updated']:,} | {t['hot']:,}"
                     f"{f' ({hot:.0%})' if hot is not None else ''} | {t['deleted']:,} | "
                     f"{t['autovacuums']} | {t['autoanalyzes']} |")
    return lines


def statement_table(stmts: list[dict[str, Any]], total_ms: float) -> list[str]:
    """pg_stat_statements' top statements as a Markdown table, by total execution time; share
    of ``total_ms`` (every statement's time)."""
    if not stmts:
        return []
    lines = ["| statement | calls | total ms | ms/call | plan ms/call | rows | rows/call | share % |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in sorted(stmts, key=lambda s: -s["total_ms"]):
        calls = s["calls"] or 1
        q = s["query"][:140].replace("|", "/")
        lines.append(f"| `{q}` | {s['calls']:,} | {s['total_ms']:,.0f} | "
                     f"{s['total_ms'] / calls:.2f} | "
                     f"{_f(_per(s.get('plan_ms'), calls))} | "
                     f"{s['rows']:,} | {s['rows'] / calls:.1f} | "
                     f"{_f(s['total_ms'] * 100 / total_ms if total_ms else None, '{:.1f}')} |")
    return lines


def scrapy_concurrency(hosts: int) -> int:
    """CONCURRENT_REQUESTS: the most the per-host limits ever allow, never below 64."""
    return max(64, HOST_CONCURRENCY * hosts)


# ---------------------------------------------------------------------------------------------
# Serving.

_NGINX_CONF = """\
{user}worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 100000;
    open_file_cache max={file_cache} inactive=120s;
    default_type text/html;
    client_body_temp_path {run}/tmp-body;
    proxy_temp_path {run}/tmp-proxy;
    fastcgi_temp_path {run}/tmp-fastcgi;
    uwsgi_temp_path {run}/tmp-uwsgi;
    scgi_temp_path {run}/tmp-scgi;
    server {{
        listen {port} default_server;
        root {site}/$host;
        location / {{ try_files $uri ${{uri}}index.html =404; }}
    }}
}}
"""


def make_server(site: HostsSite, run_dir: Path, kind: str, workers: int | None) -> Any:
    from bench.server import StaticServer, _nofile

    class HostsServer(StaticServer):
        def start(self) -> None:
            if self.kind != "nginx":
                self.run_dir.mkdir(parents=True, exist_ok=True)
                hosts_file = self.run_dir / "hosts.txt"
                hosts_file.write_text("\n".join(host_addr(k) for k in range(site.spec.addresses)))
                log = open(self.run_dir / "aiohttp.out", "ab")  # noqa: SIM115
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "bench.static_server", "--root", str(self.site_root),
                     "--port", str(self.port), "--procs", str(self.workers),
                     "--hosts-file", str(hosts_file)],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                self._wait_ready()
                return
            self.run_dir.mkdir(parents=True, exist_ok=True)
            conf = self.run_dir / "nginx.conf"
            conf.write_text(_NGINX_CONF.format(
                user="user root;\n" if os.geteuid() == 0 else "", workers=self.workers,
                run=self.run_dir, site=self.site_root, port=self.port, nofile=_nofile(),
                file_cache=max(100, min(10_000, _nofile() // 2))))
            log = open(self.run_dir / "nginx.out", "ab")  # noqa: SIM115
            self.proc = subprocess.Popen(
                ["/usr/sbin/nginx", "-c", str(conf), "-p", str(self.run_dir), "-g", "daemon off;"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self._wait_ready()

    return HostsServer(site.root, run_dir, site.spec.port, kind, workers,
                       host_a=host_addr(0), host_b=host_addr(min(1, site.spec.addresses - 1)))


# ---------------------------------------------------------------------------------------------
# Measuring a running cluster (informative: a failure is recorded, never fatal).

_SPACE = re.compile(r"\s+")
PG_STATS_SETTINGS = ("shared_preload_libraries=pg_stat_statements pg_stat_statements.track=all "
                     "pg_stat_statements.track_planning=on")


def free_port_run(n: int) -> int:
    """The first of ``n`` consecutive ports free on 127.0.0.1 (``harvester up``'s metrics ports:
    the foreman's, then the workers'), below the kernel's ephemeral range: they are bound only
    once the tiers start, and a port from that range could meanwhile become the local end of
    one of the many connections a crawl opens (a run failed to start so)."""
    from bench.server import port_free

    low = ephemeral_low()
    for _ in range(200):
        base = random.randrange(PORT_RUN_FLOOR, max(PORT_RUN_FLOOR + 1, low - n))
        if all(port_free(p, ("127.0.0.1",)) for p in range(base, base + n)):
            return base
    raise RuntimeError(f"no {n} consecutive free ports below {low}")


PORT_RUN_FLOOR = 20000  # metrics ports are picked from here up to the ephemeral range


def ephemeral_low(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> int:
    """The first port of the kernel's ephemeral range (32768, Linux's default, if unknown)."""
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def scrape(ports: list[int]) -> list[str]:
    """The /metrics text of each process (``""`` for one that does not answer)."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    texts = []
    for port in ports:
        try:
            with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                texts.append(r.read().decode())
        except OSError:
            texts.append("")
    return texts


def pg_query(dsn: str, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


def pg_stats_reset(dsn: str) -> None:
    """Start pg_stat_statements and the tables' counters afresh (the crawl only, not the
    start-up and migrations)."""
    pg_query(dsn, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    pg_query(dsn, "SELECT pg_stat_statements_reset()")
    pg_query(dsn, "SELECT pg_stat_reset()")


def pg_stats_top(dsn: str, top: int = 15) -> dict[str, Any]:
    """The top statements by total execution time since the reset (statements inside plpgsql
    functions too: ``track=all``), and the time of all of them; the planning time too
    (``track_planning``: the feeder plans each claim for its parameters)."""
    rows = pg_query(dsn, """
        SELECT query, calls, total_exec_time, rows, total_plan_time FROM pg_stat_statements
        WHERE query NOT ILIKE '%%pg_stat_statements%%' ORDER BY total_exec_time DESC""")
    tables = pg_query(dsn, """
        SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, autovacuum_count,
               autoanalyze_count FROM pg_stat_user_tables
        WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 ORDER BY n_tup_ins + n_tup_upd + n_tup_del DESC""")
    return {"total_ms": round(sum(r[2] for r in rows), 1),
            "plan_ms": round(sum(r[4] for r in rows), 1),
            "tables": [dict(zip(TABLE_WRITES, (str(r[0]), *map(int, r[1:])), strict=True))
                       for r in tables], "statements": [
        {"query": _SPACE.sub(" ", q).strip()[:600], "calls": c, "total_ms": round(t, 1),
         "rows": n, "plan_ms": round(pt, 1)} for q, c, t, n, pt in rows[:top]]}


def snapshot(dsn: str, nats_url: str) -> dict[str, Any]:
    """The queues at this moment: messages in each JetStream stream (published, not yet acked:
    ``HARVESTER_URL_QUEUE``, ``HARVESTER_WORK_QUEUE``, ...), and per job the visits pending in
    PostgreSQL and how many of them are published."""
    import asyncio

    import nats

    async def streams() -> dict[str, int]:
        nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            return {i.config.name: int(i.state.messages)
                    for i in await nc.jetstream().streams_info() if i.config.name}
        finally:
            await nc.close()

    out: dict[str, Any] = {}
    try:
        out["streams"] = asyncio.run(streams())
    except Exception as e:  # noqa: BLE001 - informative only
        out["streams_error"] = repr(e)
    try:
        out["pending_by_job"] = {str(j): {"pending": n, "published": p} for j, n, p in pg_query(
            dsn, "SELECT job_id, count(*), count(published_on) FROM job_pending GROUP BY job_id")}
    except Exception as e:  # noqa: BLE001
        out["pending_error"] = repr(e)
    return out


# The foreman's and the workers' counters read at the end of a crawl: from-store visits are
# re-expansions (a page met again at a lower level: its links from the link set
# the job used (job_page, url_links), no fetch).
COUNTERS = ("harvester_visits_from_store_total", "harvester_visits_forwarded_total",
            "harvester_visits_dropped_total", "harvester_visits_held_total",
            "harvester_fetches_total", "harvester_retries_total",
            "harvester_visits_deferred_total", "harvester_host_queue_total")


# ---------------------------------------------------------------------------------------------
# Running.

def write_config(path: Path, worker_concurrency: int, single: HostsSite | None = None,
                 unpaced: bool = False, per_worker: int | None = None) -> Path:
    """The tiers' config: ``worker_concurrency`` the host limit of the single-host and unpaced
    runs and, unless ``per_worker`` (``--worker-concurrency``) says otherwise, each worker's
    ``concurrency``."""
    cfg: dict[str, object] = {"robots": False, "concurrency": per_worker or worker_concurrency,
                              "maxDepth": 40, "logLevel": "WARNING",
                              "hostConcurrency": HOST_CONCURRENCY, "hostDelay": HOST_DELAY,
                              "allowNetworks": ["127.0.0.0/8"]}  # 127.0.x.y hosts (SSRF guard)
    if single is not None:  # the single-host reference: no politeness, as bench/site.py's
        cfg["hostLimits"] = {f"{host_addr(0)}:{single.spec.port}":
                             {"concurrency": worker_concurrency, "delay": "0s"}}
    if unpaced:  # every host as the single-host reference's one: no politeness
        cfg.update(hostConcurrency=worker_concurrency, hostDelay="0s")
    path.write_text(json.dumps(cfg, indent=1) + "\n")
    return path


def run_harvester(site: HostsSite, out: Path, label: str, a: argparse.Namespace,
                  spec_extra: dict[str, object], single: bool = False,
                  fairness: bool = False, unpaced: bool = False) -> dict[str, Any]:
    from bench.harvester import (
        _UP_LINE,
        _await_healthz,
        _Drain,
        _get_json,
        _post,
        _stop,
        _wait_idle,
    )
    from bench.procs import TreeMonitor
    from harvester_ops.embedded import free_port

    data_dir = out / f"hosts-{label}"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    config = write_config(out / f"hosts-{label}.json", a.concurrency, site if single else None,
                          unpaced, a.worker_concurrency)
    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}"
    env = dict(os.environ, PYTHONUNBUFFERED="1", HARVESTER_OUTPUT_ROOT=str(data_dir / "output"))
    if a.pg_stats:
        env["HARVESTER_PG_SETTINGS"] = PG_STATS_SETTINGS
    metrics_base = free_port_run(1 + a.workers)  # the foreman's, then each worker's
    metrics_ports = list(range(metrics_base, metrics_base + 1 + a.workers))
    up = subprocess.Popen([sys.executable, "-m", "harvester_ops.cli", "up", "--data-dir",
                           str(data_dir), "-addr", f"127.0.0.1:{api_port}", "--workers",
                           str(a.workers), "-config", str(config),
                           "--metrics-port-base", str(metrics_base)],
                          cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=open(data_dir / "up.stderr", "ab"),  # noqa: SIM115
                          start_new_session=True)
    drain = _Drain(up.stdout, data_dir / "up.stdout")
    drain.start()
    result: dict[str, Any] = {"system": "harvester", "label": label, "valid": False,
                              "spec": spec_extra}
    try:
        m = _UP_LINE.search(drain.first) if drain.got_first.wait(180) else None
        if m is None:
            raise RuntimeError(f"harvester up did not start: {drain.first!r}; see {data_dir}")
        dsn, nats_url = m["dsn"], m["nats"]
        _await_healthz(api)
        _wait_idle([up.pid], min_procs=4 + a.workers + 5)

        def post(spec: dict[str, object]) -> int:
            return int(_post(api + "/", json.dumps(spec).encode(),  # type: ignore[index]
                             content_type="application/json")["jobId"])

        def pending(job: int) -> int:
            return int(cast(dict[str, Any], _get_json(f"{api}/status/{job}")).get("pending") or 0)

        small = site.spec.small_urls()
        small_spec = {"urls": small, "depth": 1, "forceCrawl": True}
        if a.pg_stats:
            try:
                pg_stats_reset(dsn)
            except Exception as e:  # noqa: BLE001 - informative only
                result["pg_stats_error"] = repr(e)
        monitor = TreeMonitor([up.pid])
        monitor.start()
        t0 = time.monotonic()
        job = post({"urls": [site.start_url], "depth": site.harvester_depth, **spec_extra})
        small_job = small_t0 = None
        status: dict[str, Any] = {}
        # seconds to each tenth of the pages (the report's progress line); the first
        # START_CURVE seconds at every poll, (seconds, processed) (the JSON's "start": a
        # crawl's start is bound by politeness and by how soon new hosts are claimed)
        progress: list[float] = []
        start: list[tuple[float, int]] = []
        result["progress"], result["start"] = progress, start
        while True:
            status = _get_json(f"{api}/status/{job}")  # type: ignore[assignment]
            now = time.monotonic()
            done = (status.get("pages") or {}).get("processed", 0)
            if now - t0 < START_CURVE:
                start.append((round(now - t0, 2), done))
            reached = min(10, int(10 * done / len(site.expected)))  # deciles reached
            while len(progress) < reached:  # the first poll that saw each decile
                progress.append(round(now - t0, 1))
            if "at_small" not in result and done >= SMALL_AT * len(site.expected):
                # the queues when the small job is submitted (or would be, without it)
                result["at_small"] = {"t": round(now - t0, 1), "processed": done,
                                      **snapshot(dsn, nats_url)}
            if fairness and small_job is None and done >= SMALL_AT * len(site.expected):
                small_job, small_t0 = post(small_spec), time.monotonic()
                result["small_submitted_at"] = round(small_t0 - t0, 1)
            if small_job is not None and "small_during" not in result and not pending(small_job):
                result["small_during"] = round(time.monotonic() - small_t0, 2)  # type: ignore[operator]
            if status.get("pending") == 0 or now - t0 > a.timeout:
                break
            time.sleep(0.25)
        wall = time.monotonic() - t0
        monitor.stop()
        result.update({"wall": wall, "cpu": monitor.cpu(), "cpu_by_kind": monitor.cpu_by_kind(),
                       "status": status.get("pages"), **monitor.memory()})
        result.pop("samples", None)
        # at the crawl's end, before the result is read and the small job runs alone
        texts = scrape(metrics_ports)
        result["counters"] = {k.removeprefix("harvester_").removesuffix("_total"): v
                              for k, v in metric_totals(texts, COUNTERS).items()}
        result["deferred_by_why"] = metric_by_label(texts, "harvester_visits_deferred_total",
                                                    "why")
        if a.pg_stats and "pg_stats_error" not in result:
            try:
                result["pg_stats"] = pg_stats_top(dsn)
            except Exception as e:  # noqa: BLE001 - informative only
                result["pg_stats_error"] = repr(e)
        if status.get("pending") != 0:
            result["error"] = f"not complete after {a.timeout:.0f} s"
            return result
        pages = _get_json(f"{api}/result/{job}", 600)
        missing = [u for u in site.expected if u not in pages]  # type: ignore[operator]
        result["found"] = len(site.expected) - len(missing)
        result["missing_sample"] = missing[:5]
        result["valid"] = not missing
        if missing:
            result["error"] = f"{len(missing)} expected pages missing from the result"
        if small_job is not None:
            deadline = time.monotonic() + 300
            while "small_during" not in result and time.monotonic() < deadline:
                if not pending(small_job):
                    result["small_during"] = round(time.monotonic() - small_t0, 2)  # type: ignore[operator]
                time.sleep(0.1)
            t1 = time.monotonic()  # the same job alone, the hosts idle
            alone = post(small_spec)
            while pending(alone) and time.monotonic() < t1 + 300:
                time.sleep(0.1)
            result["small_alone"] = round(time.monotonic() - t1, 2)
        return result
    finally:
        _stop(up, [])
        if not a.keep_data:
            for sub in ("postgres", "nats", "output"):
                shutil.rmtree(data_dir / sub, ignore_errors=True)


def run_scrapy(site: HostsSite, out: Path, label: str, timeout: float) -> dict[str, Any]:
    from bench.others import _check_feed, _loop_args, _run_measured

    feed = out / f"hosts-scrapy-{label}.jsonl"
    feed.unlink(missing_ok=True)
    args = [sys.executable, "-m", "bench.scrapy_crawl", "--start", site.start_url,
            "--allow-regex", rf"^http://127\.0\.\d+\.\d+:{site.spec.port}/",
            # No DEPTH_LIMIT: the site is closed (every link is one of its pages), and with
            # per-host delays Scrapy's order is not breadth-first, so a page first met deeper
            # than its level would cut its children off under the limit.
            "--depth-limit", "0",
            "--concurrency", str(scrapy_concurrency(site.spec.hosts)),
            "--per-domain", str(HOST_CONCURRENCY), "--delay", str(HOST_DELAY), "--out", str(feed)]
    args += _loop_args()
    info, _monitor, wall_process, usage = _run_measured(args, out / f"hosts-scrapy-{label}.log",
                                                       timeout)
    result: dict[str, Any] = {"system": "scrapy", "label": label, "valid": False,
                              "wall_process": wall_process, **usage, **info}
    if "error" in info or "wall" not in info:
        result.setdefault("error", "no timing from the spider")
        return result
    return _check_feed(result, feed, site.expected, links=False)


def main(a: argparse.Namespace) -> int:
    from bench.harvester import VARIANTS
    from bench.procs import tree_cpu
    from bench.server import free_port_pair

    out: Path = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now().astimezone()
    port = a.port or free_port_pair(18580, hosts=("",))  # every address: 127.0.x.y hosts
    spec = HostsSpec(pages=a.pages, hosts=a.hosts, seed=a.seed, port=port,
                     small_pages=a.small_pages, small_hosts=a.small_hosts)
    site = generate(spec, out / f"site-hosts{a.hosts}", force=a.regenerate)
    single_site = None
    if "single" in a.systems:
        # The same graph (pages, links per page, levels) with every host's pages on one host.
        single_site = generate(HostsSpec(pages=a.pages, hosts=a.hosts, seed=a.seed, port=port,
                                         small_pages=1, small_hosts=1, single=True),
                               out / f"site-hosts{a.hosts}-single", force=a.regenerate)
    runs: list[dict[str, Any]] = []
    machine: dict[str, Any] = {
        "cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                 capture_output=True, text=True, check=False).stdout.strip()}
    # Each repeat runs every system once, the many-host site's then the single host's (their
    # servers share the port, so one at a time): a repeat's ratios compare runs minutes apart,
    # in the same phase of the machine, and the report gives their median.
    repeat = max(1, getattr(a, "repeat", 1) or 1)
    sites = [(s, sub) for s, sub in ((site, "hosts-server"), (single_site, "single-server"))
             if s is not None]
    for rep, (s, sub) in ((rep, x) for rep in range(1, repeat + 1) for x in sites):
        server = make_server(s, out / sub, a.server, a.server_workers)
        try:
            server.start()
            machine["server"] = f"{server.kind} ({server.description})"
            server.check([s.start_url, s.expected[-1]], [s.spec.origin(0) + "/missing.html"])
            todo: list[tuple[str, str]] = []  # (label, variant or system)
            if s is single_site:
                todo.append(("single", "plain"))
            else:
                for v in a.variants if "harvester" in a.systems else ():
                    todo.append(("harvester" if v == "plain" else v, v))
                if "unpaced" in a.systems:
                    todo.append(("unpaced", "unpaced"))
                if "scrapy" in a.systems:
                    todo.append(("scrapy", "scrapy"))
            for label, what in todo:
                print(f"bench: {label}" + (f" r{rep}" if repeat > 1 else "") + " ...", flush=True)
                cpu0 = tree_cpu([server.pid])[1]
                if what == "scrapy":
                    r = run_scrapy(s, out, label, a.timeout)
                elif what == "unpaced":
                    r = run_harvester(s, out, label, a, dict(VARIANTS["plain"]), unpaced=True)
                else:
                    single = s is single_site
                    r = run_harvester(s, out, label, a, dict(VARIANTS[what]), single=single,
                                      fairness=not single and not a.no_fairness)
                r["label"], r["repeat"] = label, rep
                r["server_cpu"] = round(tree_cpu([server.pid])[1] - cpu0, 2)
                runs.append(r)
                w = r.get("wall")
                print(f"  {'valid' if r.get('valid') else 'INVALID'}: found "
                      f"{r.get('found', 0)}/{len(s.expected)}, wall {w or 0:.1f} s, "
                      f"{(len(s.expected) / w if w else 0):.0f} pages/s"
                      + (f" — {r['error']}" if r.get("error") else ""), flush=True)
        finally:
            server.stop()
    if a.single_rate:  # one given rate, the reference of every repeat
        runs += [{"system": "harvester", "label": "single", "valid": True, "repeat": rep,
                  "wall": len(site.expected) / a.single_rate, "given": True}
                 for rep in range(1, repeat + 1)]
    text = render(a, site, runs, machine, started, single_site)
    (out / f"hosts{a.hosts}.md").write_text(text)
    (out / f"hosts{a.hosts}.json").write_text(json.dumps(
        {"machine": machine, "site": site.meta,
         "runs": runs},
        indent=1, default=str))
    print()
    print(text)
    print(f"bench: report written to {out / f'hosts{a.hosts}.md'}")
    return 0 if runs and all(r.get("valid") for r in runs) else 1
