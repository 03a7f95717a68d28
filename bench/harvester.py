"""Run one Harvester crawl of the bench site under ``harvester up`` and measure it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import psutil

from bench import eta, footprint
from bench.procs import TreeMonitor, tree_cpu
from bench.site import Site
from harvester_ops.embedded import free_port

REPO = Path(__file__).resolve().parent.parent
_UP_LINE = re.compile(r"Harvester is up: (?P<api>\S+)\s+\(PostgreSQL (?P<dsn>\S+), NATS (?P<nats>\S+),")


@dataclass
class HarvesterOptions:
    workers: int = 2
    foremen: int = 1
    concurrency: int = 64        # hostLimits concurrency of each bench host (cluster-wide)
    worker_concurrency: int = 64  # "concurrency": visits in hand per worker
    timeout: float = 600.0
    keep_data: bool = False
    profile: float = 0.0          # seconds of py-spy on one worker (0: none)
    profile_out: Path | None = None
    variant: str = "plain"        # a key of VARIANTS: what the job does besides links
    browser_workers: int = 0      # `harvester up --browser-workers` (issue 12)
    browser_pages: int = 4        # `--browser-pages`: tabs per browser worker
    browser_path: str = "/usr/bin/chromium"  # browserPath (the same Chromium as Crawlee's)
    nats_cluster: int = 1         # `harvester up --nats-cluster` (issue 18): clustered, R3
    nodes: int = 1                # issue 18: nodes 2.. each add a foreman and `workers` workers
    pg_stats: bool = False        # pg_stat_statements and the tables' writes over the crawl


# The job spec keys of each bench variant (issue 11): the cost of saving WARC and of extracting
# items, against the plain crawl of the same run.
VARIANTS: dict[str, dict[str, object]] = {
    "plain": {},
    "warc": {"save": [{"kind": "warc"}]},
    "extract": {"extract": [{"kind": "items", "fields": {
        "title": {"css": "title"}, "heading": {"xpath": "//h1"},
        "links": {"css": "a", "attr": "href", "take": "all"}}}]},
    # issue 12: the JavaScript site rendered by browser workers (harvester-browser)
    "browser": {"fetcher": "browser"},
    # issue 14: a Bloom filter per job and worker in front of the exact seen check
    "bloom": {"bloom": {}},
}


def write_config(site: Site, path: Path, concurrency: int, worker_concurrency: int,
                 browser_path: str | None = None) -> Path:
    port = site.spec.port
    limits = {"concurrency": concurrency, "delay": "0s"}
    cfg: dict[str, object] = {
        "hostLimits": {f"{site.spec.host_a}:{port}": limits, f"{site.spec.host_b}:{port}": limits},
        "robots": False, "concurrency": worker_concurrency, "maxDepth": 20,
        "logLevel": "WARNING",
        "allowNetworks": ["127.0.0.0/8"]}  # hosts A and B are on loopback (SSRF guard)
    if browser_path:
        cfg["fetcherKinds"] = ["http", "browser"]
        cfg["browserPath"] = browser_path
    path.write_text(json.dumps(cfg, indent=1) + "\n")
    return path


def _get_json(url: str, timeout: float = 30.0) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def _await_healthz(api: str, timeout: float = 60) -> None:
    """Until the web server at ``api`` answers ``/healthz`` with status ok."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cast(dict[str, Any], _get_json(api + "/healthz", 2)).get("status") == "ok":
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("harvester /healthz never answered ok")
        time.sleep(0.2)


def _post(url: str, body: bytes, timeout: float = 30.0, content_type: str | None = None) -> object:
    req = urllib.request.Request(url, data=body, method="POST")
    if content_type:
        req.add_header("Content-Type", content_type)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


