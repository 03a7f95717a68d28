"""``harvester up``: the whole service on one machine, on the embedded PostgreSQL and NATS.

Starts PostgreSQL and nats-server from their pip-installed binaries (data under ``--data-dir``,
kept across runs), migrates, then runs the web server, the foreman, N http workers and M
browser workers (``-kind browser=P``: one Chromium with P tabs each), each its own process. It
says it is up once the web server answers ``/healthz`` with every tier still running; a tier
that exits before that (its port taken, say) stops everything, exit status 1. After that it
restarts any tier or worker that dies (a crash, kill -9, a worker exiting degraded), with a
backoff while it dies right after starting; its in-flight work is redelivered. SIGINT/SIGTERM stops the tiers (gracefully: SIGTERM,
then a wait), then NATS and PostgreSQL; nothing is left behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from harvester_ops import migrate
from harvester_ops.embedded import (
    EmbeddedNats,
    EmbeddedNatsCluster,
    EmbeddedPostgres,
    die_with_parent,
)
from shared.config import split_addr

log = logging.getLogger("harvester.up")

DATABASE = "harvester"
START_TIMEOUT = 120.0  # for the web server to answer /healthz


@dataclass
class Child:
    name: str
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started: float = field(default=0.0)

    def start(self, env: dict[str, str]) -> None:
        # SIGTERM (a graceful stop) if the supervisor is killed: no tier outlives it.
        # The supervisor is single-threaded, so a preexec_fn is safe here.
        on_parent_death = die_with_parent(signal.SIGTERM)
        self.proc = subprocess.Popen(self.args, env=env, preexec_fn=on_parent_death)  # noqa: PLW1509
        self.started = time.monotonic()


def _ensure_database(pg: EmbeddedPostgres) -> None:
    import asyncio

    async def create() -> None:
        conn = await asyncpg.connect(pg.dsn)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
                await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await conn.close()

    asyncio.run(create())


class Stop(Exception):
    pass


class StartFailed(Exception):
    """A tier exited, or the web server never became ready, during start-up."""


def _raise_stop(signum: int, frame: object) -> None:
    raise Stop()


LOOPBACK = "127.0.0.0/8"


def loopback_by_default(config: str | None, env: Mapping[str, str]) -> bool:
    """Whether ``harvester up`` allows loopback itself: neither the environment nor the config
    file names an ``allowNetworks`` (a local crawl's sites are mostly on 127.0.0.1)."""
    if env.get("HARVESTER_ALLOW_NETWORKS"):
        return False
    if config:
        try:
            data = json.loads(Path(config).read_text())
        except (OSError, ValueError):
            return True  # the tiers report a bad file
        if isinstance(data, dict) and "allowNetworks" in data:
            return False
    return True


def up(config: str | None, addr: str, data_dir: Path, workers: int,
       log_level: str | None = None, log_format: str | None = None,
       metrics_port_base: int = 0, *, browser_workers: int = 0, browser_pages: int = 4,
       fetcher_kinds: Sequence[str] = (), nats_cluster: int = 1) -> int:
    """Run everything until SIGINT/SIGTERM. ``fetcher_kinds`` (the config's, plus browser
    with browser workers) reaches every tier as ``HARVESTER_FETCHER_KINDS``. ``nats_cluster``
    > 1: that many clustered nats-servers, the streams replicated on up to 3 of them
    (``HARVESTER_NATS_REPLICAS``, unless the environment sets it)."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    # Started from this (the main) thread: if the supervisor is killed, even by SIGKILL, the
    # servers and the tiers are told and stop, instead of living on without an owner.
    pg = EmbeddedPostgres(data_dir / "postgres", die_with_parent=True, sized=True)
    nats: EmbeddedNats | EmbeddedNatsCluster = (
        EmbeddedNatsCluster(data_dir / "nats-cluster", nats_cluster, die_with_parent=True)
        if nats_cluster > 1 else EmbeddedNats(data_dir / "nats", die_with_parent=True))
    children: list[Child] = []
    status = 0
    try:
        log.info("starting PostgreSQL (data in %s)", pg.data_dir)
        pg.start()
        _ensure_database(pg)
        dsn = pg.dsn_for(DATABASE)
        migrate.upgrade(dsn)
        log.info("starting %d nats-server(s) with JetStream (data in %s)", nats_cluster,
                 data_dir / ("nats-cluster" if nats_cluster > 1 else "nats"))
        nats.start()
        env = dict(os.environ, HARVESTER_DATABASE_URL=pg.local_dsn_for(DATABASE),
                   HARVESTER_NATS_URL=nats.url)
        if nats_cluster > 1:
            env.setdefault("HARVESTER_NATS_REPLICAS", str(min(nats_cluster, 3)))
        if fetcher_kinds:
            env["HARVESTER_FETCHER_KINDS"] = ",".join(fetcher_kinds)
        env["HARVESTER_HTTP_ADDR"] = addr  # the API's port: refused to fetchers (SSRF guard)
        if loopback_by_default(config, env):
            env["HARVESTER_ALLOW_NETWORKS"] = LOOPBACK
            print(f"harvester up: fetching from loopback ({LOOPBACK}) is allowed (a local "
                  "crawl); HARVESTER_ALLOW_NETWORKS=none or \"allowNetworks\": [] turns it off",
                  file=sys.stderr, flush=True)
        cfg = ["-config", config] if config else []
        cfg += ["-log-level", log_level] if log_level else []
        cfg += ["-log-format", log_format] if log_format else []

        def ops(i: int) -> list[str]:  # foreman base, workers base+1 ...; 0: off
            return ["-metrics-addr", f"127.0.0.1:{metrics_port_base + i}"] \
                if metrics_port_base else []
        py = sys.executable
        children = [Child("web_server", [py, "-m", "web_server", *cfg, "-addr", addr]),
                    Child("foreman", [py, "-m", "foreman", *cfg, *ops(0)])]
        children += [Child(f"worker-{i + 1}", [py, "-m", "worker", *cfg, *ops(i + 1)])
                     for i in range(workers)]
        children += [Child(f"browser-worker-{i + 1}",
                           [py, "-m", "worker", *cfg, "-kind", f"browser={browser_pages}",
                            *ops(workers + i + 1)])
                     for i in range(browser_workers)]
        for c in children:
            c.start(env)
        base = _local_base(addr)
        _await_start(children, base + "/healthz")
        print(f"Harvester is up: {base}/  (PostgreSQL {pg.dsn_for(DATABASE)}, "
              f"NATS {nats.url}, {workers} workers"
              + (f", {browser_workers} browser workers" if browser_workers else "")
              + "). Ctrl-C stops it.", flush=True)
        _supervise(children, env)
    except Stop:
        pass
    except StartFailed as e:
        print(f"harvester up: {e}; stopping", file=sys.stderr, flush=True)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop_children(children)
        nats.stop()
        pg.stop()
        print("Harvester stopped.", flush=True)
    return status


def _local_base(addr: str) -> str:
    """The URL to reach a server listening on ``addr`` from this machine."""
    host, port = split_addr(addr)
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _await_start(children: list[Child], healthz: str, timeout: float = START_TIMEOUT) -> None:
    """Until ``healthz`` answers 200 with every tier still running; StartFailed if a tier exits
    first or the web server is not ready within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        for c in children:
            if c.proc is not None and c.proc.poll() is not None:
                raise StartFailed(f"{c.name} exited with status {c.proc.returncode} during start-up")
        if _answers(healthz):
            return
        if time.monotonic() > deadline:
            raise StartFailed(f"the web server did not answer {healthz} within {timeout:g}s")
        time.sleep(0.2)


_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


def _answers(url: str) -> bool:
    try:
        with _LOCAL.open(url, timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _supervise(children: list[Child], env: dict[str, str]) -> None:
    while True:
        now = time.monotonic()
        for c in children:
            if c.proc is not None and c.proc.poll() is not None:
                code = c.proc.returncode
                c.proc = None
                # Back off when a tier dies right after starting (say, a bad config).
                quick = now - c.started < 10
                c.restarts = c.restarts + 1 if quick else 0
                c.next_start = now + min(30.0, 0.5 * 2 ** c.restarts)
                log.warning("%s exited with %s; restarting in %.1fs", c.name, code,
                            c.next_start - now)
            if c.proc is None and now >= c.next_start:
                c.start(env)
        time.sleep(0.2)


def _stop_children(children: list[Child], timeout: float = 30.0) -> None:
    live = [c.proc for c in children if c.proc is not None and c.proc.poll() is None]
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in live:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
