"""Alembic revisions on a real PostgreSQL: each revision's downgrade restores exactly the schema
before it and its upgrade applies again exactly; a full downgrade leaves nothing behind but
Alembic's own table. Works for whatever revisions ``migrations/versions`` holds (linear)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest
from alembic.script import ScriptDirectory

from harvester_ops import migrate
from shared.config import Settings
from shared.db import jobs
from shared.jobspec import stored_spec, validate_spec
from shared.scope import Scope

# The tables the code relies on (later revisions may add more).
TABLES = {"url", "url_links", "job", "job_url", "job_visit", "job_pending", "job_page",
          "job_result", "host", "job_failure", "task", "task_partial", "api_token"}
ALEMBIC = "alembic_version"

USER_SCHEMA = ("n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') "
               "AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'")

# Every kind of schema object a migration can create, with what defines it. Keys name the
# object (the table it belongs to second, where it has one); values are its definition.
SNAPSHOT_QUERIES = {
    "schema": f"""
        SELECT n.nspname, '', '' FROM pg_namespace n WHERE {USER_SCHEMA} AND n.nspname <> 'public'""",
    "extension": """
        SELECT extname, '', extversion FROM pg_extension WHERE extname <> 'plpgsql'""",
    "relation": f"""
        SELECT n.nspname || '.' || c.relname, c.relname,
               concat_ws(' | ', c.relkind, c.relpersistence, c.reloptions::text,
                         c.relrowsecurity, obj_description(c.oid, 'pg_class'),
                         CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {USER_SCHEMA} AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')""",
    "column": f"""
        SELECT n.nspname || '.' || c.relname || '.' || a.attname, c.relname,
               concat_ws(' | ', format_type(a.atttypid, a.atttypmod), a.attnotnull,
                         pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
                         a.attstattarget, a.attcollation::regcollation,
                         col_description(c.oid, a.attnum))
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE {USER_SCHEMA} AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
          AND a.attnum > 0 AND NOT a.attisdropped""",
    "index": f"""
        SELECT n.nspname || '.' || i.relname, t.relname, pg_get_indexdef(i.oid)
        FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace n ON n.oid = i.relnamespace
        WHERE {USER_SCHEMA}""",
    "constraint": f"""
        SELECT n.nspname || '.' || coalesce(c.relname, t.typname) || '.' || k.conname,
               coalesce(c.relname, ''), pg_get_constraintdef(k.oid)
        FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace
        LEFT JOIN pg_class c ON c.oid = k.conrelid LEFT JOIN pg_type t ON t.oid = k.contypid
        WHERE {USER_SCHEMA}""",
    "sequence": f"""
        SELECT n.nspname || '.' || c.relname, c.relname,
               concat_ws(' | ', format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,
                         s.seqmin, s.seqmax, s.seqcache, s.seqcycle)
        FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {USER_SCHEMA}""",
    "function": f"""
        SELECT p.oid::regprocedure::text, '',
               CASE WHEN p.prokind IN ('f', 'p') THEN pg_get_functiondef(p.oid)
                    ELSE p.prokind::text END
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {USER_SCHEMA}""",
    # Standalone types (enums, domains, ranges, composites): not tables' row types or arrays.
    "type": f"""
        SELECT n.nspname || '.' || t.typname, '',
               concat_ws(' | ', t.typtype, format_type(t.typbasetype, t.typtypmod),
                         (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                          FROM pg_enum e WHERE e.enumtypid = t.oid))
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        LEFT JOIN pg_class c ON c.oid = t.typrelid
        WHERE {USER_SCHEMA} AND (t.typrelid = 0 OR c.relkind = 'c')
          AND NOT (t.typcategory = 'A' AND t.typelem <> 0)""",
    "trigger": f"""
        SELECT n.nspname || '.' || c.relname || '.' || g.tgname, c.relname,
               pg_get_triggerdef(g.oid)
        FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {USER_SCHEMA} AND NOT g.tgisinternal""",
    "policy": f"""
        SELECT n.nspname || '.' || c.relname || '.' || p.polname, c.relname,
               concat_ws(' | ', p.polcmd, p.polpermissive, pg_get_expr(p.polqual, p.polrelid),
                         pg_get_expr(p.polwithcheck, p.polrelid))
        FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {USER_SCHEMA}""",
    "statistics": f"""
        SELECT n.nspname || '.' || s.stxname, c.relname, pg_get_statisticsobjdef(s.oid)
        FROM pg_statistic_ext s JOIN pg_class c ON c.oid = s.stxrelid
        JOIN pg_namespace n ON n.oid = s.stxnamespace WHERE {USER_SCHEMA}""",
}

