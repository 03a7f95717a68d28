"""Run Scrapy and the aiohttp ceiling as subprocesses and measure them."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.procs import TreeMonitor
from bench.site import Site
from shared.urls import canonicalize

REPO = Path(__file__).resolve().parent.parent
# As in pyproject.toml's bench extra. Installing it into .venv changed no installed version
# (pip install --dry-run --report, 1.11.0 with playwright 1.65, pydantic 2.14); if a later pin
# would, drop it from the extra: the bench then builds its own venv (crawlee_python).
CRAWLEE = "crawlee[playwright]==1.11.0"


def crawlee_python(out: Path) -> str:
    """An interpreter that has crawlee: this one if it has, else ``out/crawlee-venv``'s,
    created on first use (no browser is downloaded: Chromium is Debian's, by its path)."""
    if importlib.util.find_spec("crawlee") is not None:
        return sys.executable
    venv = out / "crawlee-venv"
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import crawlee, psutil"],
                                          capture_output=True, check=False).returncode == 0:
        return str(python)
    print(f"bench: crawlee is not installed here; installing {CRAWLEE} into {venv}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", CRAWLEE, "psutil"], check=True,
                   env=dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1"))
    return str(python)


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


def _loop_args() -> list[str]:
    """Scrapy's ``--loop`` for the same event loop as Harvester's tiers (its
    ASYNCIO_EVENT_LOOP setting): uvloop when it is installed."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return []
    return ["--loop", "uvloop.Loop"]


def _check_feed(result: dict[str, Any], feed: Path, expected: Sequence[str],
                links: bool = True) -> dict[str, Any]:
    """``result`` with what a crawler's JSON-lines feed found of the ``expected`` pages
    (``found``, ``missing_sample``, ``valid``, an ``error`` if any is missing; ``links``: the
    links it reported, too). A missing feed found nothing."""
    pages: set[str] = set()
    count = 0
    if feed.exists():
        with open(feed) as f:
            for line in f:
                item = json.loads(line)
                pages.add(canonicalize(item["url"]))
                if links:
                    count += len(item["links"])
    missing = [u for u in expected if u not in pages]
    result["found"] = len(expected) - len(missing)
    if links:
        result["links"] = count
    result.update({"missing_sample": missing[:5], "valid": not missing})
    if missing:
        result["error"] = f"{len(missing)} expected pages missing from the feed"
    return result


def run_scrapy(site: Site, out: Path, label: str, concurrency: int, timeout: float) -> dict[str, object]:
    feed = out / f"scrapy-{label}.jsonl"
    feed.unlink(missing_ok=True)
    args = peer_args("bench.scrapy_crawl", site, concurrency, feed,
                     "--depth-limit", str(site.scrapy_depth_limit))
    args += _loop_args()
    result = run_peer("scrapy", label, args, out, timeout,
                      {"depth_limit": site.scrapy_depth_limit}, "the spider")
    return result if "error" in result else _check_feed(result, feed, site.expected)


def peer_args(module: str, site: Site, concurrency: int, out: Path, *depth: str) -> list[str]:
    """The command line of a peer crawler's module over ``site``: start URL, the site's two
    hosts allowed, ``depth`` (its own flag and value), concurrency, the file it writes."""
    spec = site.spec
    return [sys.executable, "-m", module, "--start", site.start_url,
            "--allow", f"{spec.host_a}:{spec.port}", "--allow", f"{spec.host_b}:{spec.port}",
            *depth, "--concurrency", str(concurrency), "--out", str(out)]


def run_peer(system: str, label: str, args: list[str], out: Path, timeout: float,
             extra: dict[str, Any], who: str) -> dict[str, Any]:
    """Run a peer crawler's process (``args``; its log ``out/<system>-<label>.log``) under
    measurement: its result (``extra``, the process's wall, CPU and memory, what it printed),
    not yet judged; with an ``error`` and nothing found when it printed no timing."""
    info, monitor, wall_process, usage = _run_measured(args, out / f"{system}-{label}.log",
                                                       timeout)
    result: dict[str, Any] = {"system": system, "label": label, "valid": False, **extra,
                              "wall_process": wall_process, **usage, **monitor.memory(), **info}
    if "error" in info or "wall" not in info:
        result.setdefault("error", f"no timing from {who}")
        result["found"] = 0
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


def run_crawlee(site: Site, out: Path, label: str, pages: int, timeout: float,
                chromium: str = "/usr/bin/chromium",
                python: str | None = None) -> dict[str, object]:
    """Crawlee's PlaywrightCrawler (``bench/crawlee_crawl.py``) over the JavaScript site, with
    ``pages`` browser pages at once on ``chromium``; ``python``: the interpreter that has
    crawlee (``.venv``'s, or ``bench/out/crawlee-venv``'s)."""
    feed = out / f"crawlee-{label}.jsonl"
    feed.unlink(missing_ok=True)
    args = [python or sys.executable, "-m", "bench.crawlee_crawl", "--start", site.start_url,
            "--max-depth", str(site.scrapy_depth_limit), "--pages", str(pages),
            "--chromium", chromium, "--out", str(feed)]
    info, monitor, wall_process, usage = _run_measured(args, out / f"crawlee-{label}.log",
                                                       timeout)
    result: dict[str, object] = {"system": "crawlee", "label": label, "valid": False,
                                 "max_crawl_depth": site.scrapy_depth_limit,
                                 "browser_pages": pages, "wall_process": wall_process, **usage,
                                 **monitor.memory(), **info}
    # The psutil sampler over the whole process tree (Chromium included), for the whole
    # process's life: an upper bound that cross-checks the crawler's own figure.
    if monitor.start_snap is not None:
        result["cpu_sampled"] = round(monitor.cpu_sampled(), 2)
    if "error" in info or "wall" not in info:
        result.setdefault("error", "no timing from the crawler")
        result["found"] = 0
        return result
    return _check_feed(result, feed, site.expected)
