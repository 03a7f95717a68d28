"""A small local site for the README walkthrough: ``harvester demo-site --port 8081``.

Thirty pages in three sections, linked with every kind of relative link, plus images, a stylesheet,
a script, a redirect and a broken link, so a crawl shows results, the MIME filter and a failure.
"""

from __future__ import annotations

from aiohttp import web

SECTIONS = ("news", "docs", "shop")
PER_SECTION = 10


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><title>{title}</title>"
            '<link rel="stylesheet" href="/static/site.css">'
            '<script src="/static/app.js"></script></head>'
            f"<body><h1>{title}</h1>{body}</body></html>")


def _index() -> str:
    links = "".join(f'<li><a href="{s}/">{s.title()}</a></li>' for s in SECTIONS)
    return _page("Demo site", f'<ul>{links}</ul><img src="static/logo.png" alt="logo">'
                 '<a href="/old-home">old home</a> <a href="/missing.html">broken</a>'
                 '<a href="mailto:demo@example.com">mail</a>')


def _section(name: str) -> str:
    items = "".join(f'<li><a href="item{i}.html">{name} {i}</a></li>' for i in range(PER_SECTION))
    return _page(name.title(), f'<a href="../">home</a><ul>{items}</ul>')


def _item(section: str, i: int) -> str:
    nxt = (i + 1) % PER_SECTION
    other = SECTIONS[(SECTIONS.index(section) + 1) % len(SECTIONS)]
    return _page(f"{section} {i}",
                 f'<a href="item{nxt}.html#top">next</a> <a href="./">up</a> '
                 f'<a href="/{other}/item{i}.html">see also</a> '
                 f'<img src="../static/{section}-{i}.jpg" alt="">')


async def _handle(request: web.Request) -> web.StreamResponse:
    path = request.path
    if path == "/":
        return web.Response(text=_index(), content_type="text/html")
    if path == "/old-home":
        raise web.HTTPMovedPermanently("/")
    if path.startswith("/static/"):
        kind = {"png": "image/png", "jpg": "image/jpeg", "css": "text/css",
                "js": "text/javascript"}.get(path.rsplit(".", 1)[-1], "application/octet-stream")
        return web.Response(body=b"demo", content_type=kind)
    parts = path.strip("/").split("/")
    if parts and parts[0] in SECTIONS:
        if len(parts) == 1 or parts[1] == "":
            return web.Response(text=_section(parts[0]), content_type="text/html")
        name = parts[1]
        if name.startswith("item") and name.endswith(".html") and name[4:-5].isdigit():
            i = int(name[4:-5])
            if i < PER_SECTION:
                return web.Response(text=_item(parts[0], i), content_type="text/html")
    raise web.HTTPNotFound(text="not found")


def create_demo_app() -> web.Application:
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", _handle)
    return app


def serve(host: str, port: int) -> None:
    print(f"Demo site on http://{host}:{port}/", flush=True)
    web.run_app(create_demo_app(), host=host, port=port, print=None, access_log=None)
