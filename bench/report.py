"""Aggregate runs (medians over --repeat) and render the markdown report."""

from __future__ import annotations

import statistics
from typing import Any

Run = dict[str, Any]


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[Run], expected: int) -> dict[str, Any]:
    """Medians of one configuration's repeated runs (valid runs only, if there are any)."""
    valid = [r for r in runs if r.get("valid")]
    use = valid or runs
    first = use[0]
    wall = _median([r.get("wall") for r in use])
    cpu = _median([r.get("cpu") for r in use])
    s: dict[str, Any] = {
        "system": first["system"], "label": first.get("label", ""), "runs": len(runs),
        "valid_runs": len(valid), "found": min(r.get("found", 0) for r in use),
        "expected": expected, "wall": wall, "cpu": cpu,
        "pages_per_s": expected / wall if wall and valid else None,
        "cpu_per_1000": cpu / expected * 1000 if cpu is not None and valid else None,
        "errors": sorted({r["error"] for r in runs if r.get("error")}),
        "workers": first.get("workers"), "foremen": first.get("foremen"),
        "variant": first.get("variant", "plain"),
        "browser_workers": first.get("browser_workers"),
        "browser_pages": first.get("browser_pages"),
        "cpu_sampled": _median([r.get("cpu_sampled") for r in use]),
        "saved_mb": _median([r.get("saved_mb") for r in use]),
    }
    kinds = sorted({k for r in use for k in (r.get("peak_rss_mb") or {})})
    s["peak_rss_mb"] = {k: _median([(r.get("peak_rss_mb") or {}).get(k) for r in use])
                        for k in kinds}
    s["peak_kind_total_mb"] = {k: _median([(r.get("peak_kind_total_mb") or {}).get(k)
                                           for r in use]) for k in kinds}
    s["postgres_pss_total_mb"] = _median([r.get("postgres_pss_total_mb") for r in use])
    s["peak_total_rss_mb"] = _median([r.get("peak_total_rss_mb") for r in use])
    s["maxrss_mb"] = _median([r.get("maxrss_mb") for r in use])
    s["server_cpu"] = _median([r.get("server_cpu") for r in use])
    # Each valid run's figures, for the spread beside the medians; deadlocks of every run.
    s["pages_per_s_runs"] = [expected / r["wall"] for r in valid if r.get("wall")]
    s["cpu_per_1000_runs"] = [r["cpu"] / expected * 1000 for r in valid
                              if r.get("cpu") is not None and expected]
    s["pg_deadlocks"] = [r.get("pg_deadlocks") for r in runs]
    s["footprint"] = next((r["footprint"] for r in reversed(use) if r.get("footprint")), None)
    return s


def footprint_lines(summaries: list[dict[str, Any]]) -> list[str]:
    """What each Harvester configuration's crawl wrote and left per page (bench/footprint.py):
    the inputs of the capacity model (docs/scaling.md)."""
    rows = [s for s in summaries if s.get("footprint")]
    if not rows:
        return []
    out = ["", "## What a crawl writes, per page", "",
           ("| configuration | links/page | DB bytes/page | DB bytes/link | WAL bytes/page | "
           "rows written/page | commits/page | messages/page | largest tables (bytes/page) |"),
           "|---|---|---|---|---|---|---|---|---|"]
    for s in rows:
        f = s["footprint"]
        big = sorted(f["tables"].items(), key=lambda kv: -kv[1]["bytes_per_page"])[:4]
        out.append(f"| {s['system']} {s['label']} | {f['links'] / max(f['pages'], 1):.1f} | "
                   f"{f['db_bytes_per_page']:,} | {f['db_bytes_per_link']} | "
                   f"{f['wal_bytes_per_page']:,} | {f['rows_written_per_page']} | "
                   f"{f['commits_per_page']} | {f['messages_per_page']} | "
                   + ", ".join(f"{n} {t['bytes_per_page']:,}" for n, t in big) + " |")
    return out


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    """`` (min–max)`` of a figure over the runs, or nothing for fewer than 2 runs."""
    if len(values) < 2:
        return ""
    return f" ({fmt.format(min(values))}–{fmt.format(max(values))})"


def deadlocks_text(s: dict[str, Any]) -> str:
    """PostgreSQL deadlocks of each run of a Harvester configuration (its log), or —."""
    counts = s.get("pg_deadlocks") or []
    if not s["system"].startswith("harvester") or all(c is None for c in counts):
        return "—"
    return ", ".join("?" if c is None else str(c) for c in counts)


