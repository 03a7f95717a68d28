"""Fallback static server for the bench site when nginx is missing: N aiohttp processes sharing
the listening sockets (SO_REUSEPORT). ``python -m bench.static_server --root DIR --port P``."""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
from pathlib import Path

from aiohttp import web

# As nginx's types in bench/server.py: anything else (extensionless files too) is a page.
_TYPES = {".html": "text/html", ".htm": "text/html", ".css": "text/css",
          ".js": "application/javascript", ".mjs": "application/javascript",
          ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
          ".svg": "image/svg+xml", ".webp": "image/webp", ".ico": "image/x-icon",
          ".json": "application/json", ".xml": "application/xml", ".txt": "text/plain",
          ".pdf": "application/pdf", ".woff": "font/woff", ".woff2": "font/woff2",
          ".zip": "application/zip"}


def _app(root: Path) -> web.Application:
    root = root.resolve()
    cache: dict[str, tuple[bytes, str] | None] = {}

    async def handle(request: web.Request) -> web.Response:
        path = request.path
        hit = cache.get(path, False)
        if hit is False:
            hit = None
            rel = path.lstrip("/")
            for candidate in ((rel + "index.html") if path.endswith("/") else rel,):
                f = (root / candidate).resolve()
                if f.is_relative_to(root) and f.is_file():
                    hit = (f.read_bytes(), _TYPES.get(f.suffix, "text/html"))
            cache[path] = hit
        if hit is None:
            return web.Response(status=404, text="not found")
        return web.Response(body=hit[0], content_type=hit[1])

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    return app


def _serve(root: Path, host_a: str, host_b: str, port: int,
           hosts: list[str] | None = None) -> None:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        runners = []
        # many hosts (bench/manyhosts.py): one socket per address, root/<address>
        pairs = [(h, h) for h in hosts] if hosts else [(host_a, "a"), (host_b, "b")]
        for host, sub in pairs:
            runner = web.AppRunner(_app(root / sub), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, host, port, reuse_port=True).start()
            runners.append(runner)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        for r in runners:
            await r.cleanup()

    asyncio.run(main())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--host-a", default="127.0.0.1")
    p.add_argument("--host-b", default="127.0.0.2")
    p.add_argument("--hosts-file", type=Path, default=None,
                   help="addresses, one a line: serve ROOT/<address> on each")
    a = p.parse_args()
    hosts = a.hosts_file.read_text().split() if a.hosts_file else None
    procs = [multiprocessing.Process(target=_serve,
                                     args=(a.root, a.host_a, a.host_b, a.port, hosts))
             for _ in range(max(1, a.procs))]
    for pr in procs:
        pr.start()

    def forward(signum: int, frame: object) -> None:
        for pr in procs:
            if pr.pid:
                os.kill(pr.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for pr in procs:
        pr.join()


if __name__ == "__main__":
    main()
