"""Per-version results per rule set on a real PostgreSQL (shared/db: jobs, pages, visits): a job
stores its fetcher kind and rule set; each answer but a 304 is a new version of the page; the
yields of a rule set are kept per page and version, a job is answered from the store only where
its rule set extracted the page's current version, and completion copies the page's yields
into the job's."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from shared.config import Settings
from shared.db import jobs, pages, visits
from shared.jobspec import ruleset_of, validate_spec
from shared.model import Extraction, FetchedPage, Yield
from tests.results import JOB_RESULT, URL_LINK

H = "http://h.example"
SETTINGS = Settings(extractor_kinds=("test-title",), fetcher_kinds=("http", "static"))
TITLE = [{"kind": "test-title"}]
H1 = [{"kind": "test-title", "tag": "h1"}]
HOUR = 3600.0


async def new_job(db: asyncpg.Connection, *urls: str, force_crawl: bool = False,
                  **keys: Any) -> int:
    spec = validate_spec(json.dumps({"urls": list(urls), "forceCrawl": force_crawl, **keys}),
                         SETTINGS)
    async with db.transaction():
        job_id, _ = await jobs.create_job(db, spec.urls, spec.max_level, spec.force_crawl,
                                          spec.scope.as_scope(), spec.scope.max_pages,
                                          spec.sitemaps, spec.stored())
    return job_id


async def url_id(db: asyncpg.Connection, url: str) -> int:
    return (await pages.upsert_urls(db, {url: ""}))[url]


async def test_a_job_stores_its_fetcher_and_ruleset(db: asyncpg.Connection) -> None:
    plain = await new_job(db, f"{H}/")
    static = await new_job(db, f"{H}/", fetcher="static", extract=TITLE)
    rows = {r["id"]: (r["fetcher"], r["ruleset"])
            for r in await db.fetch("SELECT id, fetcher, ruleset FROM job")}
    ruleset = validate_spec(json.dumps({"urls": [H], "extract": TITLE}), SETTINGS).ruleset()
    assert rows == {plain: ("http", 0), static: ("static", ruleset)} and ruleset != 0
    # A job made from its columns alone (no spec given) is an http job of rule set 0.
    async with db.transaction():
        bare, _ = await jobs.create_job(db, [f"{H}/"], 2, False)
    assert await db.fetchrow("SELECT fetcher, ruleset FROM job WHERE id = $1", bare) == ("http", 0)


async def test_load_specs_reads_the_stored_specs(db: asyncpg.Connection) -> None:
    plain = await new_job(db, f"{H}/")
    static = await new_job(db, f"{H}/", fetcher="static", extract=H1)
    specs = await jobs.load_specs(db, [plain, static, static + 1])
    assert specs == {
        plain: {"depth": 2, "forceCrawl": False, "sitemaps": False,
                "scope": {"scope": "any", "allow": [], "deny": [], "maxPages": None}},
        static: {"depth": 2, "forceCrawl": False, "sitemaps": False,
                 "scope": {"scope": "any", "allow": [], "deny": [], "maxPages": None},
                 "fetcher": "static", "extract": H1}}
    assert ruleset_of(specs[static]) == await db.fetchval(
        "SELECT ruleset FROM job WHERE id = $1", static)


async def test_plan_gives_each_visit_its_jobs_fetcher_and_ruleset(db: asyncpg.Connection) -> None:
    plain = await new_job(db, f"{H}/")
    static = await new_job(db, f"{H}/", fetcher="static", extract=TITLE)
    page = await url_id(db, f"{H}/")
    planned = {p.job_id: (p.fetcher, p.ruleset)
               for p in await visits.plan(db, [(plain, page), (static, page)], HOUR)}
    ruleset = await db.fetchval("SELECT ruleset FROM job WHERE id = $1", static)
    assert planned == {plain: ("http", 0), static: ("static", ruleset)}


async def ruleset_of_job(db: asyncpg.Connection, job: int) -> int:
    return int(await db.fetchval("SELECT ruleset FROM job WHERE id = $1", job))


def page(url_id: int, *, etag: str | None = None, not_modified: bool = False,
         status: int = 200, fetcher: str = "http") -> FetchedPage:
    return FetchedPage(url_id, 304 if not_modified else status, "text/html",
                       f"HTTP {status}" if status >= 400 else None, cacheable=status < 400,
                       etag=etag, not_modified=not_modified, fetcher=fetcher)


def titles(*texts: str) -> tuple[Yield, ...]:
    return tuple(Yield("item", {"title": t}) for t in texts)


async def record(db: asyncpg.Connection, *fetches: tuple[FetchedPage, Extraction]) -> None:
    async with db.transaction():
        await pages.record_fetches(db, list(fetches))


async def version(db: asyncpg.Connection, url: int) -> int:
    return int(await db.fetchval("SELECT version FROM url WHERE id = $1", url))


async def stored_yields(db: asyncpg.Connection, url: int,
                        ruleset: int) -> list[tuple[str, int, dict[str, Any]]]:
    return [(r["kind"], r["seq"], json.loads(r["value"])) for r in await db.fetch(
        "SELECT kind, seq, value::text AS value FROM url_yield WHERE url_id = $1 AND ruleset = $2 "
        "ORDER BY kind, seq", url, ruleset)]


async def extracted(db: asyncpg.Connection, url: int) -> dict[int, int]:
    """The page's extractions: rule set -> version."""
    return dict(await db.fetch(
        "SELECT ruleset, version FROM url_extraction WHERE url_id = $1", url))


