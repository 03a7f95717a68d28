"""Run Scrapy and the aiohttp ceiling as subprocesses and measure them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.procs import TreeMonitor
from bench.site import Site
from shared.urls import canonicalize

REPO = Path(__file__).resolve().parent.parent


def _run_measured(args: list[str], log: Path, timeout: float) -> tuple[dict, TreeMonitor, float, dict]:
    """Run ``args``; its last stdout line is JSON. Returns it, the monitor, the process's wall
    time and its rusage (``os.wait4``: exact CPU and peak RSS of the whole process)."""
    t0 = time.monotonic()
    with open(log, "wb") as err:
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=err,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        monitor = TreeMonitor([proc.pid])
        monitor.start()
        assert proc.stdout is not None
        lines: list[bytes] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
        reader.start()
        deadline = time.monotonic() + timeout
        rusage = None
        # Reap it with wait4 (never proc.poll(), which would reap it without the rusage).
        try:
            while time.monotonic() < deadline:
                pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    proc.returncode, rusage = os.waitstatus_to_exitcode(status), ru
                    break
                time.sleep(0.05)
        except BaseException:  # Ctrl-C: do not leave the crawler running
            proc.kill()
            proc.wait()
            monitor.halt()
            raise
        timed_out = rusage is None
        if timed_out:
            proc.kill()
            _, _, rusage = os.wait4(proc.pid, 0)
            proc.returncode = -9
        wall_process = time.monotonic() - t0
        monitor.halt()  # the process is gone: its CPU comes from rusage and its own report
        reader.join(5)
    info: dict = {}
    for raw in reversed(lines):
        try:
            info = json.loads(raw)
            break
        except ValueError:
            continue
    usage = {}
    if rusage is not None:
        # Not ru_maxrss: on Linux it keeps the parent's RSS at fork across exec.
        usage = {"cpu_process": rusage.ru_utime + rusage.ru_stime}
    peak = info.get("vmhwm_mb") or max((monitor.peak_rss or {0: 0}).values()) / 2**20
    usage["maxrss_mb"] = round(peak, 1)
    if timed_out:
        info["error"] = f"not complete after {timeout:.0f} s"
    elif proc.returncode != 0:
        info["error"] = f"exit status {proc.returncode}; see {log}"
    return info, monitor, wall_process, usage


def run_scrapy(site: Site, out: Path, label: str, concurrency: int, timeout: float) -> dict[str, object]:
    feed = out / f"scrapy-{label}.jsonl"
    feed.unlink(missing_ok=True)
    spec = site.spec
    args = [sys.executable, "-m", "bench.scrapy_crawl", "--start", site.start_url,
            "--allow", f"{spec.host_a}:{spec.port}", "--allow", f"{spec.host_b}:{spec.port}",
            "--depth-limit", str(site.scrapy_depth_limit), "--concurrency", str(concurrency),
            "--out", str(feed)]
    try:  # the same event loop as Harvester's tiers (Scrapy's ASYNCIO_EVENT_LOOP setting)
        import uvloop  # noqa: F401
        args += ["--loop", "uvloop.Loop"]
    except ImportError:
        pass
    info, monitor, wall_process, usage = _run_measured(args, out / f"scrapy-{label}.log", timeout)
    result: dict[str, object] = {"system": "scrapy", "label": label, "valid": False,
                                 "depth_limit": site.scrapy_depth_limit,
                                 "wall_process": wall_process, **usage, **monitor.memory(),
                                 **info}
    if "error" in info or "wall" not in info:
        result.setdefault("error", "no timing from the spider")
        result["found"] = 0
        return result
    pages: set[str] = set()
    links = 0
    if feed.exists():
        with open(feed) as f:
            for line in f:
                item = json.loads(line)
                pages.add(canonicalize(item["url"]))
                links += len(item["links"])
    missing = [u for u in site.expected if u not in pages]
    result.update({"found": len(site.expected) - len(missing), "links": links,
                   "missing_sample": missing[:5], "valid": not missing})
    if missing:
        result["error"] = f"{len(missing)} expected pages missing from the feed"
    return result


def run_ceiling(site: Site, out: Path, label: str, concurrency: int, timeout: float,
                parse: bool = False) -> dict[str, object]:
    urls = site.root / "fetch.txt"
    args = [sys.executable, "-m", "bench.ceiling", "--urls", str(urls),
            "--concurrency", str(concurrency)] + (["--parse"] if parse else [])
    name = "ceiling+parse" if parse else "ceiling"
    info, monitor, wall_process, usage = _run_measured(
        args, out / f"{name.replace('+', '-')}-{label}.log", timeout)
    result: dict[str, object] = {"system": name, "label": label, "valid": False,
                                 "wall_process": wall_process, **usage, **monitor.memory(),
                                 **info}
    if "error" in info or "wall" not in info:
        result.setdefault("error", "no timing from the fetch loop")
        result["found"] = 0
        return result
    statuses = info.get("statuses", {})
    ok = int(statuses.get("200", 0))
    result["found"] = min(ok, len(site.expected))
    result["valid"] = ok == len(site.expected) and int(statuses.get("404", 0)) == len(site.missing)
    if not result["valid"]:
        result["error"] = f"statuses {statuses}"
    return result
