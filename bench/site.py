"""A deterministic benchmark site: files on disk, the expected page graph, its depth.

Host A (``127.0.0.1:<port>``) holds most pages: a tree of fan-out 10 under ``/`` (so every page
is reachable) plus random cross links. Pages are 5-30 KB of HTML with 10-40 links each, written
in every form a crawler meets: root-relative, document-relative (``../``), absolute, protocol-
relative and upper-case-scheme links, duplicates, fragments, query strings with their arguments
in varying order (one canonical page each), image/CSS/JS links (never fetched), a few links that
answer 404 and a few to host B (``127.0.0.2:<port>``), which serves a handful of pages.

URLs are given in Harvester's canonical form (``shared.urls.canonicalize``: query sorted,
fragment and default port dropped); every emitted href is checked to resolve to the target it
was written for. The expected set is every HTML page URL, including the query variants (nginx
ignores the query string, so a variant serves its base page's content) and host B's pages.
"""

from __future__ import annotations

import json
import posixpath
import random
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from shared.urls import canonicalize, resolve

VERSION = 3           # bump when the generator changes: cached sites are regenerated
FANOUT = 10
SECTIONS = FANOUT     # nodes 1..10 are the sections /s1/ .. /s10/
HOST_B_PAGES = 8

_WORDS = ["crawler", "harvest", "queue", "frontier", "worker", "foreman", "politeness", "robots", "sitemap", "index", "page", "link", "anchor", "request", "response", "header", "status", "latency", "throughput", "batch", "commit", "transaction", "stream", "message", "broker", "consumer", "producer", "replica", "shard", "partition", "cluster", "node", "cache", "eviction", "budget", "deadline", "retry", "backoff", "jitter", "timeout", "socket", "buffer", "kernel", "process", "thread", "coroutine", "event", "loop", "parser", "lexer", "token", "markup", "document", "element", "attribute", "selector", "canonical", "fragment", "query", "argument", "encoding", "charset", "unicode", "the", "a", "of", "and", "to", "in", "is", "for", "on", "with", "as", "by", "at", "from", "that", "this", "it", "be", "are", "was", "not", "or", "an", "which", "can", "has", "have", "will", "more", "also", "all", "new", "other", "one", "two", "many", "some", "each", "most", "garden", "river", "mountain", "market", "village", "harbour", "library", "museum", "theatre", "station", "bridge", "autumn", "winter", "spring", "summer", "morning", "evening", "travel", "journey", "weather", "forecast", "recipe", "history", "science", "culture", "economy", "policy", "health", "sport", "music", "film", "review", "guide"]


@dataclass
class SiteSpec:
    pages: int
    seed: int
    port: int
    host_a: str = "127.0.0.1"
    host_b: str = "127.0.0.2"

    @property
    def origin_a(self) -> str:
        return f"http://{self.host_a}:{self.port}"

    @property
    def origin_b(self) -> str:
        return f"http://{self.host_b}:{self.port}"

    def key(self) -> dict[str, object]:
        return {"version": VERSION, "pages": self.pages, "seed": self.seed, "port": self.port,
                "hosts": [self.host_a, self.host_b]}


@dataclass
class Site:
    """What the benchmark needs to know about a generated site."""
    root: Path
    spec: SiteSpec
    expected: list[str]          # canonical URLs of every HTML page
    missing: list[str]           # canonical URLs linked but answering 404
    max_level: int               # BFS distance of the farthest page from the root
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def start_url(self) -> str:
        return self.spec.origin_a + "/"

    @property
    def harvester_depth(self) -> int:
        """Harvester processes levels 0 .. depth-1: depth = max level + 1 reaches every page."""
        return self.max_level + 1

    @property
    def scrapy_depth_limit(self) -> int:
        """Scrapy drops requests deeper than DEPTH_LIMIT (the root is depth 0)."""
        return self.max_level


# ---------------------------------------------------------------------------------------------
# Layout of host A: node number -> path.

