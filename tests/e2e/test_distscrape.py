"""distscrape's behaviour (../shared/docs/reference-seed-systems.md §2), end to end on local
sites, asserting on each site's hit log: a link-regex crawl fetches every matching reachable page
exactly once and no other, its bodies saved as served (DS-1); an id crawl downloads every
reachable id exactly once from its URL format (DS-2), also from id sets of 10^5 ids uploaded
streamed (DS-3) and with eight workers (DS-5); failed downloads are retried, then listed with
status and attempts (DS-8); two id jobs over the same ids each see only their own (DS-9)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Self

import pytest
from aiohttp import web

from shared.config import Settings
from tests.e2e.stack import Stack
from tests.servers import serve

pytestmark = pytest.mark.e2e

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Site:
    """A local site counting its hits by path and query; ``handle`` answers them."""

    def __init__(self, handle: Callable[[Site, web.Request], Awaitable[web.StreamResponse]]):
        self.hits: Counter[str] = Counter()
        self.base = ""
        self.served: dict[str, bytes] = {}  # path and query -> the last body sent with a 200
        self._handle = handle
        self.runner: web.AppRunner | None = None

    async def handler(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path_qs] += 1
        return await self._handle(self, request)

    async def __aenter__(self) -> Self:
        self.runner, self.base = await serve(self.handler)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.runner
        await self.runner.cleanup()

    def ok(self, request: web.Request, body: bytes, content_type: str) -> web.Response:
        self.served[request.path_qs] = body
        return web.Response(body=body, content_type=content_type)


@pytest.fixture
def outputs(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"output_root": tmp_path / "out"})


@pytest.fixture
async def stack(outputs: Settings) -> AsyncIterator[Stack]:
    st = await Stack(outputs).start()
    yield st
    await st.stop()


async def run(stack: Stack, spec: dict[str, Any], timeout: float = 120) -> tuple[int, dict[str, Any]]:
    job = await stack.post_spec(spec)
    st = await stack.wait_complete(job, timeout)
    assert st["completed"] == len(st["urls"]), st  # DS-6: complete exactly when nothing pends
    return job, st


async def upload_ids(stack: Stack, idents: Iterable[str]) -> tuple[str, int]:
    """POST /idsets with a chunked body (a generator: no Content-Length), never whole here."""

    async def lines() -> AsyncIterator[bytes]:
        buf: list[str] = []
        for ident in idents:
            buf.append(ident)
            if len(buf) == 4096:
                yield ("\n".join(buf) + "\n").encode()
                buf = []
        if buf:
            yield "\n".join(buf).encode()

    assert stack.http
    async with stack.http.post(stack.base + "/idsets", data=lines()) as r:
        body = await r.json(content_type=None)
        assert r.status == 200, body
    return str(body["idSet"]), int(body["count"])


def saved_files(settings: Settings, job: int) -> Counter[bytes]:
    """The contents of the files the job's ``files`` output wrote, with their counts."""
    root = settings.output_root / f"job-{job}" / "files"
    return Counter(p.read_bytes() for p in root.rglob("*") if p.is_file())


async def items(stack: Stack, job: int, kind: str) -> list[dict[str, Any]]:
    status, body, _ = await stack.request("GET", f"/items/{job}", kind=kind, format="json")
    assert status == 200, body
    assert isinstance(body, list), body
    return body


# DS-1 ------------------------------------------------------------------------------------------

GRAPH = {  # path -> links on it
    "/": ["/keep/1", "/keep/2", "/skip/1", "/keep/1"],
    "/keep/1": ["/keep/3", "/skip/2", "/", "/keep/2"],
    "/keep/2": ["/keep/1", "/keep/3", "/keep/4.png", "/skip/5.png"],
    "/keep/3": ["/keep/1", "/skip/3"],
    "/skip/1": ["/keep/9"],     # only reachable through a page that is not followed
    "/skip/2": ["/keep/10"],
    "/skip/3": [],
    "/keep/9": [],
    "/keep/10": [],
}


async def link_page(site: Site, request: web.Request) -> web.StreamResponse:
    if request.path.endswith(".png"):  # a rule may follow any type: an image is fetched too
        return site.ok(request, b"\x89PNG\r\n\x1a\n" + request.path.encode(), "image/png")
    links = GRAPH.get(request.path)
    if links is None:
        return web.Response(status=404, text="not found")
    anchors = "".join(f'<p><a href="{link}">{link}</a></p>' for link in links)
    body = f"<html><body><h1>{request.path}</h1>{anchors}</body></html>".encode()
    return site.ok(request, body, "text/html")