def rss_text(s: dict[str, Any]) -> str:
    """Peak RSS per process, in MB."""
    rss, totals = s["peak_rss_mb"], s["peak_kind_total_mb"]
    if s["system"] == "crawlee":
        parts = [f"crawlee {rss.get('crawlee', 0):.0f}"]
        for kind in ("playwright", "chromium"):
            if kind in totals:
                parts.append(f"{kind} {totals[kind]:.0f} total")
        if s.get("peak_total_rss_mb"):
            parts.append(f"all {s['peak_total_rss_mb']:.0f}")
        return ", ".join(parts)
    if s["system"] in ("harvester", "harvester-browser"):
        parts = []
        for kind, name in (("web_server", "web"), ("foreman", "foreman"), ("worker", "worker")):
            if kind in rss:
                parts.append(f"{name} {rss[kind]:.0f}")
        if "postgres" in totals:
            pss = s.get("postgres_pss_total_mb")
            parts.append(f"postgres {totals['postgres']:.0f} total"
                         + (f" (PSS {pss:.0f})" if pss else ""))
        for kind in ("playwright", "chromium"):
            if kind in totals:
                parts.append(f"{kind} {totals[kind]:.0f} total")
        if "nats-server" in rss:
            parts.append(f"nats {rss['nats-server']:.0f}")
        if "up" in rss:
            parts.append(f"up {rss['up']:.0f}")
        if s.get("peak_total_rss_mb"):
            parts.append(f"all {s['peak_total_rss_mb']:.0f}")
        return ", ".join(parts)
    peak = s.get("maxrss_mb") or max(rss.values(), default=0)
    return f"{peak:.0f}"


def _f(v: float | None, fmt: str = "{:.1f}") -> str:
    return "—" if v is None else fmt.format(v)


def _rate(s: dict[str, Any]) -> str:
    """Median pages/s with its spread over the runs."""
    return _f(s["pages_per_s"], "{:.0f}") + (
        spread(s.get("pages_per_s_runs") or [], "{:.0f}") if s["pages_per_s"] else "")


def _cpu_page(s: dict[str, Any]) -> str:
    """Median CPU s per 1,000 pages with its spread over the runs."""
    return _f(s["cpu_per_1000"], "{:.2f}") + (
        spread(s.get("cpu_per_1000_runs") or [], "{:.2f}") if s["cpu_per_1000"] else "")


def table(summaries: list[dict[str, Any]]) -> str:
    lines = [("| system | pages found / expected | wall s | pages/s | CPU s | CPU s / 1,000 pages "
              "| peak RSS MB (per process) | PG deadlocks per run |"),
             "|---|---:|---:|---:|---:|---:|---|---:|"]
    for s in summaries:
        name = s["system"]
        if s["system"] == "harvester":
            name += f" ({s['workers']} worker{'s' if s['workers'] != 1 else ''}"
            name += f", {s['foremen']} foremen)" if s["foremen"] != 1 else ")"
        elif s["system"] == "harvester-browser":
            name += (f" ({s['browser_workers']} browser worker"
                     f"{'s' if s['browser_workers'] != 1 else ''} × {s['browser_pages']} tabs)")
        elif s["system"] == "crawlee":
            name += f" ({s['browser_pages']} pages)"
        if not s["valid_runs"]:
            name += " **INVALID**"
        found = f"{s['found']:,} / {s['expected']:,}"
        lines.append(f"| {name} | {found} | {_f(s['wall'])} | {_rate(s)} "
                     f"| {_f(s['cpu'])} | {_cpu_page(s)} | {rss_text(s)} "
                     f"| {deadlocks_text(s)} |")
    return "\n".join(lines)


