"""A streaming replica for ``GET /result`` (issue 18, ``databaseReadURL``): a real PostgreSQL
primary and a hot standby made from it by ``pg_basebackup -R``. The web server reads a finished
job's result from the replica once it has replayed the primary's WAL up to where the primary
stood when the job was seen finished, and from the primary otherwise (a running job, a replica
behind, a replica down); the body is the same either way."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from harvester_ops import migrate
from harvester_ops.embedded import EmbeddedPostgres, free_port, pg_bin_dir
from shared.config import Settings
from shared.db import jobs
from shared.db.pages import upsert_urls
from shared.db.pool import open_pool
from shared.jobspec import stored_spec
from shared.scope import Scope
from web_server.app import create_app
from web_server.deps import DEPS, Deps

SITE = "http://replica.test"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedPostgres,
                                                                        EmbeddedPostgres]]:
    work = tmp_path_factory.mktemp("replica")
    work.chmod(0o755)
    primary = EmbeddedPostgres(work / "primary", fsync=False)
    primary.start()
    try:
        migrate.upgrade(primary.dsn)
        data = work / "standby"
        data.mkdir(mode=0o700)
        if primary.uid is not None:
            os.chown(data, primary.uid, primary.gid or -1)
        subprocess.run([str(pg_bin_dir() / "pg_basebackup"), "-h", "127.0.0.1",
                        "-p", str(primary.port), "-U", "postgres", "-D", str(data),
                        "-R", "-X", "stream", "-c", "fast"],
                       check=True, capture_output=True, user=primary.uid, group=primary.gid)
        standby = EmbeddedPostgres(data, fsync=False)
        standby.start()
        try:
            yield primary, standby
        finally:
            standby.stop()
    finally:
        primary.stop()


async def finished_job(conn: asyncpg.Connection, page: str, links: list[str]) -> int:
    """A job of one page whose result is ``links``, finished (as complete() leaves it)."""
    async with conn.transaction():
        job_id, (page_id,) = await jobs.create_job(
            conn, [page], 1, False, spec=stored_spec(1, False, False, Scope(), None))
        ids = await upsert_urls(conn, dict.fromkeys(links, ""))
        version = await conn.fetchval("SELECT version FROM url WHERE id = $1", page_id)
        await conn.execute("INSERT INTO url_links (url_id, version, n, links) "
                           "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                           page_id, version, len(ids), sorted(ids.values()))
        await conn.execute("INSERT INTO job_page (job_id, url_id, version) VALUES ($1, $2, $3)",
                           job_id, page_id, version)
        await conn.execute("DELETE FROM job_pending WHERE job_id = $1", job_id)
        await conn.execute("UPDATE job_url SET pending = 0, processed = 1, fetched = 1, "
                           "completed_on = now() WHERE job_id = $1", job_id)
    return job_id


@pytest.fixture
async def deps(servers: tuple[EmbeddedPostgres, EmbeddedPostgres]) -> AsyncIterator[Deps]:
    primary, standby = servers
    async with open_pool(primary.dsn, min_size=0, max_size=4) as pool, \
            open_pool(standby.dsn, min_size=0, max_size=4) as read_pool:
        yield Deps(pool, primary.dsn, read_pool=read_pool)


async def in_recovery(source: object) -> bool:
    async with source() as conn:  # type: ignore[operator]
        return bool(await conn.fetchval("SELECT pg_is_in_recovery()"))


async def test_a_finished_job_is_read_from_the_replica_once_it_has_caught_up(deps: Deps) -> None:
    async with deps.acquire() as conn:
        job_id = await finished_job(conn, f"{SITE}/a", [f"{SITE}/b", f"{SITE}/c"])
    source = await deps.result_source(job_id, wait=30)
    assert source == deps.acquire_read and await in_recovery(source)
    async with source() as conn:
        chunk = await jobs.result_chunk(conn, job_id, (0, 0), None)
    assert chunk is not None and chunk.pages == [(f"{SITE}/a", [f"{SITE}/b", f"{SITE}/c"])]


async def test_a_running_job_is_read_from_the_primary(deps: Deps) -> None:
    async with deps.acquire() as conn, conn.transaction():
        job_id, _ = await jobs.create_job(conn, [f"{SITE}/running"], 1, False,
                                          spec=stored_spec(1, False, False, Scope(), None))
    source = await deps.result_source(job_id, wait=30)
    assert source == deps.acquire and not await in_recovery(source)


async def test_a_replica_behind_or_down_leaves_the_result_to_the_primary(
        deps: Deps, servers: tuple[EmbeddedPostgres, EmbeddedPostgres]) -> None:
    _, standby = servers
    replica = await asyncpg.connect(standby.dsn)
    try:
        await replica.execute("SELECT pg_wal_replay_pause()")
        try:  # finished on the primary after the replica stopped replaying: it lacks the job
            async with deps.acquire() as conn:
                job_id = await finished_job(conn, f"{SITE}/behind", [f"{SITE}/x"])
            assert await deps.result_source(job_id, wait=0.3) == deps.acquire
        finally:
            await replica.execute("SELECT pg_wal_replay_resume()")
        assert await deps.result_source(job_id, wait=30) == deps.acquire_read
    finally:
        await replica.close()
    await asyncio.to_thread(standby.stop)
    try:
        assert await deps.result_source(job_id, wait=0.3) == deps.acquire
    finally:
        await asyncio.to_thread(standby.start)


async def test_get_result_answers_the_same_from_the_replica(
        servers: tuple[EmbeddedPostgres, EmbeddedPostgres]) -> None:
    primary, standby = servers
    conn = await asyncpg.connect(primary.dsn)
    try:
        job_id = await finished_job(conn, f"{SITE}/p", [f"{SITE}/q", f"{SITE}/r"])
    finally:
        await conn.close()
    bodies = []
    for read_url in (None, standby.dsn):
        settings = Settings(database_url=primary.dsn, database_read_url=read_url,
                            nats_url=f"nats://127.0.0.1:{free_port()}", http_addr="127.0.0.1:0")
        runner = web.AppRunner(create_app(settings))
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            if read_url is not None:  # until the replica has the job: then /result reads it
                deps = runner.app[DEPS]
                for _ in range(300):
                    if await deps.result_source(job_id, wait=0) == deps.acquire_read:
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError("the replica never caught up")
            async with aiohttp.ClientSession() as s, \
                    s.get(f"http://127.0.0.1:{port}/result/{job_id}") as r:
                assert r.status == 200
                bodies.append(await r.read())
        finally:
            await runner.cleanup()
    assert bodies[0] == bodies[1]
    assert json.loads(bodies[1]) == {f"{SITE}/p": [f"{SITE}/q", f"{SITE}/r"]}


def test_the_replicas_port_is_refused_to_fetchers() -> None:
    from shared.netguard import service_endpoints
    s = Settings(database_url="postgresql://u@127.0.0.1:5432/h",
                 database_read_url="postgresql://u@127.0.0.1:6543/h")
    _, ports = service_endpoints(s)
    assert {5432, 6543} <= ports