def _section(i: int) -> int:
    while i > SECTIONS:
        i = (i - 1) // FANOUT
    return i


def node_path(i: int) -> str:
    """URL path of node ``i`` of host A (directories end with "/")."""
    if i == 0:
        return "/"
    if i <= SECTIONS:
        return f"/s{i}/"
    sec = _section(i)
    kind = i % 4
    if kind == 0:
        return f"/s{sec}/p{i}.html"
    if kind == 1:
        return f"/s{sec}/item/{i}"                 # extensionless: served as text/html
    if kind == 2:
        return f"/s{sec}/d{i}/"                    # a directory: d{i}/index.html
    return f"/s{sec}/a/{i % 97}/page-{i}.html"     # deeper nesting, for ../ links


def file_for(path: str) -> str:
    """Relative file name that serves ``path``."""
    rel = path.lstrip("/")
    return rel + "index.html" if path.endswith("/") else rel


def _relative(from_path: str, to_path: str) -> str:
    """A document-relative href from the page at ``from_path`` to ``to_path``."""
    base_dir = from_path if from_path.endswith("/") else posixpath.dirname(from_path) + "/"
    rel = posixpath.relpath(to_path, base_dir.rstrip("/") or "/")
    if to_path.endswith("/"):
        rel = "./" if rel == "." else rel + "/"
    return rel


class _Writer:
    """Renders one page: links interleaved with filler paragraphs up to a target size."""

    def __init__(self, rng: random.Random, paragraphs: list[str]) -> None:
        self.rng = rng
        self.paragraphs = paragraphs

    def page(self, title: str, head_links: list[str], nav: list[tuple[str, str]],
             body_links: list[tuple[str, str]], images: list[str], footer: list[tuple[str, str]],
             size: int) -> bytes:
        rng = self.rng
        out = ['<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
               f"<title>{title}</title>\n",
               '<meta name="viewport" content="width=device-width, initial-scale=1">\n']
        for h in head_links:
            if h.endswith(".css"):
                out.append(f'<link rel="stylesheet" href="{h}">\n')
            else:
                out.append(f'<script src="{h}" defer></script>\n')
        out.append("</head>\n<body>\n<header><nav class=\"top\">\n")
        out += [f'  <a href="{h}">{t}</a>\n' for h, t in nav]
        out.append(f"</nav></header>\n<main>\n<h1>{title}</h1>\n")
        # Spread the body links and images over the filler text.
        items: list[str] = [f'<li><a href="{h}">{t}</a></li>' for h, t in body_links]
        items += [f'<li><img src="{s}" alt="figure" width="320" height="200"></li>'
                  for s in images]
        rng.shuffle(items)
        groups = [items[k:k + 4] for k in range(0, len(items), 4)]
        chunks = max(1, len(groups))
        used = sum(len(s) for s in out) + 400 + sum(len(g) for grp in groups for g in grp)
        filler_budget = max(0, size - used)
        per_gap = filler_budget // (chunks + 1)
        for grp in groups:
            out.append(self._filler(per_gap))
            out.append("<ul class=\"links\">\n" + "\n".join(grp) + "\n</ul>\n")
        out.append(self._filler(per_gap))
        out.append("</main>\n<footer>\n")
        out += [f'  <a href="{h}">{t}</a>\n' for h, t in footer]
        out.append("<p>&copy; bench site</p>\n</footer>\n</body>\n</html>\n")
        return "".join(out).encode()

    def _filler(self, budget: int) -> str:
        parts: list[str] = []
        n = 0
        while n < budget:
            p = self.paragraphs[self.rng.randrange(len(self.paragraphs))]
            if self.rng.random() < 0.15:
                p = f"<h2>{p[:40].strip()}</h2>\n{p}"
            parts.append(p)
            n += len(p)
        return "".join(parts)