async def test_each_answer_but_a_304_bumps_the_version_a_failure_too(
        db: asyncpg.Connection) -> None:
    p = await url_id(db, f"{H}/")
    assert await version(db, p) == 0
    await record(db, (page(p, etag='"1"'), Extraction(((f"{H}/a", "text/html"),))))
    assert await version(db, p) == 1
    await record(db, (page(p, etag='"2"'), Extraction()))
    assert await version(db, p) == 2
    await record(db, (page(p, not_modified=True), Extraction()))
    assert await version(db, p) == 2  # a 304 confirms the stored version
    await record(db, (page(p, status=500), Extraction()))
    assert await version(db, p) == 3  # an answer with a body, if not a good one
    no_answer = FetchedPage(p, None, None, "connection refused", cacheable=False)
    await record(db, (no_answer, Extraction()))
    assert await version(db, p) == 4  # no answer at all: the page's links are now none
    await record(db, (page(p), Extraction()))
    # One batch fetching the page for two jobs stores one answer: one new version.
    await record(db, (page(p), Extraction()), (page(p), Extraction()))
    assert await version(db, p) == 6


async def test_a_rulesets_yields_are_stored_per_page_and_replaced_on_each_fetch(
        db: asyncpg.Connection) -> None:
    a, b = await url_id(db, f"{H}/a"), await url_id(db, f"{H}/b")
    r1, r2 = 11, -22
    links = ((f"{H}/x", "text/html"),)
    await record(db, (page(a), Extraction(links, titles("A", "A2") + (Yield("id", {"id": 7}),),
                                          ruleset=r1)),
                 (page(b), Extraction(links, titles("B"), ruleset=r1)))
    assert await stored_yields(db, a, r1) == [("id", 0, {"id": 7}), ("item", 0, {"title": "A"}),
                                              ("item", 1, {"title": "A2"})]
    assert await stored_yields(db, b, r1) == [("item", 0, {"title": "B"})]
    assert await extracted(db, a) == {r1: 1} and await extracted(db, b) == {r1: 1}
    # Fetched again, for two rule sets in one batch: its links once, its yields per rule set.
    await record(db, (page(a), Extraction(links, titles("new"), ruleset=r1)),
                 (page(a), Extraction(links, titles("other"), ruleset=r2)))
    assert await stored_yields(db, a, r1) == [("item", 0, {"title": "new"})]
    assert await stored_yields(db, a, r2) == [("item", 0, {"title": "other"})]
    assert await extracted(db, a) == {r1: 2, r2: 2}
    assert await db.fetchval(f"SELECT count(*) FROM {URL_LINK} WHERE refer_id = $1", a) == 1
    # A links-only fetch (rule set 0) makes a new version without touching the rule sets' rows.
    await record(db, (page(a), Extraction(links)))
    assert await extracted(db, a) == {r1: 2, r2: 2} and await version(db, a) == 3
    assert await stored_yields(db, a, r1) == [("item", 0, {"title": "new"})]
    assert await db.fetchval("SELECT count(*) FROM url_yield WHERE ruleset = 0") == 0
    # A 304 for a rule set keeps what it extracted from the version it confirms.
    await record(db, (page(b, not_modified=True), Extraction(links, (), ruleset=r1)))
    assert await stored_yields(db, b, r1) == [("item", 0, {"title": "B"})]
    assert await extracted(db, b) == {r1: 1}


async def planned(db: asyncpg.Connection, job: int, url: int) -> visits.Planned:
    (p,) = await visits.plan(db, [(job, url)], HOUR)
    return p


