"""CPU and memory of process trees, measured with psutil.

CPU: for every process of the trees, user+system of itself plus of its reaped children
(``cutime``/``cstime``), summed at the end minus at the start. A process that ends during the
window is counted through its parent's children times (it was reaped by a parent in the tree),
and one started and ended within it likewise, so nothing between two samples is lost. The
sampler also keeps each process's last-seen own CPU as a cross-check (``cpu_sampled``).

Memory: every 0.5 s, the RSS of each process, by kind; for PostgreSQL also the sum of PSS
(proportional set size), since its processes share ``shared_buffers`` and a sum of RSS counts
that shared memory once per backend.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil

KINDS = ("up", "web_server", "foreman", "worker", "postgres", "nats-server", "scrapy",
         "ceiling", "inmemory", "nginx", "chromium", "playwright", "crawlee", "other")


def kind_of(p: psutil.Process) -> str:
    try:
        name = p.name()
        cmd = p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "other"
    joined = " ".join(cmd)
    if name.startswith("postgres") or (cmd and cmd[0].endswith("/postgres")):
        return "postgres"
    if "nats-server" in name or (cmd and cmd[0].endswith("nats-server")):
        return "nats-server"
    if name.startswith("nginx"):
        return "nginx"
    if name.startswith(("chromium", "chrome")) or (cmd and "chromium" in cmd[0]):
        return "chromium"  # the browser and its renderer, GPU and utility processes
    if "run-driver" in joined:
        return "playwright"  # Playwright's driver (node), between Python and Chromium
    if "bench.crawlee_crawl" in joined:
        return "crawlee"
    for mod in ("web_server", "foreman", "worker"):
        if f"-m {mod}" in joined or f"harvester {mod.replace('_', '-')}" in joined:
            return mod
    if "harvester_ops.cli up" in joined or "harvester up" in joined:
        return "up"
    if "scrapy" in joined:
        return "scrapy"
    if "bench.ceiling" in joined:
        return "ceiling"
    if "bench.inmemory" in joined:
        return "inmemory"
    return "other"


Key = tuple[int, float]  # pid, create time


@dataclass
class Snapshot:
    own: dict[Key, float] = field(default_factory=dict)       # user+system of the process
    reaped: dict[Key, float] = field(default_factory=dict)    # of its reaped children
    kinds: dict[Key, str] = field(default_factory=dict)

    def total(self) -> float:
        return sum(self.own.values()) + sum(self.reaped.values())


class TreeMonitor:
    """Samples the process trees under ``roots`` (pids) in a thread."""

    def __init__(self, roots: list[int], interval: float = 0.5) -> None:
        self.roots = list(roots)
        self.interval = interval
        self.peak_rss: dict[str, int] = {}        # kind -> largest single process RSS
        self.peak_kind_total: dict[str, int] = {}  # kind -> largest sum of RSS at one sample
        self.peak_pg_pss = 0
        self.peak_total = 0
        self.counts: dict[str, int] = {}           # kind -> most processes at one sample
        self.last_own: dict[Key, tuple[str, float]] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._procs: dict[Key, psutil.Process] = {}
        self.start_snap: Snapshot | None = None
        self.end_snap: Snapshot | None = None

    def _tree(self) -> list[psutil.Process]:
        out: list[psutil.Process] = []
        for pid in self.roots:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
                root = psutil.Process(pid)
                out.append(root)
                out += root.children(recursive=True)
        procs = []
        for p in out:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
                key = (p.pid, p.create_time())
                procs.append(self._procs.setdefault(key, p))
        return procs

    def snapshot(self) -> Snapshot:
        snap = Snapshot()
        for p in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
                key = (p.pid, p.create_time())
                t = p.cpu_times()
                snap.own[key] = t.user + t.system
                snap.reaped[key] = t.children_user + t.children_system
                snap.kinds[key] = kind_of(p)
        return snap

    def start(self) -> None:
        self.start_snap = self.snapshot()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.end_snap = self.snapshot()
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        self._sample()

    def halt(self) -> None:
        """Stop sampling without an end snapshot (the trees are gone)."""
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        kind_total: dict[str, int] = {}
        counts: dict[str, int] = {}
        pss = 0
        total = 0
        for p in self._tree():
            try:
                key = (p.pid, p.create_time())
                kind = kind_of(p)
                if kind == "postgres":
                    mi = p.memory_full_info()
                    rss, pss = mi.rss, pss + getattr(mi, "pss", mi.rss)
                else:
                    rss = p.memory_info().rss
                t = p.cpu_times()
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            self.last_own[key] = (kind, t.user + t.system)
            self.peak_rss[kind] = max(self.peak_rss.get(kind, 0), rss)
            kind_total[kind] = kind_total.get(kind, 0) + rss
            counts[kind] = counts.get(kind, 0) + 1
            total += rss
        for k, v in kind_total.items():
            self.peak_kind_total[k] = max(self.peak_kind_total.get(k, 0), v)
        for k, v in counts.items():
            self.counts[k] = max(self.counts.get(k, 0), v)
        self.peak_pg_pss = max(self.peak_pg_pss, pss)
        self.peak_total = max(self.peak_total, total)
        self.samples += 1

    # Results -------------------------------------------------------------------------------

    def cpu(self) -> float:
        """CPU seconds used by the trees between start() and stop()."""
        assert self.start_snap and self.end_snap
        return self.end_snap.total() - self.start_snap.total()

    def cpu_by_kind(self) -> dict[str, float]:
        """Own CPU by kind (reaped children counted with their parent's kind)."""
        assert self.start_snap and self.end_snap
        out: dict[str, float] = {}
        s, e = self.start_snap, self.end_snap
        for key in set(s.own) | set(e.own):
            kind = e.kinds.get(key) or s.kinds.get(key) or "other"
            if key in e.own:
                used = e.own[key] + e.reaped[key] - s.own.get(key, 0.0) - s.reaped.get(key, 0.0)
            else:  # ended during the window: its parent's reaped time has it
                used = -s.own[key] - s.reaped[key]
            out[kind] = out.get(kind, 0.0) + used
        return {k: round(v, 2) + 0.0 for k, v in out.items()}  # + 0.0: no "-0.0"

    def cpu_sampled(self) -> float:
        """Cross-check: sum over processes seen of last-seen own CPU minus own CPU at start."""
        assert self.start_snap
        return sum(v - self.start_snap.own.get(k, 0.0) for k, (_, v) in self.last_own.items())

    def memory(self) -> dict[str, object]:
        mb = 1 / 2**20
        return {"peak_rss_mb": {k: round(v * mb, 1) for k, v in self.peak_rss.items()},
                "peak_kind_total_mb": {k: round(v * mb, 1) for k, v in self.peak_kind_total.items()},
                "postgres_pss_total_mb": round(self.peak_pg_pss * mb, 1),
                "peak_total_rss_mb": round(self.peak_total * mb, 1),
                "processes": self.counts, "samples": self.samples}


def processes_running(word: str) -> list[str]:
    """Command lines of other processes that mention ``word`` (e.g. a pytest run)."""
    out = []
    me = psutil.Process().pid
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info.get("cmdline") or [])
        if p.info["pid"] != me and word in cmd:
            out.append(f"{p.info['pid']} {cmd[:120]}")
    return out


def tree_cpu(pids: Sequence[int | None]) -> tuple[int, float]:
    """Processes in the trees under ``pids`` and their CPU seconds so far, reaped children's
    included (so a process that ended is still counted through its parent)."""
    procs: list[psutil.Process] = []
    for pid in pids:
        if pid is None:
            continue
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return len(procs), total
