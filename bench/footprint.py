"""What a crawl leaves and writes, per page: rows and bytes of each table, WAL bytes, rows
written, transactions, and JetStream messages. The capacity model (docs/scaling.md) is built on
these figures; issue 15's "links stored once" shows in the rows per link.

``snapshot`` before the job and after it; ``footprint(before, after, pages, links)`` the
differences, per page and per link. Tables are measured whole (the bench's database holds only
the bench job), counters as differences (the database had the idle tiers' traffic before)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import nats

from shared.bus import nats_servers

# The tables a crawl grows (a table missing in this schema version is left out).
TABLES = ("url", "url_link", "url_links", "job_page", "job_result", "job_visit", "job_pending",
          "job_url", "job_failure", "url_extraction", "url_yield", "host")


async def _snapshot(dsn: str, nats_url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ANALYZE")  # reltuples for the row estimates below
        # A partitioned table (migration 0024) is the sum of its partitions (its leaves).
        tables = {r["name"]: {"rows": int(r["rows"]), "bytes": int(r["bytes"])}
                  for r in await conn.fetch(
                      "SELECT c.relname AS name, "
                      "sum(greatest(l.reltuples, 0)) AS rows, "
                      "sum(pg_total_relation_size(l.oid)) AS bytes FROM pg_class c "
                      "JOIN pg_namespace n ON n.oid = c.relnamespace "
                      "CROSS JOIN LATERAL (SELECT t.relid FROM pg_partition_tree(c.oid) t "
                      "                    WHERE t.isleaf AND c.relkind = 'p' "
                      "                    UNION ALL SELECT c.oid WHERE c.relkind = 'r') t "
                      "JOIN pg_class l ON l.oid = t.relid "
                      "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') "
                      "AND c.relname = ANY($1::text[]) GROUP BY c.relname", list(TABLES))}
        # The insert position, not pg_current_wal_lsn(): with synchronous_commit=off (as the
        # embedded server runs) a commit's record is written by the WAL writer up to 200 ms
        # later, so the write position can still stand where it stood before the crawl.
        db = await conn.fetchrow(
            "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted AS written, "
            "pg_current_wal_insert_lsn() - '0/0'::pg_lsn AS wal, pg_database_size(datname) AS size "
            "FROM pg_stat_database WHERE datname = current_database()")
    finally:
        await conn.close()
    nc = await nats.connect(servers=nats_servers(nats_url), connect_timeout=5,
                            max_reconnect_attempts=0)
    try:
        messages = 0
        for info in await nc.jetstream().streams_info():
            messages += int(info.state.last_seq)  # every message ever stored, acked or not
    finally:
        await nc.close()
    return {"tables": tables, "commits": int(db["xact_commit"]), "written": int(db["written"]),
            "wal": int(db["wal"]), "db_bytes": int(db["size"]), "messages": messages}


def snapshot(dsn: str, nats_url: str) -> dict[str, Any]:
    """The database's and JetStream's counters and sizes now."""
    return asyncio.run(_snapshot(dsn, nats_url))


def footprint(before: dict[str, Any], after: dict[str, Any], pages: int, links: int
              ) -> dict[str, Any]:
    """Per page (and per stored link): what the crawl between the snapshots wrote and left."""
    per = max(pages, 1)
    tables = {name: {"rows_per_page": round(t["rows"] / per, 2),
                     "bytes_per_page": round(t["bytes"] / per)}
              for name, t in sorted(after["tables"].items()) if t["rows"] or t["bytes"] > 65536}
    return {
        "pages": pages, "links": links,
        "tables": tables,
        "db_bytes_per_page": round((after["db_bytes"] - before["db_bytes"]) / per),
        "db_bytes_per_link": round((after["db_bytes"] - before["db_bytes"]) / max(links, 1), 1),
        "wal_bytes_per_page": round((after["wal"] - before["wal"]) / per),
        "rows_written_per_page": round((after["written"] - before["written"]) / per, 2),
        "commits_per_page": round((after["commits"] - before["commits"]) / per, 3),
        "messages_per_page": round((after["messages"] - before["messages"]) / per, 3),
    }
