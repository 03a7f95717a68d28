"""The capacity model of docs/scaling.md, computed from a bench run's measured figures.

    python -m bench.capacity bench/out/last.json [--latency 1.0] [--page-factor 1.0]

Reads the Harvester run of a ``python -m bench`` report (its CPU by process kind and its
``footprint``, bench/footprint.py) and prints, for 1 million pages in a day and 100 million and
1 billion pages in 30 days: the fetch rate, cores per tier, nodes, disk, WAL and NATS traffic,
concurrent fetches and hosts needed under default politeness, and the size of the URL table
against memory (the first wall). Everything scales linearly from the per-page figures: the
model says what the measured figures imply, not what a real web crawl adds (bigger pages
``--page-factor``, slower servers ``--latency``, more discovered URLs ``--urls-per-page``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GB = 1e9
SCENARIOS = (("1 million pages in a day", 1e6, 1.0), ("100 million in 30 days", 1e8, 30.0),
             ("1 billion in 30 days", 1e9, 30.0))
TIERS = ("worker", "postgres", "foreman", "nats-server", "web_server")


@dataclass(frozen=True)
class PerPage:
    """Measured per page: CPU ms by tier, bytes and rows stored, WAL, messages."""

    cpu_ms: dict[str, float]
    db_bytes: float
    wal_bytes: float
    rows_written: float
    commits: float
    messages: float
    links: float
    url_rows: float
    url_bytes_per_row: float

    @classmethod
    def from_run(cls, run: dict[str, Any]) -> PerPage:
        f = run["footprint"]
        pages = f["pages"]
        url = f["tables"].get("url", {"rows_per_page": 0.0, "bytes_per_page": 0})
        return cls(cpu_ms={k: run["cpu_by_kind"].get(k, 0.0) / pages * 1000 for k in TIERS},
                   db_bytes=f["db_bytes_per_page"], wal_bytes=f["wal_bytes_per_page"],
                   rows_written=f["rows_written_per_page"], commits=f["commits_per_page"],
                   messages=f["messages_per_page"], links=f["links"] / pages,
                   url_rows=url["rows_per_page"],
                   url_bytes_per_row=url["bytes_per_page"] / max(url["rows_per_page"], 1e-9))


@dataclass(frozen=True)
class Need:
    """What one scenario takes."""

    name: str
    pages: float
    rate: float                     # pages/s
    cores: dict[str, float]         # by tier
    nodes: int                      # of ``node_cores`` cores, CPU only
    disk_gb: float                  # PostgreSQL, whole crawl kept
    wal_mb_s: float
    rows_s: float
    messages_s: float
    in_flight: float                # concurrent fetches at ``latency``
    hosts: float                    # hosts crawled at once under default politeness
    url_table_gb: float             # the url table and its indexes


def need(p: PerPage, name: str, pages: float, days: float, *, latency: float = 1.0,
         page_factor: float = 1.0, urls_per_page: float | None = None,
         node_cores: int = 16, host_rate: float = 2.0) -> Need:
    """The scenario ``pages`` in ``days``; the workers' CPU scales with ``page_factor`` (pages
    that many times bigger to parse than the bench's), the rest is per page."""
    rate = pages / (days * 86400)
    cores = {t: ms * rate / 1000 * (page_factor if t == "worker" else 1.0)
             for t, ms in p.cpu_ms.items()}
    urls = p.url_rows if urls_per_page is None else urls_per_page
    return Need(name=name, pages=pages, rate=rate, cores=cores,
                nodes=max(1, math.ceil(sum(cores.values()) / node_cores)),
                disk_gb=p.db_bytes * pages / GB,
                wal_mb_s=p.wal_bytes * rate / 1e6, rows_s=p.rows_written * rate,
                messages_s=p.messages * rate, in_flight=rate * latency,
                hosts=rate / host_rate, url_table_gb=urls * pages * p.url_bytes_per_row / GB)


def render(p: PerPage, needs: list[Need]) -> str:
    lines = ["| | " + " | ".join(n.name for n in needs) + " |",
             "|---|" + "---|" * len(needs)]

    def row(label: str, fmt: str, get: Any) -> None:
        lines.append(f"| {label} | " + " | ".join(fmt.format(get(n)) for n in needs) + " |")

    row("pages/s", "{:,.0f}", lambda n: n.rate)
    for t in TIERS:
        row(f"cores: {t}", "{:.2f}", lambda n, t=t: n.cores[t])
    row("cores, all tiers", "{:.1f}", lambda n: sum(n.cores.values()))
    row("16-core nodes (CPU only)", "{}", lambda n: n.nodes)
    row("PostgreSQL disk, GB (all kept)", "{:,.0f}", lambda n: n.disk_gb)
    row("url table + indexes, GB", "{:,.0f}", lambda n: n.url_table_gb)
    row("WAL, MB/s", "{:.1f}", lambda n: n.wal_mb_s)
    row("rows written/s", "{:,.0f}", lambda n: n.rows_s)
    row("NATS messages/s", "{:,.0f}", lambda n: n.messages_s)
    row("fetches in flight", "{:,.0f}", lambda n: n.in_flight)
    row("hosts at once (2 req/s each)", "{:,.0f}", lambda n: n.hosts)
    head = (f"Per page (measured): CPU ms {', '.join(f'{t} {v:.2f}' for t, v in p.cpu_ms.items())}; "
            f"{p.db_bytes:,.0f} DB bytes, {p.wal_bytes:,.0f} WAL bytes, {p.rows_written:.1f} rows "
            f"written, {p.commits:.2f} commits, {p.messages:.2f} messages, {p.links:.1f} links, "
            f"{p.url_rows:.2f} url rows of {p.url_bytes_per_row:.0f} bytes.")
    return head + "\n\n" + "\n".join(lines)


def harvester_run(report: dict[str, Any]) -> dict[str, Any]:
    """The valid plain Harvester run with a footprint whose CPU per page is the median of them
    (the lower middle one of an even count)."""
    runs = [r for r in report["runs"]
            if r.get("system") == "harvester" and r.get("valid") and r.get("footprint")
            and r.get("variant", "plain") == "plain"]
    if not runs:
        raise SystemExit("no valid plain Harvester run with a footprint in this report")
    runs.sort(key=lambda r: r["cpu"] / r["footprint"]["pages"])
    return runs[(len(runs) - 1) // 2]


def main(argv: list[str] | None = None) -> int:
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("report", type=Path, help="a bench report's JSON (bench/out/last.json)")
    a.add_argument("--latency", type=float, default=1.0, help="seconds per fetch (default 1)")
    a.add_argument("--page-factor", type=float, default=1.0,
                   help="real pages are this many times the bench's in parse cost")
    a.add_argument("--urls-per-page", type=float, default=None,
                   help="distinct URLs discovered per page fetched (default: measured)")
    args = a.parse_args(argv)
    p = PerPage.from_run(harvester_run(json.loads(args.report.read_text())))
    needs = [need(p, name, pages, days, latency=args.latency, page_factor=args.page_factor,
                  urls_per_page=args.urls_per_page) for name, pages, days in SCENARIOS]
    sys.stdout.write(render(p, needs) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