async def test_link_regex_fetches_matching_pages_once(stack: Stack, outputs: Settings) -> None:
    async with Site(link_page) as site:
        job, st = await run(stack, {
            "urls": [site.base + "/"],
            "follow": {"linkRegex": r'href="(/keep/[\w.]+)"'},  # the first group is the link
            "save": [{"kind": "files"}]})
        assert site.hits == {"/": 1, "/keep/1": 1, "/keep/2": 1, "/keep/3": 1, "/keep/4.png": 1}
        assert st["pages"]["failed"] == 0
        # Every fetched page's body saved once, byte for byte as served.
        assert saved_files(outputs, job) == Counter(site.served.values())
        for path, body in site.served.items():
            assert stack.http
            async with stack.http.get(f"{stack.base}/bodies/{job}",
                                      params={"url": site.base + path}) as r:
                assert r.status == 200 and await r.read() == body, path
        # The result stays the pages' HTML links; the followed ones are the job's link yields.
        result = await stack.result(job)
        assert sorted(result) == sorted(site.base + p for p in site.hits if "png" not in p)
        links = await items(stack, job, "link")
        assert {y["page"] for y in links} == {site.base + p for p in site.hits if "png" not in p}
        assert {y["url"] for y in links} == {site.base + p for p in ("/keep/1", "/keep/2",
                                                                      "/keep/3", "/keep/4.png")}


# DS-2 ------------------------------------------------------------------------------------------

def refs(i: int, n: int) -> list[str]:
    """Item i refers to its two children in a binary tree of n items, and to item 1."""
    return [str(c) for c in (2 * i, 2 * i + 1) if c <= n] + ["1"]


def item_site(n: int, extra: Callable[[str], list[str]] | None = None,
              fail: dict[str, str] | None = None) -> Site:
    """``/item?id=<i>``: an XML body naming other ids as ``id:<x>`` (items 1..n a tree; ids
    beyond n that ``extra`` names answer too). ``fail``: id -> "500" or "reset"."""

    async def handle(site: Site, request: web.Request) -> web.StreamResponse:
        ident = request.query.get("id", "")
        if request.path != "/item" or not ident:
            return web.Response(status=404, text="not found")
        how = (fail or {}).get(ident)
        if how == "500":
            return web.Response(status=500, text="boom")
        if how == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response(text="never sent")
        named = (refs(int(ident), n) if ident.isdigit() and int(ident) <= n else []) + \
            (extra(ident) if extra else [])
        anchors = "".join(f"<ref>id:{x}</ref>" for x in named)
        body = f"<item><id>{ident}</id>{anchors}</item>".encode()
        return site.ok(request, body, "application/xml")

    return Site(handle)


def hits_by_id(site: Site) -> Counter[str]:
    out: Counter[str] = Counter()
    for path_qs, n in site.hits.items():
        assert path_qs.startswith("/item?id="), path_qs
        out[path_qs.removeprefix("/item?id=")] += n
    return out


def id_spec(site: Site, **more: Any) -> dict[str, Any]:
    return {"regex": r"id:(\w+)", "urlFormat": site.base + "/item?id={}", **more}


async def test_id_crawl_downloads_each_reachable_id_once(stack: Stack) -> None:
    n = 60
    async with item_site(n) as site:
        job, st = await run(stack, {"ids": id_spec(site, seeds=["1"])})  # no urls: seeds
        assert hits_by_id(site) == {str(i): 1 for i in range(1, n + 1)}
        assert st["pages"]["failed"] == 0
        found = await items(stack, job, "id")
        assert {y["id"] for y in found} == {str(i) for i in range(1, n + 1)}
        assert {y["url"] for y in found} == {f"{site.base}/item?id={i}" for i in range(1, n + 1)}
        assert {y["page"] for y in found} == {y["url"] for y in found}
        # The same job again is answered from the store and follows the same ids (guarantee 10).
        again, st = await run(stack, {"ids": id_spec(site, seeds=["1"])})
        assert hits_by_id(site) == {str(i): 1 for i in range(1, n + 1)}
        assert st["pages"]["cached"] == n
        assert await items(stack, again, "id") == found


# DS-3 ------------------------------------------------------------------------------------------