def ratios(by: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    h = by.get("harvester")
    if not h or not h["pages_per_s"]:
        return out
    for other in ("inmemory", "scrapy", "ceiling"):
        o = by.get(other)
        if not o or not o["pages_per_s"]:
            continue
        speed = h["pages_per_s"] / o["pages_per_s"]
        cpu = h["cpu_per_1000"] / o["cpu_per_1000"]
        out.append(f"* Harvester / {other}: pages/s × **{speed:.3g}**, CPU per page × **{cpu:.3g}**")
    return out + targets(by)


def targets(by: dict[str, dict[str, Any]]) -> list[str]:
    """Issue 15's targets (same run, same machine): at least the in-memory crawler's pages/s,
    CPU per page at most 1.0 ms (PostgreSQL and NATS included) and at most ¼ of Scrapy's."""
    h = by.get("harvester")
    if not h or not h["pages_per_s"]:
        return []

    def met(ok: bool) -> str:
        return "met" if ok else "**missed**"

    parts = []
    m = by.get("inmemory")
    if m and m["pages_per_s"]:
        speed = h["pages_per_s"] / m["pages_per_s"]
        parts.append(f"pages/s × {speed:.3g} the in-memory crawler's (≥ 1: {met(speed >= 1)})")
    ms = h["cpu_per_1000"]  # CPU s per 1,000 pages = CPU ms per page
    parts.append(f"CPU {ms:.2f} ms per page (≤ 1.0: {met(ms <= 1.0)})")
    sc = by.get("scrapy")
    if sc and sc["cpu_per_1000"]:
        cpu = ms / sc["cpu_per_1000"]
        parts.append(f"× {cpu:.3g} Scrapy's CPU per page (≤ 0.25: {met(cpu <= 0.25)})")
    return ["* issue 15 targets: " + "; ".join(parts)]


def browser_ratios(by: dict[str, dict[str, Any]], runs: list[Run]) -> list[str]:
    """Harvester's browser workers against Crawlee's PlaywrightCrawler on the JavaScript site
    (issue 12's target: pages/s × ≥ 1 at CPU per page × ≤ 1): the medians' ratio, then each
    repeat's (the runs of one repeat ran back to back)."""
    h, c = by.get("harvester-browser"), by.get("crawlee")
    if not h or not c or not h["pages_per_s"] or not c["pages_per_s"]:
        return []
    speed = h["pages_per_s"] / c["pages_per_s"]
    cpu = h["cpu_per_1000"] / c["cpu_per_1000"]
    met = "met" if speed >= 1 and cpu <= 1 else "**missed**"
    out = [(f"* Harvester browser / Crawlee: pages/s × **{speed:.3g}**, CPU per page × "
            f"**{cpu:.3g}** (target × ≥ 1 at × ≤ 1: {met})")]
    pairs = []
    for rep in sorted({r.get("repeat", 1) for r in runs}):
        hr = [r for r in runs if r["system"] == "harvester-browser" and r.get("valid")
              and r.get("repeat", 1) == rep]
        cr = [r for r in runs if r["system"] == "crawlee" and r.get("valid")
              and r.get("repeat", 1) == rep]
        if hr and cr and hr[0].get("wall") and cr[0].get("wall") and cr[0].get("cpu"):
            hs, cs = hr[0], cr[0]
            pairs.append(f"r{rep}: pages/s × {cs['wall'] / hs['wall']:.3g}, CPU/page × "
                         f"{hs['cpu'] / cs['cpu']:.3g}")
    if len(pairs) > 1:
        out.append("* per repeat: " + "; ".join(pairs))
    return out


def scaling_table(summaries: list[dict[str, Any]]) -> str:
    lines = [("| workers | foremen | valid | wall s | pages/s | CPU s / 1,000 pages | peak RSS MB "
              "| PG deadlocks per run |"),
             "|---:|---:|---|---:|---:|---:|---|---:|"]
    for s in summaries:
        lines.append(f"| {s['workers']} | {s['foremen']} | {s['valid_runs']}/{s['runs']} "
                     f"| {_f(s['wall'])} | {_rate(s)} | {_cpu_page(s)} | {rss_text(s)} "
                     f"| {deadlocks_text(s)} |")
    return "\n".join(lines)


def variants(summaries: list[dict[str, Any]]) -> list[str]:
    """Each variant's cost against the plain crawl with the same workers, in the same run."""
    plain = {(s["workers"], s["foremen"]): s for s in summaries
             if s["system"] == "harvester" and s["variant"] == "plain"}
    lines = [("| variant | workers | valid | pages/s | × plain | CPU s / 1,000 pages | × plain "
             "| saved MB | PG deadlocks per run |"), "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        base = plain.get((s["workers"], s["foremen"]))
        if s["system"] != "harvester" or s["variant"] == "plain" or base is None:
            continue
        speed = (s["pages_per_s"] / base["pages_per_s"]
                 if s["pages_per_s"] and base["pages_per_s"] else None)
        cpu = (s["cpu_per_1000"] / base["cpu_per_1000"]
               if s["cpu_per_1000"] and base["cpu_per_1000"] else None)
        lines.append(f"| {s['variant']} | {s['workers']} | {s['valid_runs']}/{s['runs']} "
                     f"| {_rate(s)} | {_f(speed, '{:.2f}')} "
                     f"| {_cpu_page(s)} | {_f(cpu, '{:.2f}')} "
                     f"| {_f(s['saved_mb'])} | {deadlocks_text(s)} |")
    return lines if len(lines) > 2 else []
