"""A local site whose links exist only once a browser has run its scripts (``JsSite``), and
helpers for the browser tests: ``CHROMIUM``, ``require_chromium`` (fails, never skips, with
the install line), ``chromium_pids`` (the browsers this test process started).

Pages ``/`` (page 0) and ``/p/<i>``: each page's links are in an inline JSON array from which
a script builds the ``<a>`` elements, so the HTML as served has none. Page i links to pages
2i+1 and 2i+2 (when they exist) and back to the root. Other paths: ``/hang`` (answers only
when the site stops), ``/late`` (its link appears 1 s after load), ``/img`` (one
``<img>``), ``/set-cookie`` (sets a cookie and loads ``/cookie.js``, which sees it),
``/jump?to=URL`` (a script navigates there), ``/moved?to=URL`` (a 302 there), ``/popup`` (opens a window), ``/hash`` (moves to ``#top``), ``/echo-cookie`` (writes the Cookie header it got), ``/probe`` (writes what navigator says
into ``<pre id="probe">`` as JSON), ``/storage`` (writes its localStorage's ``k`` into
``<pre id="storage">`` as JSON), ``/robots.txt`` (disallows ``/private``)."""

from __future__ import annotations

import asyncio
import base64
import html
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.servers import serve

CHROMIUM = "/usr/bin/chromium"
INSTALL = ("chromium missing: run 'make browser' (as root it installs Debian's chromium: "
           "sudo apt-get install -y --no-install-recommends chromium); the browser tests "
           f"drive {CHROMIUM}")
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg==")
LINKS_SCRIPT = """<div id="nav"></div><script>
for (const h of JSON.parse(document.getElementById('links').textContent)) {
  const a = document.createElement('a'); a.href = h; a.textContent = h;
  document.getElementById('nav').appendChild(a);
}
</script>"""
PROBE_SCRIPT = """<pre id="probe"></pre><script>
document.getElementById('probe').textContent = JSON.stringify({
  webdriver: navigator.webdriver === undefined ? null : navigator.webdriver,
  chrome: !!window.chrome, languages: Array.from(navigator.languages || []),
  plugins: navigator.plugins ? navigator.plugins.length : 0, ua: navigator.userAgent});
</script>"""


STORAGE_SCRIPT = """<pre id="storage"></pre><script>
document.getElementById('storage').textContent = JSON.stringify(localStorage.getItem('k'));
</script>"""


def require_chromium() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(INSTALL, pytrace=False)