async def test_resume_sets(stack: Stack) -> None:
    big = 100_000
    known_fetched = [f"k{i}" for i in range(50)]

    def extra(ident: str) -> list[str]:
        # The seed names every known id; each known id names explored ids (some in no known
        # set), other known ids (found again) and a new id.
        if ident == "s":
            return known_fetched + ["e5", "e99999"]
        if ident.startswith("k"):
            i = int(ident[1:])
            return [f"e{i}", f"e{big - 1 - i}", f"k{(i + 1) % 50}", "s", f"n{i}"]
        return []

    async with item_site(0, extra) as site:
        explored, count = await upload_ids(stack, (f"e{i}" for i in range(big)))
        assert count == big
        # Known: 50 to fetch and 99,950 explored ones (explored wins).
        known, count = await upload_ids(stack, [*known_fetched,
                                                *(f"e{i}" for i in range(big - 50))])
        assert count == big
        _, st = await run(stack, {"ids": id_spec(site, seeds=["s"], known=known,
                                                 explored=explored)})
        expected = {"s": 1} | {k: 1 for k in known_fetched} | {f"n{i}": 1 for i in range(50)}
        assert hits_by_id(site) == expected  # no explored id, each other once
        assert st["pages"]["failed"] == 0
        # An unknown set is refused.
        status, body = await stack.post_json({"ids": id_spec(
            site, known="00000000-0000-4000-8000-000000000000")})
        assert status == 400 and "ids.known" in str(body), body
        # Known ids that are all explored, and nothing else: nothing to fetch, refused (an
        # explored id is never fetched, not even as the job's first URL).
        all_explored, _ = await upload_ids(stack, ["e1", "e2"])
        hits = hits_by_id(site)
        status, body = await stack.post_json({"ids": id_spec(site, known=all_explored,
                                                             explored=explored)})
        assert status == 400, body
        assert "Invalid ids.known: every known id is explored" in str(body), body
        assert hits_by_id(site) == hits


# DS-5 ------------------------------------------------------------------------------------------

async def test_eight_workers_fetch_each_id_once(outputs: Settings) -> None:
    n = 400
    stack = await Stack(outputs).start(foremen=2, workers=8)
    try:
        async with item_site(n) as site:
            await run(stack, {"ids": id_spec(site, seeds=["1"])})
            assert hits_by_id(site) == {str(i): 1 for i in range(1, n + 1)}
    finally:
        await stack.stop()


# DS-8 ------------------------------------------------------------------------------------------

async def test_failed_ids_are_retried_then_listed(stack: Stack, outputs: Settings) -> None:
    n = 7
    attempts = outputs.retries + 1
    async with item_site(n, lambda i: ["bad", "gone"] if i == "1" else [],
                         fail={"bad": "500", "gone": "reset"}) as site:
        job, st = await run(stack, {"ids": id_spec(site, seeds=["1"])})
        hits = hits_by_id(site)
        # aiohttp sends a request again, once, when a kept-alive connection it reused is
        # dropped: a reset costs the server one or two hits per attempt.
        assert attempts <= hits.pop("gone") <= 2 * attempts
        assert hits == {str(i): 1 for i in range(1, n + 1)} | {"bad": attempts}
        assert st["pages"]["failed"] == 2
        status, failed, _ = await stack.request("GET", f"/result/{job}", status="failed")
        assert status == 200, failed
        assert set(failed) == {f"{site.base}/item?id=bad", f"{site.base}/item?id=gone"}
        bad = failed[f"{site.base}/item?id=bad"]
        gone = failed[f"{site.base}/item?id=gone"]
        assert bad["status"] == 500 and bad["attempts"] == attempts and bad["reason"], bad
        assert gone["status"] is None and gone["attempts"] == attempts and gone["reason"], gone


# DS-9 ------------------------------------------------------------------------------------------

async def test_two_id_jobs_do_not_see_each_other(stack: Stack, outputs: Settings) -> None:
    n = 15
    async with item_site(n) as site:
        # Overlapping ids, different explored sets: job a never goes below 2, job b below 3.
        no_2, _ = await upload_ids(stack, ["2"])
        no_3, _ = await upload_ids(stack, ["3"])
        below = {2: {"4", "5", "8", "9", "10", "11"}, 3: {"6", "7", "12", "13", "14", "15"}}
        every = {str(i) for i in range(1, n + 1)}
        own_a = every - {"2"} - below[2]
        own_b = every - {"3"} - below[3]
        a, _ = await run(stack, {"ids": id_spec(site, seeds=["1"], explored=no_2),
                                 "save": [{"kind": "files"}]})
        assert set(hits_by_id(site)) == own_a
        b, _ = await run(stack, {"ids": id_spec(site, seeds=["1"], explored=no_3),
                                 "save": [{"kind": "files"}], "forceCrawl": True})
        assert hits_by_id(site) == Counter(own_a) + Counter(own_b)
        for job, own in ((a, own_a), (b, own_b)):
            pages = {f"{site.base}/item?id={i}" for i in own}
            assert {y["page"] for y in await items(stack, job, "id")} == pages
            assert {y["page"] for y in await items(stack, job, "body")} == pages
            assert set(await stack.result(job)) <= pages
            # Its directory holds exactly its own pages' bodies.
            assert saved_files(outputs, job) == Counter(
                site.served[f"/item?id={i}"] for i in own)
