"""Per-version results per rule set on a real PostgreSQL (shared/db: jobs, pages, visits): a job
stores its fetcher kind and rule set; each fetch with a body is a new version of the page; the
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