class _RssPeak(threading.Thread):
    """The largest RSS of one process while it runs (sampled every 20 ms), in MB."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.start_mb = self.peak_mb = self.proc.memory_info().rss / 2**20
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.02):
            with contextlib.suppress(psutil.Error):
                self.peak_mb = max(self.peak_mb, self.proc.memory_info().rss / 2**20)

    def stop(self) -> None:
        self._halt.set()
        self.join(2)


def _timed_download(url: str, web_pid: int | None, timeout: float = 600.0) -> dict[str, object]:
    """GET ``url`` streaming: time to the first body byte, total time, size, the body, and the
    web server's RSS before and at its peak during the download."""
    peak = _RssPeak(web_pid) if web_pid else None
    if peak:
        peak.start()
    t0 = time.monotonic()
    chunks: list[bytes] = []
    with urllib.request.urlopen(url, timeout=timeout) as r:
        first = r.read(1)
        ttfb = time.monotonic() - t0
        chunks.append(first)
        while block := r.read(1 << 20):
            chunks.append(block)
    total = time.monotonic() - t0
    if peak:
        peak.stop()
    body = b"".join(chunks)
    out: dict[str, object] = {"ttfb_s": round(ttfb, 3), "total_s": round(total, 2),
                              "mb": round(len(body) / 2**20, 1), "body": body}
    if peak:
        out["web_rss_before_mb"] = round(peak.start_mb, 1)
        out["web_rss_peak_mb"] = round(peak.peak_mb, 1)
    return out