def _paragraphs(rng: random.Random, count: int = 400) -> list[str]:
    out = []
    for _ in range(count):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(30, 140))]
        k = rng.randrange(len(words))
        words[k] = f"<strong>{words[k]}</strong>"
        k = rng.randrange(len(words))
        words[k] = f"<em>{words[k]}</em>"
        text = " ".join(words)
        out.append(f"<p>{text[0].upper()}{text[1:]}.</p>\n")
    return out


# ---------------------------------------------------------------------------------------------

def generate(spec: SiteSpec, root: Path, *, force: bool = False) -> Site:
    """Write the site under ``root`` (``root/a`` and ``root/b``) unless an identical one is there."""
    meta_path = root / "meta.json"
    if not force and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == spec.key():
            return _load(spec, root, meta)
    t0 = time.monotonic()
    if root.exists():
        shutil.rmtree(root)
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir(parents=True)

    rng = random.Random(spec.seed)
    writer = _Writer(rng, _paragraphs(rng))
    a, b = spec.origin_a, spec.origin_b
    n_query = max(2, spec.pages // 100)
    files_a = spec.pages - n_query - HOST_B_PAGES
    if files_a < SECTIONS + 1:
        raise ValueError(f"--pages must be at least {SECTIONS + 1 + n_query + HOST_B_PAGES}")

    # Query variants of listing pages (sections and directory pages): (node, page, sort).
    listing = [i for i in range(1, files_a) if node_path(i).endswith("/")]
    variants: list[tuple[int, int, str]] = []
    seen_v: set[tuple[int, int, str]] = set()
    while len(variants) < n_query:
        v = (rng.choice(listing), rng.randint(2, 9), rng.choice(("asc", "desc")))
        if v not in seen_v:
            seen_v.add(v)
            variants.append(v)
    variants_of: dict[int, list[tuple[int, int, str]]] = {}
    for v in variants:
        variants_of.setdefault(v[0], []).append(v)

    n_missing = max(2, spec.pages // 200)
    missing_paths = [f"/s{1 + j % SECTIONS}/missing-{j}.html" if j % 2 else f"/gone/{j}"
                     for j in range(n_missing)]
    b_paths = ["/"] + [f"/b{j}.html" if j % 2 else f"/docs/b{j}" for j in range(1, HOST_B_PAGES)]

    # Which A pages link to a 404 or to host B (each target linked at least once).
    missing_on: dict[int, list[str]] = {}
    for j, p in enumerate(missing_paths):
        for _ in range(1 + j % 2):
            missing_on.setdefault(rng.randrange(files_a), []).append(p)
    b_on: dict[int, list[str]] = {}
    for j in range(max(HOST_B_PAGES, spec.pages // 400)):
        b_on.setdefault(rng.randrange(files_a), []).append(b_paths[j % HOST_B_PAGES])

    graph: dict[str, set[str]] = {}       # canonical page URL -> canonical HTML page links
    checked = 0
    total_links = 0
    total_bytes = 0

    def href_forms(page_path: str, target_path: str, origin: str, query: str = "") -> str:
        """One of the many ways to write a link to ``origin + target_path + query``."""
        r = rng.random()
        if origin != a or r < 0.12:
            if origin == a and r < 0.03:
                return f"//{spec.host_a}:{spec.port}{target_path}{query}"
            if origin == a and r < 0.05:
                return f"HTTP://{spec.host_a}:{spec.port}{target_path}{query}"
            return f"{origin}{target_path}{query}"
        if r < 0.55:
            return target_path + query
        return _relative(page_path, target_path) + query

    def check(page_url: str, href: str, target: str) -> None:
        nonlocal checked
        got = resolve(page_url, href)
        if got != target:
            raise AssertionError(f"generator bug: {href!r} on {page_url} -> {got}, not {target}")
        checked += 1

    def asset_links(i: int, sec: int) -> tuple[list[str], list[str], list[tuple[str, str]]]:
        head = ["/static/site.css", f"/static/s{sec}.css", "/static/app.js"]
        if rng.random() < 0.5:
            head.append(f"/static/vendor-{rng.randrange(20)}.js")
        images = [f"/img/{sec}/{i}-{k}.png" for k in range(rng.randint(1, 3))]
        if rng.random() < 0.3:
            images.append("/img/logo.png")
        anchors = []
        if rng.random() < 0.2:
            anchors.append((f"/files/photo-{i}.jpg", "photo"))
        return head, images, anchors

    for i in range(files_a):
        path = node_path(i)
        url = canonicalize(a + path)
        sec = _section(i) if i else 0
        target_total = rng.randint(10, 40)
        head, images, anchor_assets = asset_links(i, sec)
        links_html: set[str] = set()

        nav: list[tuple[str, str]] = []
        body: list[tuple[str, str]] = []
        footer: list[tuple[str, str]] = []

        def link_a(target_path: str, query: str = "", *, where: list[tuple[str, str]],
                   text: str, fragment: str = "", path: str = path,
                   url: str = url) -> tuple[str, str]:
            href = href_forms(path, target_path, a, query) + fragment
            target = canonicalize(a + target_path + query)
            check(url, href, target)
            where.append((href, text))
            return href, target

        # Navigation: home, section, parent.
        _, t = link_a("/", where=nav, text="Home")
        links_html.add(t)
        if sec:
            _, t = link_a(node_path(sec), where=nav, text=f"Section {sec}")
            links_html.add(t)
        if i:
            _, t = link_a(node_path((i - 1) // FANOUT), where=nav, text="Up")
            links_html.add(t)
        # Children in the tree: these make every page reachable.
        for c in range(FANOUT * i + 1, min(FANOUT * i + FANOUT + 1, files_a)):
            frag = "#top" if rng.random() < 0.1 else ""
            _, t = link_a(node_path(c), where=body, text=f"Page {c}", fragment=frag)
            links_html.add(t)
        # This listing page's query variants ("next page"), arguments in either order.
        for (_, pg, sort) in variants_of.get(i, ()):
            q = f"?page={pg}&sort={sort}" if rng.random() < 0.5 else f"?sort={sort}&page={pg}"
            _, t = link_a(path, q, where=body, text=f"Page {pg} ({sort})")
            links_html.add(t)
        # 404s and host B.
        for mp in missing_on.get(i, ()):
            href = href_forms(path, mp, a)
            check(url, href, canonicalize(a + mp))
            body.append((href, "Archived"))
        for bp in b_on.get(i, ()):
            href = f"{b}{bp}"
            target = canonicalize(href)
            check(url, href, target)
            body.append((href, "Partner site"))
            links_html.add(target)
        # Fill with cross links (some to query variants) up to the page's link count.
        fixed = len(nav) + len(body) + len(head) + len(images) + len(anchor_assets)
        dups = rng.randint(1, 3)
        for _ in range(max(4, target_total - fixed - dups)):
            r = rng.random()
            if r < 0.04:
                (vi, pg, sort) = variants[rng.randrange(len(variants))]
                q = f"?page={pg}&sort={sort}" if rng.random() < 0.5 else f"?sort={sort}&page={pg}"
                frag = "#results" if rng.random() < 0.3 else ""
                _, t = link_a(node_path(vi), q, where=body, text="Listing", fragment=frag)
            else:
                j = rng.randrange(files_a) if r < 0.6 else min(
                    files_a - 1, max(0, i + rng.randint(-50, 50)))
                frag = f"#s{rng.randint(1, 5)}" if rng.random() < 0.1 else ""
                _, t = link_a(node_path(j), where=body, text=f"See also {j}", fragment=frag)
            links_html.add(t)
        # Duplicates in the footer (same target, maybe written differently), and a bare "#top".
        for _ in range(dups):
            src = rng.choice(nav + body)
            footer.append(src)
        if rng.random() < 0.3:
            footer.append(("#top", "Back to top"))
        body += anchor_assets

        size = rng.randint(5_000, 30_000)
        data = writer.page(f"Bench page {i}", head, nav, body, images, footer, size)
        (root / "a" / file_for(path)).parent.mkdir(parents=True, exist_ok=True)
        (root / "a" / file_for(path)).write_bytes(data)
        total_bytes += len(data)
        total_links += len(nav) + len(body) + len(head) + len(images) + len(footer)
        graph[url] = links_html

    # Host B: a handful of pages linking each other and back to host A.
    for j, bp in enumerate(b_paths):
        url = canonicalize(b + bp)
        head, images, _ = asset_links(10_000 + j, 0)
        nav, body, footer = [], [], []
        links_html = set()
        for k, other in enumerate(b_paths):
            if k != j:
                href = _relative(bp, other) if rng.random() < 0.5 else other
                check(url, href, canonicalize(b + other))
                nav.append((href, f"B {k}"))
                links_html.add(canonicalize(b + other))
        for _ in range(rng.randint(3, 8)):
            target = canonicalize(a + node_path(rng.randrange(files_a)))
            check(url, target, target)
            body.append((target, "Back to A"))
            links_html.add(target)
        size = rng.randint(5_000, 30_000)
        data = writer.page(f"Partner page {j}", head, nav, body, images, footer, size)
        (root / "b" / file_for(bp)).parent.mkdir(parents=True, exist_ok=True)
        (root / "b" / file_for(bp)).write_bytes(data)
        total_bytes += len(data)
        total_links += len(nav) + len(body) + len(head) + len(images)
        graph[url] = links_html

    # Query variants serve their base page: same links.
    for (vi, pg, sort) in variants:
        base = canonicalize(a + node_path(vi))
        graph[canonicalize(a + node_path(vi) + f"?page={pg}&sort={sort}")] = graph[base]

    start = canonicalize(a + "/")
    levels = _bfs(graph, start)
    unreachable = set(graph) - set(levels)
    if unreachable:
        raise AssertionError(f"{len(unreachable)} pages unreachable, e.g. {sorted(unreachable)[:3]}")
    expected = sorted(graph)
    assert len(expected) == spec.pages, (len(expected), spec.pages)
    missing = sorted(canonicalize(a + p) for p in missing_paths)
    max_level = max(levels.values())
    per_level = [0] * (max_level + 1)
    for lv in levels.values():
        per_level[lv] += 1
    meta = {"key": spec.key(), "pages": len(expected), "files_host_a": files_a,
            "query_variants": n_query, "host_b_pages": HOST_B_PAGES, "missing": len(missing),
            "max_level": max_level, "pages_per_level": per_level, "links": total_links,
            "hrefs_checked": checked, "bytes": total_bytes,
            "mean_page_kb": round(total_bytes / (files_a + HOST_B_PAGES) / 1024, 1),
            "generated_in_s": round(time.monotonic() - t0, 1)}
    (root / "expected.txt").write_text("\n".join(expected) + "\n")
    (root / "missing.txt").write_text("\n".join(missing) + "\n")
    (root / "fetch.txt").write_text("\n".join(expected + missing) + "\n")
    meta_path.write_text(json.dumps(meta, indent=1))
    print(f"site: generated {len(expected)} pages ({total_bytes / 2**20:.0f} MiB, "
          f"{total_links} links, max level {max_level}) in {meta['generated_in_s']} s", flush=True)
    return Site(root, spec, expected, missing, max_level, meta)


def _load(spec: SiteSpec, root: Path, meta: dict[str, object]) -> Site:
    expected = (root / "expected.txt").read_text().split()
    missing = (root / "missing.txt").read_text().split()
    return Site(root, spec, expected, missing, int(meta["max_level"]), meta)  # type: ignore[arg-type]


def _bfs(graph: dict[str, set[str]], start: str) -> dict[str, int]:
    levels = {start: 0}
    todo = deque([start])
    while todo:
        u = todo.popleft()
        for v in graph.get(u, ()):
            if v not in levels and v in graph:
                levels[v] = levels[u] + 1
                todo.append(v)
    return levels