Snapshot = dict[tuple[str, str], tuple[str, str]]  # (kind, name) -> (table, definition)


async def snapshot(dsn: str) -> Snapshot:
    """Every schema object of the database, Alembic's own table and what belongs to it aside."""
    conn = await asyncpg.connect(dsn)
    try:
        snap: Snapshot = {}
        for kind, sql in SNAPSHOT_QUERIES.items():
            for name, table, definition in await conn.fetch(sql):
                if table != ALEMBIC:
                    snap[(kind, name)] = (table, str(definition))
        return snap
    finally:
        await conn.close()


def differences(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    return {k: v for k, v in {
        "missing": sorted(before.keys() - after.keys()),
        "left behind": sorted(after.keys() - before.keys()),
        "changed": {k: (before[k], after[k]) for k in before.keys() & after.keys()
                    if before[k] != after[k]},
    }.items() if v}


def revisions(dsn: str) -> list[tuple[str, str]]:
    """(revision, the revision below it or "base"), from the first to the head."""
    script = ScriptDirectory.from_config(migrate.alembic_config(dsn))
    assert len(script.get_heads()) == 1, f"more than one head: {script.get_heads()}"
    out = []
    for rev in script.walk_revisions():  # head first
        down = rev.down_revision
        assert down is None or isinstance(down, str), f"{rev.revision} merges branches"
        out.append((rev.revision, down or "base"))
    return out[::-1]


async def run(op: Any, dsn: str, target: str) -> None:
    await asyncio.to_thread(op, dsn, target)


async def test_every_revision_downgrades_and_upgrades_cleanly(scratch_dsn: str) -> None:
    steps = revisions(scratch_dsn)
    assert steps, "no revisions found"
    empty = before = await snapshot(scratch_dsn)
    assert before == {}, "the scratch database is not empty"
    for revision, down in steps:
        await run(migrate.upgrade, scratch_dsn, revision)
        applied = await snapshot(scratch_dsn)
        await run(migrate.downgrade, scratch_dsn, down)
        diff = differences(before, await snapshot(scratch_dsn))
        assert not diff, f"downgrade of {revision} to {down}: {diff}"
        await run(migrate.upgrade, scratch_dsn, revision)
        diff = differences(applied, await snapshot(scratch_dsn))
        assert not diff, f"{revision} applied again: {diff}"
        before = applied
    head = before
    assert TABLES <= {name.split(".", 1)[1] for kind, name in head if kind == "relation"}

    await run(migrate.downgrade, scratch_dsn, "base")
    left = await snapshot(scratch_dsn)
    assert left == empty, f"a full downgrade left behind: {differences(empty, left)}"
    conn = await asyncpg.connect(scratch_dsn)
    try:
        assert await conn.fetchval(f"SELECT count(*) FROM {ALEMBIC}") == 0
    finally:
        await conn.close()

    await run(migrate.upgrade, scratch_dsn, "head")
    diff = differences(head, await snapshot(scratch_dsn))
    assert not diff, f"head applied again after a full downgrade: {diff}"


async def test_0011_gives_old_jobs_the_spec_of_their_columns(scratch_dsn: str) -> None:
    await run(migrate.upgrade, scratch_dsn, "0010")
    conn = await asyncpg.connect(scratch_dsn)
    try:
        await conn.execute("""
            INSERT INTO job (max_level, force_crawl, scope, allow, deny, max_pages, sitemaps, visits)
            VALUES (3, true, 'host', $1, $2, 50, true, 1),
                   (0, false, 'any', '{}', '{}', NULL, false, NULL)""",
            ["/docs/", "^https?:"], ["\\.pdf$"])
        await run(migrate.upgrade, scratch_dsn, "0011")
        specs = [json.loads(r["spec"])
                 for r in await conn.fetch("SELECT spec::text AS spec FROM job ORDER BY id")]
        assert specs == [
            stored_spec(3, True, True, Scope("host", ("/docs/", "^https?:"), ("\\.pdf$",)), 50),
            stored_spec(0, False, False, Scope(), None)]
        # What a job created now stores for the same request.
        assert specs[0] == validate_spec(json.dumps({
            "urls": ["http://a.example/"], "depth": 3, "forceCrawl": True, "sitemaps": True,
            "scope": {"scope": "host", "allow": ["/docs/", "^https?:"], "deny": ["\\.pdf$"],
                      "maxPages": 50}}), Settings()).stored()
    finally:
        await conn.close()


async def test_0013_gives_old_jobs_and_pages_defaults_without_a_rewrite(scratch_dsn: str) -> None:
    await run(migrate.upgrade, scratch_dsn, "0012")
    conn = await asyncpg.connect(scratch_dsn)
    try:
        await conn.execute("INSERT INTO job (max_level, force_crawl) VALUES (2, false)")
        await conn.execute("INSERT INTO url (url, mime) VALUES ('http://a.example/', 'text/html')")
        files = "SELECT relname, relfilenode FROM pg_class WHERE relname IN ('job', 'url')"
        before = sorted(await conn.fetch(files))
        await run(migrate.upgrade, scratch_dsn, "0013")
        assert sorted(await conn.fetch(files)) == before  # constant defaults: no table rewrite
        assert await conn.fetchrow("SELECT fetcher, ruleset FROM job") == ("http", 0)
        assert await conn.fetchval("SELECT version FROM url") == 0
        for table in ("url_extraction", "url_yield", "job_yield"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0
    finally:
        await conn.close()


async def test_0014_leaves_old_pages_fetched_over_http_without_a_rewrite(
        scratch_dsn: str) -> None:
    await run(migrate.upgrade, scratch_dsn, "0013")
    conn = await asyncpg.connect(scratch_dsn)
    try:
        await conn.execute("INSERT INTO url (url, mime) VALUES ('http://a.example/', 'text/html')")
        files = "SELECT relfilenode FROM pg_class WHERE relname = 'url'"
        before = await conn.fetchval(files)
        await run(migrate.upgrade, scratch_dsn, "0014")
        assert await conn.fetchval(files) == before  # a column without default: no rewrite
        assert await conn.fetchval("SELECT fetcher FROM url") is None  # NULL: http
        await run(migrate.downgrade, scratch_dsn, "0013")
        assert not await conn.fetchval(
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_name = 'url' AND column_name = 'fetcher'")
        await run(migrate.upgrade, scratch_dsn, "0014")
        assert await conn.fetchval("SELECT fetcher FROM url") is None
    finally:
        await conn.close()


async def test_0015_gives_old_jobs_the_html_follow_mode_without_a_rewrite(
        scratch_dsn: str) -> None:
    await run(migrate.upgrade, scratch_dsn, "0014")
    conn = await asyncpg.connect(scratch_dsn)
    try:
        await conn.execute("INSERT INTO job (max_level, force_crawl) VALUES (2, false)")
        await conn.execute("""INSERT INTO url_yield (url_id, ruleset, kind, seq, value)
                              VALUES (1, 7, 'link', 0, '{"url": "http://a.example/"}')""")
        files = "SELECT relname, relfilenode FROM pg_class WHERE relname IN ('job', 'url_yield')"
        before = sorted(await conn.fetch(files))
        await run(migrate.upgrade, scratch_dsn, "0015")
        assert sorted(await conn.fetch(files)) == before  # constant default, NULL: no rewrite
        assert await conn.fetchval("SELECT follow FROM job") == "html"
        assert await conn.fetchval("SELECT target FROM url_yield") is None
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE job SET follow = 'everything'")
        for table in ("id_set", "id_set_member", "body"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0
        await run(migrate.downgrade, scratch_dsn, "0014")
        assert not await conn.fetchval(
            "SELECT count(*) FROM information_schema.columns "
            "WHERE (table_name, column_name) IN (('job', 'follow'), ('url_yield', 'target'))")
        assert not await conn.fetchval(
            "SELECT count(*) FROM pg_class WHERE relname IN "
            "('id_set', 'id_set_member', 'body', 'job_yield_kind')")
        await run(migrate.upgrade, scratch_dsn, "0015")
        assert await conn.fetchval("SELECT follow FROM job") == "html"
    finally:
        await conn.close()


async def test_0016_gives_old_jobs_the_running_state_and_rebuilds_the_feeders_index(
        scratch_dsn: str) -> None:
    await run(migrate.upgrade, scratch_dsn, "0015")
    conn = await asyncpg.connect(scratch_dsn)
    index = "SELECT pg_get_indexdef('job_pending_due'::regclass)"
    try:
        await conn.execute("INSERT INTO job (max_level, force_crawl) VALUES (2, false)")
        await conn.execute("INSERT INTO job_pending (job_id, url_id, origin_id) VALUES (1, 1, 1)")
        files = "SELECT relname, relfilenode FROM pg_class WHERE relname IN ('job', 'job_pending')"
        before = sorted(await conn.fetch(files))
        await run(migrate.upgrade, scratch_dsn, "0016")
        assert sorted(await conn.fetch(files)) == before  # constant defaults: no rewrite
        assert await conn.fetchrow("SELECT state, state_on, deleted_on FROM job") == (
            "running", None, None)
        assert await conn.fetchval("SELECT held FROM job_pending") is False
        assert "NOT held" in await conn.fetchval(index)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE job SET state = 'completed'")
        await run(migrate.downgrade, scratch_dsn, "0015")
        assert "held" not in await conn.fetchval(index)
        assert not await conn.fetchval("SELECT count(*) FROM pg_class WHERE relname IN "
                                       "('job_webhook', 'job_state_id', 'job_url_open')")
        await run(migrate.upgrade, scratch_dsn, "0016")
        assert await conn.fetchval("SELECT state FROM job") == "running"
    finally:
        await conn.close()


async def test_0017_adds_the_task_tables_and_a_healthy_worker_column(scratch_dsn: str) -> None:
    await run(migrate.upgrade, scratch_dsn, "0016")
    conn = await asyncpg.connect(scratch_dsn)
    try:
        await conn.execute("INSERT INTO worker_process (id, kinds, hostname, pid, version) "
                           "VALUES (gen_random_uuid(), '{http}', 'h', 1, 'v')")
        files = "SELECT relfilenode FROM pg_class WHERE relname = 'worker_process'"
        before = await conn.fetchval(files)
        await run(migrate.upgrade, scratch_dsn, "0017")
        assert await conn.fetchval(files) == before  # a nullable column: no rewrite
        assert await conn.fetchval("SELECT health FROM worker_process") is None  # healthy
        root = await conn.fetchval("INSERT INTO task (name, kind, root_id) VALUES ('a', 'http', 0) "
                                   "RETURNING id")
        await conn.execute("UPDATE task SET root_id = id")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE task SET state = 'lost'")
        await conn.execute("INSERT INTO task (name, kind, root_id, parent_id, idem_key) "
                           "VALUES ('a', 'http', $1, $1, 'k')", root)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO task (name, kind, root_id, idem_key) "
                               "VALUES ('a', 'http', 1, 'k')")
        await conn.execute("INSERT INTO task_partial (task_id, seq, root_id, value) "
                           "VALUES ($1, 1, $1, '1')", root)
        await conn.execute("DELETE FROM task WHERE id = $1", root)  # its tree goes with it
        assert await conn.fetchval("SELECT count(*) FROM task") == 0
        assert await conn.fetchval("SELECT count(*) FROM task_partial") == 0
        await run(migrate.downgrade, scratch_dsn, "0016")
        assert not await conn.fetchval(
            "SELECT count(*) FROM pg_class WHERE relname IN ('task', 'task_partial')")
        assert not await conn.fetchval(
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_name = 'worker_process' AND column_name = 'health'")
        await run(migrate.upgrade, scratch_dsn, "0017")
    finally:
        await conn.close()


async def test_0018_adds_the_api_token_table_and_worker_stats(scratch_dsn: str) -> None:
    await run(migrate.upgrade, scratch_dsn, "0017")
    conn = await asyncpg.connect(scratch_dsn)
    try:
        await conn.execute("INSERT INTO worker_process (id, kinds, hostname, pid, version) "
                           "VALUES (gen_random_uuid(), '{http}', 'h', 1, 'v')")
        files = "SELECT relfilenode FROM pg_class WHERE relname = 'worker_process'"
        before = await conn.fetchval(files)
        await run(migrate.upgrade, scratch_dsn, "0018")
        assert await conn.fetchval(files) == before  # a nullable column: no rewrite
        assert await conn.fetchval("SELECT stats FROM worker_process") is None
        await conn.execute("UPDATE worker_process SET stats = '{\"fetched\": 3}'")
        assert json.loads(await conn.fetchval("SELECT stats FROM worker_process")) == {
            "fetched": 3}
        row = await conn.fetchrow("INSERT INTO api_token (token_id, resource) "
                                  "VALUES ('t-0123456789ab', 'core') RETURNING *")
        assert dict(row) | {"seen_on": None} == {
            "token_id": "t-0123456789ab", "resource": "core", "lim": None, "remaining": None,
            "reset_at": None, "paused_until": None, "leases": [], "seen_on": None}
        assert row["seen_on"] is not None
        await conn.execute("INSERT INTO api_token (token_id, resource) "
                           "VALUES ('t-0123456789ab', 'search')")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO api_token (token_id, resource) "
                               "VALUES ('t-0123456789ab', 'core')")
        with pytest.raises(asyncpg.NotNullViolationError):
            await conn.execute("INSERT INTO api_token (token_id, resource, leases) "
                               "VALUES ('t-x', 'core', NULL)")
        await run(migrate.downgrade, scratch_dsn, "0017")
        assert not await conn.fetchval(
            "SELECT count(*) FROM pg_class WHERE relname = 'api_token'")
        assert not await conn.fetchval(
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_name = 'worker_process' AND column_name = 'stats'")
        assert await conn.fetchval("SELECT count(*) FROM worker_process") == 1
        await run(migrate.upgrade, scratch_dsn, "0018")
    finally:
        await conn.close()


async def test_0022_makes_a_tasks_key_its_owners(scratch_dsn: str) -> None:
    await run(migrate.upgrade, scratch_dsn, "0021")
    conn = await asyncpg.connect(scratch_dsn)
    insert = ("INSERT INTO task (root_id, name, kind, args, idem_key, owner) "
              "VALUES (0, 'n', 'http', '{}', $1, $2) RETURNING id")
    try:
        await conn.execute(insert, "k1", "alice")
        with pytest.raises(asyncpg.UniqueViolationError):  # 0021: one key for everyone
            await conn.execute(insert, "k1", "bob")
        await run(migrate.upgrade, scratch_dsn, "0022")
        bob = await conn.fetchval(insert, "k1", "bob")
        await conn.fetchval(insert, "k1", None)
        with pytest.raises(asyncpg.UniqueViolationError):  # still one per owner
            await conn.execute(insert, "k1", "bob")
        with pytest.raises(asyncpg.UniqueViolationError):  # and one for no owner
            await conn.execute(insert, "k1", None)
        await run(migrate.downgrade, scratch_dsn, "0021")
        # the oldest task keeps the key; the others keep their rows, without it
        assert [tuple(r) for r in await conn.fetch(
            "SELECT owner, idem_key FROM task ORDER BY id")] == [
            ("alice", "k1"), ("bob", None), (None, None)]
        assert bob is not None
        await run(migrate.upgrade, scratch_dsn, "0022")
    finally:
        await conn.close()


async def test_0023_keeps_every_result_across_upgrade_and_downgrade(scratch_dsn: str) -> None:
    """A job made before 0023 (its job_result rows, its pages' url_link rows) reads the same
    result after the upgrade, and its pages' links become link sets at their versions; a job
    made after it (job_page, url_links) reads the same from job_result after the downgrade."""
    await run(migrate.upgrade, scratch_dsn, "0022")
    conn = await asyncpg.connect(scratch_dsn)
    try:
        await conn.execute("""
            INSERT INTO url (url, mime, fetched_on, version)
            SELECT 'http://m.example/' || i, 'text/html', CASE WHEN i < 4 THEN now() END, i % 3
            FROM generate_series(1, 8) i""")
        ids = dict(await conn.fetch("SELECT url, id FROM url"))
        a, b, c, x, y = (ids[f"http://m.example/{i}"] for i in (1, 2, 3, 5, 6))
        # Pages 1, 2 link to others; 3 was fetched without links (or failed).
        links = [(a, b), (a, x), (a, y), (b, a), (b, y)]
        await conn.executemany("INSERT INTO url_link (refer_id, url_id) VALUES ($1, $2)", links)
        old = await conn.fetchval(
            "INSERT INTO job (max_level, force_crawl) VALUES (2, false) RETURNING id")
        await conn.executemany("INSERT INTO job_result (job_id, refer_id, url_id) "
                               "VALUES ($1, $2, $3)", [(old, r, u) for r, u in links])
        await run(migrate.upgrade, scratch_dsn, "0023")
        assert await conn.fetchval("SELECT links_derived FROM job WHERE id = $1", old) is False
        sets = {r["url_id"]: (r["version"], r["n"], r["links"]) for r in await conn.fetch(
            "SELECT url_id, version, n, links FROM url_links")}
        versions = dict(await conn.fetch("SELECT id, version FROM url"))
        assert sets == {a: (versions[a], 3, sorted([b, x, y])), b: (versions[b], 2, sorted([a, y])),
                        c: (versions[c], 0, [])}
        assert not await conn.fetchval("SELECT count(*) FROM pg_class WHERE relname = 'url_link'")
        before = await jobs.result_chunk(conn, old, (0, 0), None)
        assert before is not None and dict(before.pages) == {
            "http://m.example/1": sorted(["http://m.example/2", "http://m.example/5",
                                          "http://m.example/6"]),
            "http://m.example/2": ["http://m.example/1", "http://m.example/6"]}
        # A job since: its result is derived, read the same way.
        new = await conn.fetchval(
            "INSERT INTO job (max_level, force_crawl) VALUES (2, false) RETURNING id")
        assert await conn.fetchval("SELECT links_derived FROM job WHERE id = $1", new) is True
        await conn.execute("INSERT INTO job_page (job_id, url_id, version) "
                           "SELECT $1, url_id, version FROM url_links", new)
        derived = await jobs.result_chunk(conn, new, (0, 0), None)
        assert derived is not None and derived.pages == before.pages
        await run(migrate.downgrade, scratch_dsn, "0022")
        for job in (old, new):
            assert sorted(tuple(r) for r in await conn.fetch(
                "SELECT refer_id, url_id FROM job_result WHERE job_id = $1", job)) == sorted(links)
        assert sorted(tuple(r) for r in await conn.fetch(
            "SELECT refer_id, url_id FROM url_link")) == sorted(links)
        await run(migrate.upgrade, scratch_dsn, "head")
    finally:
        await conn.close()


async def test_0024_moves_every_job_row_into_its_ranges_partition_and_back(
        scratch_dsn: str) -> None:
    """Rows of jobs in two ranges (and a job_page row of a job id with no job row) are in the
    partitioned tables after the upgrade, each in its range's partition, and in the plain
    tables again after the downgrade."""
    await run(migrate.upgrade, scratch_dsn, "0023")
    conn = await asyncpg.connect(scratch_dsn)
    tables = ("job_url", "job_visit", "job_pending", "job_failure", "job_page", "job_yield")
    try:
        await conn.execute("INSERT INTO url (url) SELECT 'http://p.example/' || i "
                           "FROM generate_series(1, 3) i")
        await conn.execute("INSERT INTO job (id, max_level, force_crawl) "
                           "VALUES (7, 2, false), (1500, 2, false)")
        await conn.execute("SELECT setval('job_id_seq', 1500)")
        await conn.execute("""
            INSERT INTO job_url (job_id, url_id, pending) SELECT j, u, 1
            FROM unnest('{7,1500}'::bigint[]) j, (SELECT min(id) AS u FROM url) u;
            INSERT INTO job_visit (job_id, url_id, level) SELECT j, id, 0
            FROM unnest('{7,1500}'::bigint[]) j, url;
            INSERT INTO job_pending (job_id, url_id, origin_id, host, rank)
            SELECT 1500, id, id, 'http://p.example', id FROM url;
            INSERT INTO job_failure (job_id, url_id, reason, attempts)
            SELECT 7, min(id), 'HTTP 500', 3 FROM url;
            INSERT INTO job_page (job_id, url_id, version)
            SELECT j, id, 1 FROM unnest('{7,1500,2999}'::bigint[]) j, url;
            INSERT INTO job_yield (job_id, url_id, kind, seq, value)
            SELECT 7, min(id), 'item', 0, '{"a": 1}' FROM url""")

        async def rows() -> dict[str, list[tuple[Any, ...]]]:
            return {t: sorted(tuple(r) for r in await conn.fetch(f"SELECT * FROM {t}"))
                    for t in tables}

        before = await rows()
        await run(migrate.upgrade, scratch_dsn, "0024")
        assert await rows() == before
        assert await conn.fetchval("SELECT count(*) FROM job_visit_r0") == 3
        assert await conn.fetchval("SELECT count(*) FROM job_visit_r1") == 3
        assert await conn.fetchval("SELECT count(*) FROM job_page_r2") == 3  # no job row
        # Every range with a row has its partitions (2 for job 2999's page: no job row);
        # the next id's (1501) too, and no other.
        assert await conn.fetchval(
            "SELECT array_agg(inhrelid::regclass::text ORDER BY inhrelid::regclass::text) "
            "FROM pg_inherits "
            "WHERE inhparent = 'job_url'::regclass") == ["job_url_r0", "job_url_r1", "job_url_r2"]
        await run(migrate.downgrade, scratch_dsn, "0023")
        assert await rows() == before
        assert await conn.fetchval("SELECT count(*) FROM pg_partitioned_table") == 0
        await run(migrate.upgrade, scratch_dsn, "head")
    finally:
        await conn.close()