def _status_latency(api: str, job_id: int, n: int = 20) -> float:
    """Median time of ``n`` GET /status/<job> calls, in milliseconds."""
    times = []
    for _ in range(n):
        t0 = time.monotonic()
        _get_json(f"{api}/status/{job_id}")
        times.append(time.monotonic() - t0)
    times.sort()
    return round(times[len(times) // 2] * 1000, 2)


def _small_job(api: str, site: Site) -> int:
    """A job of a few pages (the second host's), run to completion; its id."""
    start = f"http://{site.spec.host_b}:{site.spec.port}/"
    job_id = int(_post(f"{api}/?depth=2&forceCrawl", start.encode())["jobId"])  # type: ignore[index]
    deadline = time.monotonic() + 60
    while _get_json(f"{api}/status/{job_id}").get("pending") and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.1)
    return job_id


def _web_server_pid(up_pid: int) -> int | None:
    for p in psutil.Process(up_pid).children():
        with contextlib.suppress(psutil.Error):
            if "-m web_server" in " ".join(p.cmdline()):
                return p.pid
    return None


class _Drain(threading.Thread):
    """Copies the up process's stdout to a log, handing the first line over."""

    def __init__(self, stream, log_path: Path) -> None:  # type: ignore[no-untyped-def]
        super().__init__(daemon=True)
        self.stream, self.log_path = stream, log_path
        self.first = ""
        self.got_first = threading.Event()

    def run(self) -> None:
        with open(self.log_path, "ab") as log:
            for raw in self.stream:
                log.write(raw)
                log.flush()
                if not self.got_first.is_set():
                    self.first = raw.decode(errors="replace").strip()
                    self.got_first.set()
        self.got_first.set()


def _wait_idle(pids: list[int], min_procs: int, timeout: float = 30.0) -> float | None:
    """Wait until the tiers have started: all processes there, and the tree's CPU use low
    (below 15% of a core) or steady (an idle Harvester polls: its use does not drop to 0).
    Returns that idle CPU use in CPU seconds per second."""
    deadline = time.monotonic() + timeout
    prev: float | None = None
    while time.monotonic() < deadline:
        n, before = tree_cpu(pids)
        if n < min_procs:
            time.sleep(0.5)
            continue
        time.sleep(1.0)
        _, after = tree_cpu(pids)
        rate = after - before
        if rate < 0.15 or (prev is not None and abs(rate - prev) < 0.03):
            return rate
        prev = rate
    print("bench: harvester did not settle; starting anyway", flush=True)
    return prev


def run_harvester(site: Site, out: Path, label: str, opts: HarvesterOptions) -> dict[str, object]:
    """Start ``harvester up``, crawl the site, check the result, stop; the measurements."""
    data_dir = out / f"harvester-{label}"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    config = write_config(site, out / f"harvester-{label}.json", opts.concurrency,
                          opts.worker_concurrency,
                          opts.browser_path if opts.browser_workers else None)
    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}"
    env = dict(os.environ, PYTHONUNBUFFERED="1", HARVESTER_OUTPUT_ROOT=str(data_dir / "output"))
    if opts.pg_stats:
        from bench.manyhosts import PG_STATS_SETTINGS
        env["HARVESTER_PG_SETTINGS"] = PG_STATS_SETTINGS
    elif opts.profile:
        env["HARVESTER_PG_SETTINGS"] = ("shared_preload_libraries=pg_stat_statements "
                                        "pg_stat_statements.track=all")
    up_args = [sys.executable, "-m", "harvester_ops.cli", "up", "--data-dir", str(data_dir),
               "-addr", f"127.0.0.1:{api_port}", "--workers", str(opts.workers),
               "-config", str(config)]
    if opts.nats_cluster > 1:
        up_args += ["--nats-cluster", str(opts.nats_cluster)]
    if opts.browser_workers:
        up_args += ["--browser-workers", str(opts.browser_workers),
                    "--browser-pages", str(opts.browser_pages)]
    errlog = open(data_dir / "up.stderr", "ab")  # noqa: SIM115 - the child's stderr
    up = subprocess.Popen(up_args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=errlog,
                          start_new_session=True)
    drain = _Drain(up.stdout, data_dir / "up.stdout")
    drain.start()
    extra: list[subprocess.Popen[bytes]] = []
    result: dict[str, object] = {"system": "harvester-browser" if opts.browser_workers
                                 else "harvester", "label": label, "workers": opts.workers,
                                 "foremen": opts.foremen, "valid": False,
                                 "nodes": opts.nodes, "nats_cluster": opts.nats_cluster,
                                 "worker_concurrency": opts.worker_concurrency,
                                 "variant": opts.variant}
    if opts.browser_workers:
        result.update({"browser_workers": opts.browser_workers,
                       "browser_pages": opts.browser_pages})
    try:
        if not drain.got_first.wait(180) or "Harvester is up" not in drain.first:
            raise RuntimeError(f"harvester up did not start: {drain.first!r}; see {data_dir}")
        m = _UP_LINE.search(drain.first)
        if m is None:
            raise RuntimeError(f"cannot parse {drain.first!r}")
        for i in range(opts.foremen - 1):
            fenv = dict(os.environ, HARVESTER_DATABASE_URL=m["dsn"], HARVESTER_NATS_URL=m["nats"])
            flog = open(data_dir / f"foreman-extra-{i + 1}.log", "ab")  # noqa: SIM115
            extra.append(subprocess.Popen([sys.executable, "-m", "foreman", "-config", str(config)],
                                          cwd=REPO, env=fenv, stdout=flog, stderr=flog,
                                          start_new_session=True))
        extra += _other_nodes(opts, m["dsn"], m["nats"], config, data_dir)
        _await_healthz(api)
        # up + web_server + foreman + workers + postgres (>= 5 processes) + nats-server
        idle = _wait_idle([up.pid] + [p.pid for p in extra],
                          min_procs=4 + opts.workers + opts.browser_workers + 5)
        result["idle_cpu_per_s"] = None if idle is None else round(idle, 3)

        before = footprint.snapshot(m["dsn"], m["nats"])  # before the clock starts
        if opts.pg_stats:
            from bench.manyhosts import pg_stats_reset
            pg_stats_reset(m["dsn"])
        monitor = TreeMonitor([up.pid] + [p.pid for p in extra])
        monitor.start()
        t0 = time.monotonic()
        if opts.variant == "plain":
            job = _post(f"{api}/?depth={site.harvester_depth}", site.start_url.encode())
        else:
            spec = {"urls": [site.start_url], "depth": site.harvester_depth,
                    **VARIANTS[opts.variant]}
            job = _post(f"{api}/", json.dumps(spec).encode(), content_type="application/json")
        job_id = job["jobId"]  # type: ignore[index]
        profiler = _start_profile(up.pid, opts) if opts.profile else None
        pg = None
        if opts.profile:
            from bench.pgsample import PgSampler
            pg = PgSampler(m["dsn"], interval=0.02)
            pg.start()
        status: dict = {}
        timed_out = False
        samples: list[eta.Sample] = []  # (t, processed, the ETA shown): bench/eta.py
        while True:
            status = _get_json(f"{api}/status/{job_id}")  # type: ignore[assignment]
            samples.append((time.monotonic() - t0, (status.get("pages") or {}).get("processed", 0),
                            (status.get("eta") or {}).get("seconds")))
            if status.get("pending") == 0:
                break
            if time.monotonic() - t0 > opts.timeout:
                timed_out = True
                break
            time.sleep(0.25)
        wall = time.monotonic() - t0
        monitor.stop()
        if pg is not None:
            pg.stop()
            assert opts.profile_out is not None
            opts.profile_out.with_name("pg_activity.md").write_text(pg.render() + "\n")
        for spy in profiler or ():
            if spy.poll() is None:  # the crawl ended first: py-spy writes its output on SIGINT
                spy.send_signal(signal.SIGINT)
            try:
                spy.wait(opts.profile + 30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(5)
        saved = [f for f in (data_dir / "output").rglob("*") if f.is_file()]
        if saved:
            result["saved_mb"] = round(sum(f.stat().st_size for f in saved) / 2**20, 1)
        result.update({"wall": wall, "cpu": monitor.cpu(), "cpu_sampled": monitor.cpu_sampled(),
                       "cpu_by_kind": monitor.cpu_by_kind(), **monitor.memory(),
                       "status": status.get("pages"), "elapsed_reported": status.get("elapsed"),
                       "timed_out": timed_out, "depth": site.harvester_depth,
                       "eta_error": eta.errors(samples, wall)})
        if opts.pg_stats:  # the crawl's, before the result and the status are read
            from bench.manyhosts import pg_stats_top
            result["pg_stats"] = pg_stats_top(m["dsn"])
        if timed_out:
            result["error"] = f"not complete after {opts.timeout:.0f} s"
            result["found"] = (status.get("pages") or {}).get("processed", 0)
            return result
        # GET /result of the whole job, streamed: first byte, total, the web server's memory.
        download = _timed_download(f"{api}/result/{job_id}", _web_server_pid(up.pid))
        pages = json.loads(download.pop("body"))  # type: ignore[arg-type]
        result["result_fetch_s"] = download["total_s"]
        result["result_http"] = download
        failed = _get_json(f"{api}/result/{job_id}?status=failed", 120)
        # GET /status: the big job against a job of a few pages.
        small = _small_job(api, site)
        result["status_ms"] = {"job": _status_latency(api, job_id),
                               "small_job": _status_latency(api, small),
                               "small_job_pages": (_get_json(f"{api}/status/{small}")  # type: ignore[union-attr]
                                                   .get("pages") or {}).get("processed")}
        keys = set(pages)  # type: ignore[arg-type]
        missing = [u for u in site.expected if u not in keys]
        result["found"] = len(site.expected) - len(missing)
        result["pages"] = len(keys)  # an external site has no expected pages: the count
        result["links"] = sum(len(v) for v in pages.values())  # type: ignore[union-attr]
        result["failed"] = len(failed)  # type: ignore[arg-type]
        result["missing_sample"] = missing[:5]
        unexpected_failures = [u for u in failed if u not in set(site.missing)]  # type: ignore[union-attr]
        result["unexpected_failures"] = unexpected_failures[:5]
        result["valid"] = not missing
        # What the crawl wrote and left, per page (after the measured run: not in its time).
        result["footprint"] = footprint.footprint(before, footprint.snapshot(m["dsn"], m["nats"]),
                                                  len(keys), int(result["links"]))
        if missing:
            result["error"] = f"{len(missing)} expected pages missing from the result"
        return result
    finally:
        _stop(up, extra)
        result.update(_log_counts(data_dir))
        if not opts.keep_data:
            for sub in ("postgres", "nats", "output"):
                shutil.rmtree(data_dir / sub, ignore_errors=True)


def _log_counts(data_dir: Path) -> dict[str, int]:
    """PostgreSQL deadlocks and the tiers' warnings during the run (from the logs)."""
    out = {}
    with contextlib.suppress(OSError):
        out["pg_deadlocks"] = (data_dir / "postgres.log").read_text(errors="replace").count(
            "deadlock detected")
    with contextlib.suppress(OSError):
        text = (data_dir / "up.stderr").read_text(errors="replace")
        out["tier_warnings"] = sum(1 for line in text.splitlines() if " WARNING " in line)
    return out


def _start_profile(up_pid: int, opts: HarvesterOptions) -> list[subprocess.Popen[bytes]]:
    """py-spy on the first worker, for ``opts.profile`` seconds (if py-spy is installed)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("bench: py-spy not installed; no profile", flush=True)
        return []
    workers = [p for p in psutil.Process(up_pid).children() if "-m worker" in " ".join(p.cmdline())]
    if opts.browser_workers:  # the browser worker (-kind browser=P), not the idle HTTP one
        workers = [p for p in workers if "browser=" in " ".join(p.cmdline())] or workers
    if not workers:
        return []
    assert opts.profile_out is not None
    opts.profile_out.parent.mkdir(parents=True, exist_ok=True)
    base = [spy, "record", "-d", str(int(opts.profile)), "-r", "250", "--nonblocking",
            "--pid", str(workers[0].pid)]
    log = open(opts.profile_out.with_suffix(".log"), "ab")  # noqa: SIM115 - py-spy's output
    # Two recorders (non-blocking: they read the worker's memory without stopping it): a flame
    # graph to look at, collapsed stacks to rank functions.
    svg = subprocess.Popen(base + ["-o", str(opts.profile_out.with_suffix(".svg"))],
                           stdout=log, stderr=log)
    raw = subprocess.Popen(base + ["-f", "raw", "-o", str(opts.profile_out.with_suffix(".txt"))],
                           stdout=log, stderr=log)
    return [svg, raw]


def _other_nodes(opts: HarvesterOptions, dsn: str, nats_url: str, config: Path,
                 data_dir: Path) -> list[subprocess.Popen[bytes]]:
    """Nodes 2 .. ``opts.nodes`` (issue 18): each a foreman and ``opts.workers`` workers of its
    own, sharing up's PostgreSQL and NATS (its NATS node first in its list; the job is posted
    to node 1's web server, so theirs are left out). On one machine they share its cores: this
    measures what distribution costs, not a speed-up."""
    urls = nats_url.split(",")
    procs: list[subprocess.Popen[bytes]] = []
    for node in range(2, opts.nodes + 1):
        k = (node - 1) % len(urls)
        env = dict(os.environ, HARVESTER_DATABASE_URL=dsn,
                   HARVESTER_NATS_URL=",".join(urls[k:] + urls[:k]),
                   HARVESTER_ALLOW_NETWORKS="127.0.0.0/8")  # the bench site is on loopback
        if len(urls) > 1:
            env["HARVESTER_NATS_REPLICAS"] = str(min(len(urls), 3))
        for tier in ("foreman", *(["worker"] * opts.workers)):
            log = open(data_dir / f"node{node}-{tier}-{len(procs)}.log", "ab")  # noqa: SIM115
            procs.append(subprocess.Popen([sys.executable, "-m", tier, "-config", str(config)],
                                          cwd=REPO, env=env, stdout=log, stderr=log,
                                          start_new_session=True))
    return procs


def _stop(up: subprocess.Popen[bytes], extra: list[subprocess.Popen[bytes]]) -> None:
    """SIGINT to up's process group (up stops its tiers, then NATS and PostgreSQL); if it does
    not stop in time, SIGKILL to the group and to each process of its tree seen before."""
    tree: list[psutil.Process] = []
    with contextlib.suppress(psutil.NoSuchProcess):
        tree = psutil.Process(up.pid).children(recursive=True)
    for p in extra:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGINT)
    if up.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGINT)
    try:
        up.wait(90)
    except subprocess.TimeoutExpired:
        print("bench: harvester up did not stop in 90 s; killing its process group", flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGKILL)
        up.wait(10)
        for child in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
    for p in extra:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
