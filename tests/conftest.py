"""Fixtures: real PostgreSQL and NATS JetStream (from the pip-installed binaries) on free loopback
ports for the whole session; each test gets a fresh database cloned from a migrated template and
its own queue subjects. A server that cannot start fails the run; nothing is skipped."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from harvester_ops import migrate
from harvester_ops.embedded import EmbeddedNats, EmbeddedPostgres
from shared.config import Settings

TEMPLATE = "harvester_template"
_counter = itertools.count(1)


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="harvester-test-"))
    path.chmod(0o755)  # the PostgreSQL system user must reach its data directory
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(workdir: Path) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(workdir / "pg", fsync=False)
    pg.start()
    try:
        import asyncio

        async def make_template() -> None:
            conn = await asyncpg.connect(pg.dsn)
            await conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
            await conn.close()

        asyncio.run(make_template())
        migrate.upgrade(pg.dsn_for(TEMPLATE))
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def nats_server(workdir: Path) -> Iterator[EmbeddedNats]:
    with EmbeddedNats(workdir / "nats") as server:
        yield server


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A NATS server of the test's own, for a test that restarts it, empties its store or counts
    every stream's messages (request it before ``tiers``: it stops after them)."""
    with EmbeddedNats(tmp_path / "nats") as server:
        yield server


@pytest.fixture
async def database_url(postgres: EmbeddedPostgres) -> AsyncIterator[str]:
    name = f"t{next(_counter)}"
    conn = await asyncpg.connect(postgres.dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
    finally:
        await conn.close()
    yield postgres.dsn_for(name)


@pytest.fixture
def settings(database_url: str, nats_server: EmbeddedNats) -> Settings:
    n = database_url.rsplit("/", 1)[1]
    return Settings(database_url=database_url, nats_url=nats_server.url,
                    url_topic=f"{n}.url", work_topic=f"{n}.work", task_topic=f"{n}.task",
                    http_addr="127.0.0.1:0",
                    batch_wait=0.005, concurrency=16, connect_timeout=2, read_timeout=5,
                    ack_wait=30, shutdown_timeout=5, retries=2, retry_base=0.05,
                    feed_interval=0.005, host_concurrency=16, host_delay=0.0, robots=False,
                    host_backoff_base=0.05,
                    # every test site is on loopback (127.0.0.1/2): the SSRF guard allows it
                    allow_networks=("127.0.0.0/8",))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()
