"""A local target site with a known link graph, on two loopback hosts, counting hits per URL.

The graph has cycles, duplicate links, fragments, relative links of every form, a ``<base>``,
404 and 500 pages, a redirect, images/CSS/JS (never fetched), an extension-less image, a second
host, a slow page on the short path to a deep page (so arrival order differs from BFS order), and
tricky HTML (comments, inline script, unquoted and upper-case attributes, entities, srcset).
Each page declares the links Harvester must find on it; ``expected_result`` is the BFS oracle.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from shared.mime import guess_mime, is_skip_mime
from tests.servers import serve


@dataclass
class Page:
    html: str = ""
    links: tuple[str, ...] = ()       # what must be found (absolute, canonical)
    status: int = 200
    content_type: str = "text/html"
    delay: float = 0.0
    redirect: str | None = None        # path to redirect to
    body: bytes | None = None


@dataclass
class TestSite:
    __test__ = False  # not a test class, despite the name
    a: str = ""  # http://127.0.0.1:PORT
    b: str = ""  # http://127.0.0.2:PORT
    pages: dict[str, Page] = field(default_factory=dict)   # absolute URL -> page
    hits: Counter[str] = field(default_factory=Counter)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    runners: list[web.AppRunner] = field(default_factory=list)

    async def start(self) -> TestSite:
        self.a = await self._serve("127.0.0.1")
        self.b = await self._serve("127.0.0.2")
        self.pages = build_pages(self.a, self.b)
        return self

    async def _serve(self, host: str) -> str:
        runner, base = await serve(self._handle, host)
        self.runners.append(runner)
        return base

    async def stop(self) -> None:
        for r in self.runners:
            await r.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        url = f"http://{request.host}{request.path_qs}"
        self.hits[url] += 1
        key = f"http://{request.host}{request.path}" + (f"?{request.query_string}" if request.query_string else "")
        page = self.pages.get(key) or self.pages.get(f"http://{request.host}{request.path}")
        if url in self.gates:
            await self.gates[url].wait()
        if page is None:
            return web.Response(status=404, text="<html>not found</html>", content_type="text/html")
        if page.delay:
            await asyncio.sleep(page.delay)
        if page.redirect:
            raise web.HTTPFound(page.redirect)
        if page.body is not None:
            return web.Response(status=page.status, body=page.body, content_type=page.content_type)
        return web.Response(status=page.status, text=page.html, content_type=page.content_type)

    def expected_result(self, start: str, depth: int,
                        follows: Callable[[str], bool] = lambda url: True) -> dict[str, list[str]]:
        """Breadth-first: pages at levels < depth are processed; a processed 2xx HTML page maps
        to every link on it; links of skipped types (images, CSS, JS) or out of scope
        (``follows``) are listed, never followed."""
        level = {start: 0}
        queue = [start]
        result: dict[str, list[str]] = {}
        for url in queue:
            page = self.pages.get(url)
            if page is not None and page.redirect:
                page = self.pages[url.split("/", 3)[0] + "//" + url.split("/", 3)[2] + page.redirect]
            if page is None or page.status >= 400 or page.content_type != "text/html":
                continue
            if page.links:
                result[url] = sorted(page.links)
            for link in page.links:
                if (link not in level and level[url] + 1 < depth and follows(link)
                        and not is_skip_mime(guess_mime(link))):
                    level[link] = level[url] + 1
                    queue.append(link)
        return result

    def fetched(self) -> set[str]:
        return {u for u, n in self.hits.items() if n}


def build_pages(a: str, b: str) -> dict[str, Page]:
    pb = b.rsplit(":", 1)[1]
    p: dict[str, Page] = {}
    p[f"{a}/"] = Page(f"""<html><head><title>Home</title>
