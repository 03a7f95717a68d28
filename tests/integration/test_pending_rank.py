"""The writers of pending rows (shared/db/visits.py ``_add_pending``, shared/db/idsets.py
``seed_job``) on a real PostgreSQL: each row's ``host`` is its URL's politeness key and its
``rank`` the job's order (``shared.ordering.rank``): bfs by level then insertion, fifo and lifo
by insertion, priority by the job's ``priorities`` (first match) then insertion; a page reached
again by a shorter path is queued at its new level."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from shared.config import Settings
from shared.db import idsets, jobs, pages, visits
from shared.jobspec import validate_spec
from shared.model import Extraction, FetchedPage
from shared.ordering import SEQ_BITS
from shared.urls import host_key

H = "http://h.example"
G = "https://g.example:8443"


async def new_job(db: asyncpg.Connection, *urls: str, order: str = "bfs",
                  priorities: list[dict[str, Any]] | None = None) -> int:
    async with db.transaction():
        job, _ = await jobs.create_job(db, list(urls), 3, False)
        spec = {"order": order, "priorities": priorities or []}
        await db.execute("UPDATE job SET queue_order = $2, spec = spec || $3::jsonb WHERE id = $1",
                         job, order, json.dumps(spec))
    return job


async def url_id(db: asyncpg.Connection, url: str) -> int:
    return (await pages.upsert_urls(db, {url: ""}))[url]


async def fetched(db: asyncpg.Connection, url: str, *links: str) -> None:
    await pages.record_fetches(db, [(
        FetchedPage(await url_id(db, url), 200, "text/html", None, cacheable=True),
        Extraction(tuple((u, "text/html") for u in links)))])


async def process(db: asyncpg.Connection, job: int, *urls: str) -> None:
    keys = [(job, await url_id(db, u)) for u in urls]
    async with db.transaction():
        locked = await visits.lock_pending(db, keys)
        await visits.complete(db, locked, {k: "fetched" for k in keys})


async def rows(db: asyncpg.Connection, job: int) -> dict[str, tuple[str, int, bool]]:
    """Pending visits: URL -> (host, rank, re-expansion?)."""
    return {r["url"]: (r["host"], r["rank"], r["reexpand"]) for r in await db.fetch("""
        SELECT u.url, p.host, p.rank, p.reexpand FROM job_pending p
        JOIN url u ON u.id = p.url_id WHERE p.job_id = $1""", job)}


async def test_children_get_their_host_and_a_breadth_first_rank(db: asyncpg.Connection) -> None:
    job = await new_job(db, f"{H}/")
    await fetched(db, f"{H}/", f"{H}/a", f"{G}/b", "http://user:pw@u.example/c")
    await process(db, job, f"{H}/")
    got = await rows(db, job)
    assert {u: r[0] for u, r in got.items()} == {
        f"{H}/a": H, f"{G}/b": G, "http://user:pw@u.example/c": "http://u.example"}
    assert all(r[0] == host_key(u) for u, r in got.items())
    assert {r[1] >> SEQ_BITS for r in got.values()} == {1}  # level 1
    assert len({r[1] for r in got.values()}) == 3
    # The next level ranks after every row of this one, whatever their insertion order.
    await fetched(db, f"{H}/a", f"{H}/aa")
    await process(db, job, f"{H}/a")
    got = await rows(db, job)
    assert got[f"{H}/aa"][1] >> SEQ_BITS == 2
    assert got[f"{H}/aa"][1] > got[f"{G}/b"][1]


async def test_fifo_and_lifo_rank_by_insertion(db: asyncpg.Connection) -> None:
    for order in ("fifo", "lifo"):
        job = await new_job(db, f"{H}/{order}/1", f"{H}/{order}/2", order=order)
        await fetched(db, f"{H}/{order}/1", f"{H}/{order}/1a")
        await fetched(db, f"{H}/{order}/2", f"{H}/{order}/2a")
        await process(db, job, f"{H}/{order}/1")
        await process(db, job, f"{H}/{order}/2")
        got = await rows(db, job)
        first, second = got[f"{H}/{order}/1a"][1], got[f"{H}/{order}/2a"][1]
        assert (first < second) == (order == "fifo"), (order, first, second)


async def test_priority_order_ranks_by_the_first_matching_rule(db: asyncpg.Connection) -> None:
    job = await new_job(db, f"{H}/p", order="priority", priorities=[
        {"pattern": "/hot", "priority": 5}, {"pattern": "/mid", "priority": 1},
        {"pattern": "/cold", "priority": -3}])
    await fetched(db, f"{H}/p", f"{H}/hot1", f"{H}/hot2", f"{H}/x", f"{H}/cold", f"{H}/mid")
    await process(db, job, f"{H}/p")
    got = {u.rsplit("/", 1)[1]: r[1] for u, r in (await rows(db, job)).items()}
    assert {k: -(v >> SEQ_BITS) for k, v in got.items()} == {
        "hot1": 5, "hot2": 5, "mid": 1, "x": 0, "cold": -3}
    assert sorted(got, key=got.__getitem__)[:2] == ["hot1", "hot2"]  # ties: insertion order
    assert sorted(got, key=got.__getitem__)[2:] == ["mid", "x", "cold"]


async def test_a_page_reached_by_a_shorter_path_is_queued_at_its_new_level(
        db: asyncpg.Connection) -> None:
    job = await new_job(db, f"{H}/r", f"{H}/s")
    await fetched(db, f"{H}/r", f"{H}/r1")
    await fetched(db, f"{H}/r1", f"{H}/deep")
    await fetched(db, f"{H}/deep")
    await process(db, job, f"{H}/r")
    await process(db, job, f"{H}/r1")
    assert (await rows(db, job))[f"{H}/deep"][1] >> SEQ_BITS == 2
    await process(db, job, f"{H}/deep")
    await fetched(db, f"{H}/s", f"{H}/deep")
    await process(db, job, f"{H}/s")  # level 0: deep is now on level 1, expanded again
    host, rank, reexpand = (await rows(db, job))[f"{H}/deep"]
    assert (host, rank >> SEQ_BITS, reexpand) == (H, 1, True)


async def test_known_ids_are_seeded_with_host_and_rank(db: asyncpg.Connection,
                                                       settings: Settings) -> None:
    async with db.transaction():
        s = await idsets.create_set(db)
        await idsets.add_members(db, s, ["1", "2", "3"])
        await idsets.finish_set(db, s, 3)
    spec = validate_spec({"ids": {"regex": r"id=(\d+)", "urlFormat": f"{G}/item?id={{}}",
                                  "known": str(s)}}, settings)
    async with db.transaction():
        job, _ = await jobs.create_job(db, list(spec.urls), spec.max_level, False,
                                       spec=spec.stored())
    got = await rows(db, job)
    assert set(got) == {f"{G}/item?id={i}" for i in (1, 2, 3)}
    assert {r[0] for r in got.values()} == {G}
    ranks = [r[1] for r in got.values()]
    assert len(set(ranks)) == 3 and all(r > 0 and r >> SEQ_BITS == 0 for r in ranks)
