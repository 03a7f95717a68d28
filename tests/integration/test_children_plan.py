"""The statement reading a batch's children (``shared/db/visits.py`` ``_LINKS_SQL`` and
``_CHILDREN_SQL``, issue 15): each parent's links are found by a probe of the job's
``job_page``, never by reading the job's pages so far (as a merge join did, at every batch:
cost growing with the job)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from shared.db import jobs, visits

PAGES = 5_000
PARENTS = 20


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from nodes(child)


@pytest.mark.parametrize("follow", ["html", "rules"])
async def test_children_probe_job_page_per_parent(db: asyncpg.Connection, follow: str) -> None:
    async with db.transaction():
        job, _ = await jobs.create_job(db, ["http://plan.example/"], 5, False)
        ids = [r["id"] for r in await db.fetch("""
            INSERT INTO url (url, mime)
            SELECT 'http://plan.example/p' || g, 'text/html' FROM generate_series(1, $1) g
            RETURNING id""", PAGES)]
        await db.execute("""
            INSERT INTO url_links (url_id, version, n, links)
            SELECT u.id, u.version, 1, ARRAY[$2::bigint] FROM url u WHERE u.id = ANY($1::bigint[])""",
            ids, ids[0])
        await db.execute("""
            INSERT INTO job_page (job_id, url_id, version)
            SELECT $1, u.id, u.version FROM url u WHERE u.id = ANY($2::bigint[])""", job, ids)
        await db.execute("INSERT INTO job_visit (job_id, url_id, level) "
                         "SELECT $1, unnest($2::bigint[]), 1", job, ids)
    await db.execute("ANALYZE job_page, url_links, job_visit")
    parents = [visits.Pending(job, u, ids[0], 1, 5, False, follow=follow)
               for u in ids[-PARENTS:]]
    sql, args = visits._children(parents)
    # a worker's statement runs on a generic plan after five runs: that is the one to check
    await db.execute("SET plan_cache_mode = force_generic_plan")
    try:
        (plan,) = json.loads(await db.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args))
    finally:
        await db.execute("RESET plan_cache_mode")
    scans = [n for n in nodes(plan["Plan"]) if n.get("Relation Name", "").startswith("job_page")]
    assert scans, plan
    for n in scans:
        assert n["Actual Rows"] <= 1 and n["Actual Loops"] <= PARENTS, (
            n["Node Type"], n["Actual Rows"], n["Actual Loops"])