<link rel="stylesheet" href="style.css"><script src="app.js"></script>
<script>var s = '<a href="/script-only.html">';</script></head><body>
<!-- <a href="/commented.html">hidden</a> -->
<a href="a.html">A</a> <a href='./b.html'>B</a> <a href=/c/>C</a>
<A HREF="{a.upper().replace('HTTP', 'HTTP')}/a.html#frag">A again</A> <a href="a.html">dup</a>
<a href="#top">self</a>
<img src="img/logo.png" srcset="img/s1.png 1x, img/s2.png 2x">
<a href="mailto:x@example.com">mail</a> <a href="javascript:void(0)">js</a>
<a href="data:text/html,hi">data</a>
<a href="//127.0.0.2:{pb}/ext.html">ext</a> <a href="/missing.html">404</a>
<a href="/redirect">moved</a> <a href="/slow.html">slow</a> <a href="c/?b=2&amp;a=1">query</a>
<a data-href="/data-only.html">x</a> <a href="/error.html">500</a> <a href="/base/">base</a>
</body></html>""", (f"{a}/style.css", f"{a}/app.js", f"{a}/a.html", f"{a}/b.html", f"{a}/c/",
                    f"{a}/", f"{a}/img/logo.png", f"{a}/img/s1.png", f"{a}/img/s2.png",
                    f"{b}/ext.html", f"{a}/missing.html", f"{a}/redirect", f"{a}/slow.html",
                    f"{a}/c/?a=1&b=2", f"{a}/error.html", f"{a}/base/"))
    p[f"{a}/a.html"] = Page("""<a href="b.html">b</a> <a href="/">home</a>
<a href="c/d.html">d</a> <A HREF=c/e.html>e</A> <a href="photo">photo</a>""",
                            (f"{a}/b.html", f"{a}/", f"{a}/c/d.html", f"{a}/c/e.html", f"{a}/photo"))
    p[f"{a}/b.html"] = Page("""<a href="../a.html">a</a> <a href="c/../b.html">self</a>
<map><area href='/c/' alt=c></map>""", (f"{a}/a.html", f"{a}/b.html", f"{a}/c/"))
    c_links = (f"{a}/c/d.html", f"{a}/", f"{a}/c/e.html", f"{a}/c/?a=1&b=2")
    c_html = """<a href="d.html">d</a> <a href="../">up</a> <a href="e.html">e</a>
<a href="?a=1&b=2">q</a>"""
    p[f"{a}/c/"] = Page(c_html, c_links)
    p[f"{a}/c/?a=1&b=2"] = Page(c_html, c_links)
    p[f"{a}/c/d.html"] = Page('<a href="deep/f.html">f</a> <a href="/c/">c</a>',
                              (f"{a}/c/deep/f.html", f"{a}/c/"))
    p[f"{a}/c/deep/f.html"] = Page('<a href="g.html">g</a>', (f"{a}/c/deep/g.html",))
    p[f"{a}/c/deep/g.html"] = Page('<a href="/">home</a> <a href="h.html">h</a>',
                                   (f"{a}/", f"{a}/c/deep/h.html"))
    p[f"{a}/c/deep/h.html"] = Page("<p>no links</p>", ())
    p[f"{a}/c/e.html"] = Page('<iframe src="frame.html"></iframe>', (f"{a}/c/frame.html",))
    p[f"{a}/c/frame.html"] = Page('<a href="/">home</a>', (f"{a}/",))
    p[f"{a}/c/moved.html"] = Page('<a href="frame.html">frame</a>', (f"{a}/c/frame.html",))
    p[f"{a}/redirect"] = Page(redirect="/c/moved.html", links=(f"{a}/c/frame.html",))
    p[f"{a}/error.html"] = Page('<a href="/never.html">never</a>', status=500)
    p[f"{a}/slow.html"] = Page('<a href="/c/deep/f.html">f</a>', (f"{a}/c/deep/f.html",), delay=0.6)
    p[f"{a}/base/"] = Page('<base href="/c/"><a href="d.html">d</a> <a href="deep/h.html">h</a>',
                           (f"{a}/c/d.html", f"{a}/c/deep/h.html"))
    p[f"{a}/photo"] = Page(body=b"\x89PNG fake", content_type="image/png")
    for asset, ctype in (("style.css", "text/css"), ("app.js", "text/javascript"),
                         ("img/logo.png", "image/png"), ("img/s1.png", "image/png"),
                         ("img/s2.png", "image/png")):
        p[f"{a}/{asset}"] = Page(body=b"asset", content_type=ctype)
    p[f"{b}/ext.html"] = Page(f'<a href="/b-only.html">b</a> <a href="{a}/a.html">a</a>',
                              (f"{b}/b-only.html", f"{a}/a.html"))
    p[f"{b}/b-only.html"] = Page('<a href="ext.html">ext</a>', (f"{b}/ext.html",))
    return p
