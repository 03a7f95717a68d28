"""The JavaScript bench site (issue 12): pages whose links exist only after a script runs.

Host A (``127.0.0.1:<port>``) holds ``pages`` HTML pages: a tree of fan-out 10 under ``/``
(every page is reachable) plus random cross links, 10-30 links a page. A page carries its
links only as an inline JSON array (``<script type="application/json" id="link-data">``); the
shared ``/static/app.js`` (loaded by every page, at the end of the body, so it has run by the
``load`` event) builds the ``<a>``s from it. An HTTP fetcher sees no page link at all; a
browser sees them all. No images, fonts or media (the browser fetcher's default blocking does
not matter). Host B (``127.0.0.2:<port>``) serves one static page, for the bench's small job.

The expected set (``expected.txt``) is every page URL in Harvester's canonical form; the crawl
depth comes from a BFS from ``/``, as in ``bench/site.py``.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

from bench.site import Site, SiteSpec, _bfs, _paragraphs
from shared.urls import canonicalize, resolve

VERSION = 1  # bump when the generator changes: cached sites are regenerated
FANOUT = 10

APP_JS = """\
(function () {
  var data = JSON.parse(document.getElementById("link-data").textContent);
  var list = document.getElementById("links");
  for (var i = 0; i < data.length; i++) {
    var li = document.createElement("li");
    var a = document.createElement("a");
    a.href = data[i][0];
    a.textContent = data[i][1];
    li.appendChild(a);
    list.appendChild(li);
  }
  document.getElementById("count").textContent = data.length + " links";
})();
"""


def node_path(i: int) -> str:
    """URL path of page ``i`` (0 is the root; the others alternate .html and extensionless)."""
    if i == 0:
        return "/"
    return f"/n/{i}.html" if i % 2 else f"/n/{i}"


def _href(rng: random.Random, origin: str, page: str, path: str) -> str:
    r = rng.random()
    if r < 0.1:
        return origin + path                      # absolute
    if r < 0.2 and path.startswith("/n/") and page.startswith("/n/"):
        return path.removeprefix("/n/")           # document-relative
    return path                                   # root-relative


def _page(i: int, links: list[tuple[str, str]], filler: str) -> bytes:
    data = json.dumps(links, separators=(",", ":")).replace("</", "<\\/")
    title = "Home" if i == 0 else f"Page {i}"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n"
        f'<script type="application/json" id="link-data">{data}</script>\n'
        "</head>\n<body>\n<main>\n"
        f"<h1>{title}</h1>\n<p id=\"count\"></p>\n<ul id=\"links\"></ul>\n{filler}</main>\n"
        '<script src="/static/app.js"></script>\n</body>\n</html>\n').encode()


def generate(spec: SiteSpec, root: Path, *, force: bool = False) -> Site:
    """Write the site under ``root`` (``root/a`` and ``root/b``) unless an identical one is
    there; ``spec.pages`` pages on host A."""
    key = {"version": VERSION, "kind": "js", "pages": spec.pages, "seed": spec.seed,
           "port": spec.port, "hosts": [spec.host_a, spec.host_b]}
    meta_path = root / "meta.json"
    if not force and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            expected = (root / "expected.txt").read_text().split()
            return Site(root, spec, expected, [], int(meta["max_level"]), meta)
    if spec.pages < FANOUT + 1:
        raise ValueError(f"--js-pages must be at least {FANOUT + 1}")
    t0 = time.monotonic()
    if root.exists():
        shutil.rmtree(root)
    (root / "a" / "n").mkdir(parents=True)
    (root / "a" / "static").mkdir()
    (root / "b").mkdir()
    (root / "a" / "static" / "app.js").write_text(APP_JS)
    (root / "b" / "index.html").write_text(
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>B</title></head>'
        "<body><p>The second host of the JavaScript bench site.</p></body></html>\n")

    rng = random.Random(spec.seed)
    paragraphs = _paragraphs(rng, 100)
    origin = spec.origin_a
    n = spec.pages
    graph: dict[str, set[str]] = {}
    total_links = total_bytes = 0
    for i in range(n):
        targets = [c for c in range(FANOUT * i + 1, FANOUT * i + FANOUT + 1) if c < n]
        want = rng.randint(10, 30)
        while len(targets) < want:
            targets.append(rng.randrange(n))     # cross links (a few repeat: duplicates)
        rng.shuffle(targets)
        path = node_path(i)
        page_url = origin + path
        links = []
        for t in targets:
            href = _href(rng, origin, path, node_path(t))
            if resolve(page_url, href) != canonicalize(origin + node_path(t)):
                raise AssertionError(f"{href!r} on {page_url} does not resolve to page {t}")
            links.append((href, "Home" if t == 0 else f"Page {t}"))
        filler = "".join(rng.choice(paragraphs) for _ in range(rng.randint(2, 8)))
        data = _page(i, links, filler)
        (root / "a" / (path.lstrip("/") or "index.html")).write_bytes(data)
        graph[canonicalize(page_url)] = {canonicalize(origin + node_path(t)) for t in targets}
        total_links += len(links)
        total_bytes += len(data)
    start = canonicalize(origin + "/")
    levels = _bfs(graph, start)
    if len(levels) != n:
        raise AssertionError(f"{n - len(levels)} pages unreachable")
    expected = sorted(graph)
    max_level = max(levels.values())
    per_level = [0] * (max_level + 1)
    for lv in levels.values():
        per_level[lv] += 1
    meta = {"key": key, "pages": n, "links": total_links, "bytes": total_bytes,
            "mean_page_kb": round(total_bytes / n / 1024, 1), "max_level": max_level,
            "pages_per_level": per_level, "generated_in_s": round(time.monotonic() - t0, 1)}
    (root / "expected.txt").write_text("\n".join(expected) + "\n")
    (root / "fetch.txt").write_text("\n".join(expected) + "\n")
    meta_path.write_text(json.dumps(meta, indent=1))
    print(f"jssite: generated {n} pages ({total_bytes / 2**20:.1f} MiB, {total_links} links in "
          f"scripts, max level {max_level}) in {meta['generated_in_s']} s", flush=True)
    return Site(root, spec, expected, [], max_level, meta)