async def test_plan_caches_only_for_a_ruleset_that_extracted_the_current_version(
        db: asyncpg.Connection) -> None:
    title, h1, links_only = (await new_job(db, f"{H}/", extract=TITLE),
                             await new_job(db, f"{H}/", extract=H1), await new_job(db, f"{H}/"))
    p = await url_id(db, f"{H}/")
    assert not any([(await planned(db, j, p)).cached for j in (title, h1, links_only)])
    await record(db, (page(p), Extraction(ruleset=await ruleset_of_job(db, title))))
    assert (await planned(db, title, p)).cached
    assert not (await planned(db, h1, p)).cached  # another rule set never extracted it
    assert (await planned(db, links_only, p)).cached  # links are always extracted
    # A links-only fetch makes a version the extracting rule set has not seen.
    await record(db, (page(p), Extraction()))
    assert not (await planned(db, title, p)).cached
    assert (await planned(db, links_only, p)).cached
    await record(db, (page(p), Extraction(ruleset=await ruleset_of_job(db, h1))))
    assert [(await planned(db, j, p)).cached for j in (title, h1, links_only)] == [
        False, True, True]


async def test_reexpansions_and_skipped_types_stay_cached_for_any_ruleset(
        db: asyncpg.Connection) -> None:
    job = await new_job(db, f"{H}/", f"{H}/i.png", extract=TITLE)
    p, png = await url_id(db, f"{H}/"), await url_id(db, f"{H}/i.png")
    await db.execute("UPDATE url SET mime = 'image/png' WHERE id = $1", png)
    await db.execute("UPDATE job_pending SET reexpand = true WHERE url_id = $1", p)
    assert [(await planned(db, job, u)).cached for u in (p, png)] == [True, True]


async def test_no_validators_are_sent_for_a_version_the_ruleset_never_extracted(
        db: asyncpg.Connection) -> None:
    title, links_only = await new_job(db, f"{H}/", extract=TITLE), await new_job(db, f"{H}/")
    p = await url_id(db, f"{H}/")
    await record(db, (page(p, etag='"v1"'), Extraction()))
    await db.execute("UPDATE url SET crawled_on = now() - interval '2 hours', "
                     "last_modified = 'Mon, 01 Jan 2024 00:00:00 GMT' WHERE id = $1", p)
    expired = await planned(db, links_only, p)
    assert (expired.cached, expired.etag, expired.last_modified) == (
        False, '"v1"', "Mon, 01 Jan 2024 00:00:00 GMT")
    # The rule set never extracted this version: a 304 would confirm nothing it has.
    never = await planned(db, title, p)
    assert (never.cached, never.etag, never.last_modified) == (False, None, None)
    await record(db, (page(p, etag='"v2"'), Extraction(ruleset=await ruleset_of_job(db, title))))
    await db.execute("UPDATE url SET crawled_on = now() - interval '2 hours' WHERE id = $1", p)
    extracted_once = await planned(db, title, p)
    assert (extracted_once.cached, extracted_once.etag) == (False, '"v2"')


async def process(db: asyncpg.Connection, job: int, *urls: int,
                  outcome: visits.Outcome = "fetched") -> None:
    keys = [(job, u) for u in urls]
    async with db.transaction():
        locked = await visits.lock_pending(db, keys)
        await visits.complete(db, locked, {k: outcome for k in keys})


async def job_yields(db: asyncpg.Connection, job: int) -> list[tuple[str, str, int, Any]]:
    return [(y.url, y.kind, y.seq, y.value) for _, y in await jobs.job_yields(db, job)]


async def test_complete_copies_the_pages_yields_into_the_jobs(db: asyncpg.Connection) -> None:
    first = await new_job(db, f"{H}/a", f"{H}/b", extract=TITLE)
    again = await new_job(db, f"{H}/a", extract=TITLE)
    other = await new_job(db, f"{H}/a", extract=H1)
    links_only = await new_job(db, f"{H}/a")
    a, b = await url_id(db, f"{H}/a"), await url_id(db, f"{H}/b")
    ruleset, r_h1 = await ruleset_of_job(db, first), await ruleset_of_job(db, other)
    await record(db, (page(a), Extraction(yields=titles("A", "A2"), ruleset=ruleset)),
                 (page(b), Extraction(yields=(Yield("id", {"id": "b"}),), ruleset=ruleset)),
                 (page(a), Extraction(yields=titles("h1 of A"), ruleset=r_h1)))
    await process(db, first, a, b)
    await process(db, again, a, outcome="cached")
    await process(db, other, a)
    await process(db, links_only, a)
    assert await job_yields(db, first) == [
        (f"{H}/a", "item", 0, {"title": "A"}), (f"{H}/a", "item", 1, {"title": "A2"}),
        (f"{H}/b", "id", 0, {"id": "b"})]
    assert await job_yields(db, again) == (await job_yields(db, first))[:2]
    assert await job_yields(db, other) == [(f"{H}/a", "item", 0, {"title": "h1 of A"})]
    assert await job_yields(db, links_only) == []
    # The reader reads on from a key.
    (key, _), *_ = await jobs.job_yields(db, first, limit=1)
    assert [y.value for _, y in await jobs.job_yields(db, first, after=key)] == [
        {"title": "A2"}, {"id": "b"}]
    # A job's yields go with it.
    await jobs.delete_job(db, first)
    assert await job_yields(db, first) == []
    assert await job_yields(db, again) == [(f"{H}/a", "item", 0, {"title": "A"}),
                                           (f"{H}/a", "item", 1, {"title": "A2"})]