@dataclass
class JsSite:
    pages: int = 15
    delay: float = 0.0                       # seconds each numbered page takes to answer
    root_links: tuple[str, ...] = ()         # more paths the root links to (say "/hang")
    base: str = ""
    hits: Counter[str] = field(default_factory=Counter)   # path (with query) -> requests
    cookies: dict[str, list[str]] = field(default_factory=dict)  # path -> Cookie headers seen
    runner: web.AppRunner | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> JsSite:
        self.runner, self.base = await serve(self._handle)
        return self

    async def stop(self) -> None:
        self._stopping.set()
        if self.runner is not None:
            await self.runner.cleanup()

    def url(self, i: int) -> str:
        return f"{self.base}/" if i == 0 else f"{self.base}/p/{i}"

    def links(self, i: int) -> list[str]:
        out = [self.url(j) for j in (2 * i + 1, 2 * i + 2) if j < self.pages]
        if i:
            out.append(self.url(0))
        return out + [self.base + p for p in self.root_links] if i == 0 else out

    def expected_result(self, depth: int) -> dict[str, list[str]]:
        """Breadth-first from the root: each page at a level below ``depth`` maps to its
        links (sorted), as ``GET /result`` lists them."""
        level = {0: 0}
        queue = [0]
        result: dict[str, list[str]] = {}
        for i in queue:  # the root's extra links are not pages: listed, never followed
            result[self.url(i)] = sorted(self.links(i))
            for j in (2 * i + 1, 2 * i + 2):
                if j < self.pages and j not in level and level[i] + 1 < depth:
                    level[j] = level[i] + 1
                    queue.append(j)
        return result

    def page_hits(self) -> int:
        return sum(n for p, n in self.hits.items() if p == "/" or p.startswith("/p/"))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[request.path_qs] += 1
        self.cookies.setdefault(path, []).append(request.headers.get("Cookie", ""))
        if path == "/robots.txt":
            return web.Response(text="User-agent: *\nDisallow: /private\n")
        if path == "/hang":
            await self._stopping.wait()
            return web.Response(text="late")
        if path == "/late":
            return _html("Late", '<div id="nav"></div><script>setTimeout(() => {'
                         'const a = document.createElement("a"); a.id = "late";'
                         'a.href = "/p/1"; a.textContent = "late";'
                         'document.getElementById("nav").appendChild(a);}, 1000);</script>')
        if path == "/jump":  # a script sends the browser to ?to=
            to = json.dumps(request.query.get("to", "/"))
            return _html("Jump", f"<script>location.href = {to};</script>")
        if path == "/moved":  # an HTTP redirect to ?to=
            raise web.HTTPFound(request.query.get("to", "/"))
        if path == "/popup":  # opens another window
            return _html("Popup", "<script>window.open('/p/1');</script>")
        if path == "/hash":  # a script moves to a fragment of the page
            return _html("Hash", "<script>location.hash = 'top';</script>")
        if path == "/img":
            return _html("Image", '<img src="/pixel.png" alt="">')
        if path == "/pixel.png":
            return web.Response(body=PNG, content_type="image/png")
        if path == "/set-cookie":
            r = _html("Cookie", '<script src="/cookie.js"></script>')
            r.set_cookie("sid", "42")
            return r
        if path == "/cookie.js":
            return web.Response(text="var seen = 1;", content_type="text/javascript")
        if path == "/echo-cookie":
            return _html("Echo", f'<pre id="cookie">[{html.escape(request.headers.get("Cookie", ""))}]</pre>')
        if path == "/probe":
            return _html("Probe", PROBE_SCRIPT)
        if path == "/storage":
            return _html("Storage", STORAGE_SCRIPT)
        if path.startswith("/private"):
            return _html("Private", "<p>private</p>")
        i = 0 if path == "/" else _page_number(path)
        if i is None or i >= self.pages:
            return web.Response(status=404, text="<html>not found</html>",
                                content_type="text/html")
        if self.delay:
            await asyncio.sleep(self.delay)
        links = json.dumps([u.removeprefix(self.base) for u in self.links(i)])
        return _html(f"Page {i}", f'<script type="application/json" id="links">{links}</script>'
                     + LINKS_SCRIPT)


def _page_number(path: str) -> int | None:
    m = re.fullmatch(r"/p/(\d+)", path)
    return int(m.group(1)) if m else None


def _html(title: str, body: str) -> web.Response:
    return web.Response(text=f"<!doctype html><html><head><title>{title}</title></head>"
                             f"<body>{body}</body></html>", content_type="text/html")


def probe(body: bytes) -> dict[str, Any]:
    """What ``/probe`` wrote, from the rendered HTML."""
    m = re.search(r'<pre id="probe">(.*?)</pre>', body.decode())
    assert m, body[:500]
    return dict(json.loads(html.unescape(m.group(1))))


def anchors(body: bytes) -> list[str]:
    """The href of every ``<a>`` in the HTML, in order."""
    return re.findall(r'<a [^>]*href="([^"]*)"', body.decode())


def chromium_pids() -> set[int]:
    """Pids of the browsers (main processes, driven over a pipe) under this test process."""
    me = os.getpid()
    parents: dict[int, int] = {}
    cmdlines: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
        cmdlines[pid] = cmd
    found = set()
    for pid, cmd in cmdlines.items():
        if "--remote-debugging-pipe" not in cmd or "--type=" in cmd:
            continue
        p, hops = parents.get(pid, 0), 0
        while p > 1 and p != me and hops < 64:
            p, hops = parents.get(p, 0), hops + 1
        if p == me:
            found.add(pid)
    return found
