"""Id crawls and follow rules in the frontier, on a real PostgreSQL (shared/db: idsets, jobs,
pages, visits, bodies): id sets uploaded in chunks and seeded into a job (explored first: never
queued, even when found again; known queued once), the children of follow modes ``rules`` and
``both`` read from the stored yields' targets, the job's yields by kind, body refs and the
``db`` output's bodies."""

from __future__ import annotations

import hashlib
import json

import asyncpg

from shared.db import bodies, idsets, jobs, pages

H = "http://h.example"


async def url_id(db: asyncpg.Connection, url: str) -> int:
    return (await pages.upsert_urls(db, {url: ""}))[url]


async def test_an_id_set_is_usable_once_its_upload_is_finished(db: asyncpg.Connection) -> None:
    async with db.transaction():
        s = await idsets.create_set(db)
        await idsets.add_members(db, s, ["a", "b"])
        await idsets.add_members(db, s, [])
        await idsets.add_members(db, s, ["b", "c"])
        assert not await idsets.usable(db, s)
        await idsets.finish_set(db, s, 4)
    assert await idsets.usable(db, s)
    assert await db.fetchrow("SELECT count, complete FROM id_set WHERE id = $1", s) == (4, True)
    assert sorted(r["ident"] for r in await db.fetch(
        "SELECT ident FROM id_set_member WHERE set_id = $1", s)) == ["a", "b", "b", "c"]
    other = await idsets.create_set(db)
    assert not await idsets.usable(db, other)
    await db.execute("DELETE FROM id_set WHERE id = $1", other)
    assert not await idsets.usable(db, other)


async def test_job_yields_of_one_kind_and_body_refs(db: asyncpg.Connection) -> None:
    a, b = await url_id(db, f"{H}/a"), await url_id(db, f"{H}/b")
    ref = {"output": "files", "file": "job-1/files/a", "offset": 0, "length": 3}
    rows = [(7, a, "item", 0, {"t": 1}), (7, a, "item", 1, {"t": 2}), (7, a, "body", 0, ref),
            (7, b, "item", 0, {"t": 3}), (7, b, "link", 0, {"url": f"{H}/a"}),
            (8, a, "body", 0, {**ref, "file": "job-8/files/a"})]
    await db.executemany(
        "INSERT INTO job_yield (job_id, url_id, kind, seq, value) VALUES ($1, $2, $3, $4, $5)",
        [(*r[:4], json.dumps(r[4])) for r in rows])
    every = await jobs.job_yields(db, 7)
    assert [(y.url, y.kind, y.seq) for _, y in every] == [
        (f"{H}/a", "body", 0), (f"{H}/a", "item", 0), (f"{H}/a", "item", 1),
        (f"{H}/b", "item", 0), (f"{H}/b", "link", 0)]
    items = await jobs.job_yields(db, 7, kind="item")
    assert [(y.url, y.seq, y.value) for _, y in items] == [
        (f"{H}/a", 0, {"t": 1}), (f"{H}/a", 1, {"t": 2}), (f"{H}/b", 0, {"t": 3})]
    first = await jobs.job_yields(db, 7, kind="item", limit=2)
    rest = await jobs.job_yields(db, 7, after=first[-1][0], kind="item")
    assert [y for _, y in first + rest] == [y for _, y in items]
    assert [y.value for _, y in await jobs.job_yields(db, 7, kind="link")] == [{"url": f"{H}/a"}]
    assert await jobs.job_yields(db, 7, kind="id") == []
    assert await jobs.body_ref(db, 7, f"{H}/a") == ref
    assert await jobs.body_ref(db, 8, f"{H}/a") == {**ref, "file": "job-8/files/a"}
    assert await jobs.body_ref(db, 7, f"{H}/b") is None
    assert await jobs.body_ref(db, 7, f"{H}/nowhere") is None


async def test_bodies_are_stored_once_per_digest(db: asyncpg.Connection) -> None:
    data = b"\x00body\xff"
    digest = hashlib.sha256(data).digest()
    assert await bodies.get_body(db, digest) is None
    await bodies.put_body(db, digest, data)
    await bodies.put_body(db, digest, data)
    assert await bodies.get_body(db, digest) == data
    assert await db.fetchval("SELECT count(*) FROM body") == 1