async def test_links_only_jobs_still_use_a_cache_built_by_an_extracting_job(
        db: asyncpg.Connection) -> None:
    extracting = await new_job(db, f"{H}/", extract=TITLE)
    links_only = await new_job(db, f"{H}/")
    p = await url_id(db, f"{H}/")
    await record(db, (page(p), Extraction(((f"{H}/x", "text/html"),), titles("T"),
                                          ruleset=await ruleset_of_job(db, extracting))))
    await process(db, extracting, p)
    assert (await planned(db, links_only, p)).cached
    await process(db, links_only, p, outcome="cached")
    links = f"SELECT url_id FROM {JOB_RESULT} WHERE job_id = $1 ORDER BY 1"
    assert await db.fetch(links, links_only) == await db.fetch(links, extracting) != []
    assert await job_yields(db, links_only) == []


async def test_plan_caches_only_what_the_jobs_fetcher_fetched(db: asyncpg.Connection) -> None:
    http, static = await new_job(db, f"{H}/"), await new_job(db, f"{H}/", fetcher="static")
    p = await url_id(db, f"{H}/")
    await record(db, (page(p, fetcher="static"), Extraction(((f"{H}/s", "text/html"),))))
    assert await db.fetchval("SELECT fetcher FROM url WHERE id = $1", p) == "static"
    assert [(await planned(db, j, p)).cached for j in (http, static)] == [False, True]
    # Fetched over http again (stored as NULL: old rows and http fetches alike).
    await record(db, (page(p), Extraction(((f"{H}/h", "text/html"),))))
    assert await db.fetchval("SELECT fetcher FROM url WHERE id = $1", p) is None
    assert [(await planned(db, j, p)).cached for j in (http, static)] == [True, False]
    # A 304 confirms the version its (matching) fetcher made and leaves the fetcher as it is.
    await record(db, (page(p, not_modified=True, fetcher="static"), Extraction()))
    assert await db.fetchval("SELECT fetcher FROM url WHERE id = $1", p) is None


async def test_reexpansions_and_skipped_types_stay_cached_for_any_fetcher(
        db: asyncpg.Connection) -> None:
    job = await new_job(db, f"{H}/", f"{H}/i.png", fetcher="static")
    p, png = await url_id(db, f"{H}/"), await url_id(db, f"{H}/i.png")
    await db.execute("UPDATE url SET mime = 'image/png' WHERE id = $1", png)
    await db.execute("UPDATE job_pending SET reexpand = true WHERE url_id = $1", p)
    assert [(await planned(db, job, u)).cached for u in (p, png)] == [True, True]


async def test_no_validators_are_sent_for_another_fetchers_version(db: asyncpg.Connection) -> None:
    http, static = await new_job(db, f"{H}/"), await new_job(db, f"{H}/", fetcher="static")
    p = await url_id(db, f"{H}/")
    expire = ("UPDATE url SET crawled_on = now() - interval '2 hours', "
              "last_modified = 'Mon, 01 Jan 2024 00:00:00 GMT' WHERE id = $1")
    await record(db, (page(p, etag='"s"', fetcher="static"), Extraction()))
    await db.execute(expire, p)
    got = {j: (x.cached, x.etag, x.last_modified)
           for j in (http, static) for x in [await planned(db, j, p)]}
    assert got == {http: (False, None, None),
                   static: (False, '"s"', "Mon, 01 Jan 2024 00:00:00 GMT")}
    await record(db, (page(p, etag='"h"'), Extraction()))
    await db.execute(expire, p)
    got = {j: (x.cached, x.etag, x.last_modified)
           for j in (http, static) for x in [await planned(db, j, p)]}
    assert got == {http: (False, '"h"', "Mon, 01 Jan 2024 00:00:00 GMT"),
                   static: (False, None, None)}
