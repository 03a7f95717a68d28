"""The static server for the bench site: nginx when installed, else a multi-process aiohttp one.

Both listen on ``127.0.0.1:<port>`` (site ``a``) and ``127.0.0.2:<port>`` (site ``b``), map
``/dir/`` to ``dir/index.html``, answer 404 for anything else missing, and serve extensionless
files as text/html.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

NGINX = "/usr/sbin/nginx"

_NGINX_CONF = """\
{user}worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 100000;
    # Each cached entry holds a descriptor: keep well under worker_rlimit_nofile, or a site
    # larger than the cache limit gets "Too many open files" (served as 404) once it fills.
    open_file_cache max={file_cache} inactive=120s;
    # Extensionless files are pages (default_type); other common files keep their own type,
    # so an external site's (--site) PDFs or SVGs are not taken for HTML.
    types {{ text/html html htm; text/css css; application/javascript js mjs; image/png png;
             image/jpeg jpg jpeg; image/gif gif; image/svg+xml svg; image/webp webp;
             image/x-icon ico; application/json json; application/xml xml; text/plain txt;
             application/pdf pdf; font/woff woff; font/woff2 woff2; application/zip zip; }}
    default_type text/html;
    client_body_temp_path {run}/tmp-body;
    proxy_temp_path {run}/tmp-proxy;
    fastcgi_temp_path {run}/tmp-fastcgi;
    uwsgi_temp_path {run}/tmp-uwsgi;
    scgi_temp_path {run}/tmp-scgi;
    server {{
        listen {host_a}:{port};
        root {site}/a;
        location / {{ try_files $uri ${{uri}}index.html =404; }}
    }}
    server {{
        listen {host_b}:{port};
        root {site}/b;
        location / {{ try_files $uri ${{uri}}index.html =404; }}
    }}
}}
"""


def _nofile() -> int:
    """The descriptors nginx's worker may open: this process's hard limit."""
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 65536 if hard == resource.RLIM_INFINITY else int(hard)


def port_free(port: int, hosts: tuple[str, ...] = ("127.0.0.1", "127.0.0.2")) -> bool:
    for host in hosts:
        with socket.socket() as s:
            # as nginx does: connections in TIME_WAIT do not make the port unusable
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port_pair(start: int = 18480,
                   hosts: tuple[str, ...] = ("127.0.0.1", "127.0.0.2")) -> int:
    """A port free on ``hosts`` (both loopback addresses; ``("",)``: every address), from
    ``start`` upwards."""
    for port in range(start, start + 500):
        if port_free(port, hosts):
            return port
    raise RuntimeError("no free port for the bench site")


def ensure_nginx() -> bool:
    """True if nginx is there (trying one apt-get install if it is not)."""
    if Path(NGINX).exists():
        return True
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: nginx not found; trying apt-get install nginx-light once", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light"], env=env, check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    return Path(NGINX).exists()


class StaticServer:
    def __init__(self, site_root: Path, run_dir: Path, port: int, kind: str = "auto",
                 workers: int | None = None, host_a: str = "127.0.0.1", host_b: str = "127.0.0.2") -> None:
        self.site_root = site_root.resolve()
        self.run_dir = run_dir.resolve()
        self.port = port
        self.host_a, self.host_b = host_a, host_b
        if kind == "auto":
            kind = "nginx" if ensure_nginx() else "aiohttp"
        self.kind = kind
        if workers is None:
            workers = 1 if kind == "nginx" else 2
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def description(self) -> str:
        if self.kind == "nginx":
            out = subprocess.run([NGINX, "-v"], capture_output=True, text=True, check=False)
            version = (out.stderr or out.stdout).strip().removeprefix("nginx version: ")
            return f"{version}, worker_processes {self.workers}, access_log off"
        return f"aiohttp static server, {self.workers} processes (SO_REUSEPORT)"

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.run_dir / f"{self.kind}.out", "ab")  # noqa: SIM115 - the server's stdout
        if self.kind == "nginx":
            conf = self.run_dir / "nginx.conf"
            conf.write_text(_NGINX_CONF.format(
                user="user root;\n" if os.geteuid() == 0 else "", workers=self.workers,
                run=self.run_dir, site=self.site_root, port=self.port,
                nofile=_nofile(), file_cache=max(100, min(10_000, _nofile() // 2)),
                host_a=self.host_a, host_b=self.host_b))
            args = [NGINX, "-c", str(conf), "-p", str(self.run_dir), "-g", "daemon off;"]
        else:
            args = [sys.executable, "-m", "bench.static_server", "--root", str(self.site_root),
                    "--port", str(self.port), "--procs", str(self.workers),
                    "--host-a", self.host_a, "--host-b", self.host_b]
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.host_a}:{self.port}/"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}; "
                                   f"see {self.run_dir}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{self.kind} did not answer on {url}")

    def check(self, sample: list[str], missing: list[str]) -> None:
        """Sanity: sample pages answer 200 text/html, missing ones 404."""
        for url in sample:
            with urllib.request.urlopen(url, timeout=5) as r:
                ctype = r.headers.get("Content-Type", "")
                if r.status != 200 or not ctype.startswith("text/html"):
                    raise RuntimeError(f"{url}: {r.status} {ctype}")
        for url in missing:
            try:
                urllib.request.urlopen(url, timeout=5)
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    continue
            raise RuntimeError(f"{url} should answer 404")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def error_count(self) -> int:
        """Lines at level error or worse in nginx's error log so far (0 for the fallback)."""
        try:
            text = (self.run_dir / "error.log").read_text(errors="replace")
        except OSError:
            return 0
        return sum(1 for line in text.splitlines()
                   if any(f"[{lvl}]" in line for lvl in ("error", "crit", "alert", "emerg")))

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM if self.kind == "aiohttp" else signal.SIGQUIT)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None
