"""0-weight ``next`` edges (issue 13, plan §2.2) on a real PostgreSQL: a link yield with
``"rel": "next"`` (a list's next page, the GitHub source's pagination) keeps its parent's level,
so every page of a list is on one level and a job's last level still pages through its lists;
plain links go a level down as before, never to ``max_level``; a next edge that is a shorter
path lowers a visited page and expands it again (the 0/1 BFS's shortest levels)."""

from __future__ import annotations

import asyncpg

from shared.db import visits
from shared.model import Yield
from tests.integration.test_id_frontier import H, follow_job, ids, process, record


def nxt(url: str) -> Yield:
    return Yield("link", {"url": url, "rel": "next"})


def link(url: str) -> Yield:
    return Yield("link", {"url": url})


async def levels(db: asyncpg.Connection, job: int) -> dict[str, int]:
    return dict(await db.fetch("""
        SELECT u.url, v.level FROM job_visit v JOIN url u ON u.id = v.url_id
        WHERE v.job_id = $1""", job))


async def test_a_next_page_stays_on_its_parents_level(db: asyncpg.Connection) -> None:
    p = f"{H}/list?page=1"
    await record(db, p, yields=(link(f"{H}/repo"), nxt(f"{H}/list?page=2")))
    await record(db, f"{H}/list?page=2", yields=(link(f"{H}/repo2"), nxt(f"{H}/list?page=3")))
    job = await follow_job(db, p, "rules", max_level=3)
    assert await process(db, job, p) == [f"{H}/list?page=2", f"{H}/repo"]
    assert await process(db, job, f"{H}/list?page=2") == [f"{H}/list?page=3", f"{H}/repo2"]
    assert await levels(db, job) == {p: 0, f"{H}/list?page=2": 0, f"{H}/list?page=3": 0,
                                     f"{H}/repo": 1, f"{H}/repo2": 1}


async def test_the_last_level_pages_through_its_list_and_queues_nothing_below(
        db: asyncpg.Connection) -> None:
    """max_level 1 (GET /users: every page on level 0): before next edges a level-0 page of
    such a job queued nothing at all."""
    p = f"{H}/users?per_page=2"
    await record(db, p, yields=(Yield("item", {"id": 1}), link(f"{H}/users/a"),
                                nxt(f"{H}/users?per_page=2&since=2")))
    job = await follow_job(db, p, "rules", max_level=1)
    assert await process(db, job, p) == [f"{H}/users?per_page=2&since=2"]
    assert await levels(db, job) == {p: 0, f"{H}/users?per_page=2&since=2": 0}
    # On the last level but one of a deeper job, the same: the next page, no plain link.
    deep = await follow_job(db, f"{H}/top", "both", max_level=2)
    await record(db, f"{H}/top", links=(f"{H}/html",),
                 yields=(link(f"{H}/mid"), nxt(f"{H}/top?page=2")))
    await record(db, f"{H}/mid", links=(f"{H}/html2",),
                 yields=(link(f"{H}/low"), nxt(f"{H}/mid?page=2")))
    assert await process(db, deep, f"{H}/top") == [f"{H}/html", f"{H}/mid", f"{H}/top?page=2"]
    assert await process(db, deep, f"{H}/mid") == [f"{H}/mid?page=2"]
    assert (await levels(db, deep))[f"{H}/mid?page=2"] == 1


async def test_next_is_a_link_relation_only(db: asyncpg.Connection) -> None:
    """An id yield with a "rel" key, or a link with another rel, is an ordinary edge."""
    p = f"{H}/q"
    await record(db, p, yields=(Yield("id", {"id": "1", "url": f"{H}/i?id=1", "rel": "next"}),
                                Yield("link", {"url": f"{H}/prev", "rel": "prev"})))
    job = await follow_job(db, p, "rules", max_level=1)
    assert await process(db, job, p) == []
    job = await follow_job(db, p, "rules", max_level=5)
    assert await process(db, job, p) == [f"{H}/i?id=1", f"{H}/prev"]
    assert set((await levels(db, job)).values()) == {0, 1}


async def test_a_next_edge_that_is_shorter_lowers_the_page_and_expands_it_again(
        db: asyncpg.Connection) -> None:
    r, r2, q = f"{H}/r", f"{H}/r?page=2", f"{H}/shared"
    await record(db, r, yields=(link(q), nxt(r2)))
    await record(db, r2, yields=(nxt(q),))
    await record(db, q, yields=(link(f"{H}/deeper"),))
    job = await follow_job(db, r, "rules", max_level=3)
    assert await process(db, job, r) == [r2, q]
    assert await process(db, job, q) == [f"{H}/deeper"]
    assert (await levels(db, job))[f"{H}/deeper"] == 2
    assert await process(db, job, r2) == [q]  # found on level 0 now: queued to expand again
    (qid,) = await ids(db, q)
    assert await db.fetchval("SELECT reexpand FROM job_pending WHERE job_id = $1 AND url_id = $2",
                             job, qid)
    await process(db, job, q)
    assert await levels(db, job) == {r: 0, r2: 0, q: 0, f"{H}/deeper": 1}


async def test_sitemap_urls_are_not_queued_from_the_last_level(db: asyncpg.Connection) -> None:
    """``extra`` (a job URL's sitemaps) is a level down: a level-0 page of a max_level 1 job
    following rules (passed for its next pages) queues none."""
    p = f"{H}/root"
    await record(db, p, yields=(nxt(f"{H}/root?page=2"),))
    job = await follow_job(db, p, "rules", max_level=1)
    (pid,) = await ids(db, p)
    (sm,) = await ids(db, f"{H}/from-sitemap")
    async with db.transaction():
        locked = await visits.lock_pending(db, [(job, pid)])
        queued = await visits.complete(db, locked, {(job, pid): "fetched"},
                                       extra={(job, pid): [sm]})
    assert [u for _, u in queued] == (await ids(db, f"{H}/root?page=2"))
