"""Queue orders, job priorities, a host-aware fair frontier, Bloom filters, sessions (issue 14).

- ``job``: ``priority`` (weight ``2 ** priority`` in the feeder's fair share), ``queue_order``
  (bfs, fifo, lifo, priority), ``bloom_capacity``/``bloom_error`` (NULL: no Bloom filter).
  Constant defaults: old jobs are not rewritten, and a default job costs no jsonb read.
- ``job_pending``: ``host`` (``shared.urls.host_key`` of the URL, the politeness key) and
  ``rank`` (the order inside a (host, job): ``harvester_rank``), numbered by ``job_pending_seq``.
  The feeder's index ``job_pending_due`` becomes ``job_pending_frontier`` (host, job_id, rank)
  and ``job_pending_inflight`` counts what is published per (host, job).
- ``harvester_host(url)`` and ``harvester_rank(order, level, priority, seq)``: the one formula
  every writer of pending rows uses (SQL and Python agree: tests check it).
- ``crawl_session``: a pool of named sessions (cookies, headers, User-Agent), leased per host.

Old pending rows get their host and a breadth-first rank (level, then due order); then both
columns lose their default (needed only to add them), so a writer that forgets one fails.

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-30
"""
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(r"""
        CREATE FUNCTION harvester_host(url text) RETURNS text
            LANGUAGE sql IMMUTABLE PARALLEL SAFE
            AS $$ SELECT regexp_replace(substring(url FROM '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*'),
                                        '://.*@', '://') $$;
        CREATE FUNCTION harvester_rank(ord text, level integer, prio integer, seq bigint)
            RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE
            AS $$ SELECT CASE ord WHEN 'fifo' THEN seq
                            WHEN 'lifo' THEN -seq
                            WHEN 'priority' THEN ((-coalesce(prio, 0))::bigint << 40) + seq
                            ELSE (coalesce(level, 0)::bigint << 40) + seq END $$;
        CREATE SEQUENCE job_pending_seq;

        ALTER TABLE job ADD COLUMN priority integer NOT NULL DEFAULT 0,
            ADD COLUMN queue_order text NOT NULL DEFAULT 'bfs'
                CONSTRAINT job_queue_order_check
                CHECK (queue_order IN ('bfs', 'fifo', 'lifo', 'priority')),
            ADD COLUMN bloom_capacity bigint,
            ADD COLUMN bloom_error real;

        ALTER TABLE job_pending ADD COLUMN host text NOT NULL DEFAULT '',
            ADD COLUMN rank bigint NOT NULL DEFAULT 0;
        WITH o AS (
            SELECT p.job_id, p.url_id, harvester_host(u.url) AS host,
                   coalesce(v.level, 0) AS level,
                   row_number() OVER (ORDER BY p.due, p.queued_on, p.job_id, p.url_id) AS n
            FROM job_pending p JOIN url u ON u.id = p.url_id
            LEFT JOIN job_visit v ON v.job_id = p.job_id AND v.url_id = p.url_id)
        UPDATE job_pending p SET host = o.host, rank = harvester_rank('bfs', o.level, 0, o.n)
        FROM o WHERE p.job_id = o.job_id AND p.url_id = o.url_id;
        SELECT setval('job_pending_seq', greatest(count(*), 1), count(*) > 0) FROM job_pending;
        ALTER TABLE job_pending ALTER COLUMN host DROP DEFAULT, ALTER COLUMN rank DROP DEFAULT;

        DROP INDEX job_pending_due;
        CREATE INDEX job_pending_frontier ON job_pending (host, job_id, rank)
            WHERE published_on IS NULL AND NOT held;
        CREATE INDEX job_pending_inflight ON job_pending (host, job_id)
            WHERE published_on IS NOT NULL;

        CREATE TABLE crawl_session (
            pool          text NOT NULL,
            name          text NOT NULL,
            host          text,                 -- as job_pending.host; NULL: any host
            cookies       jsonb NOT NULL DEFAULT '{}',
            headers       jsonb NOT NULL DEFAULT '{}',
            user_agent    text,
            max_uses      integer,              -- NULL: unlimited
            uses          integer NOT NULL DEFAULT 0,
            leases        timestamptz[] NOT NULL DEFAULT '{}',  -- expiry of each live lease
            last_used     timestamptz NOT NULL DEFAULT '-infinity',
            benched_until timestamptz,
            benches       integer NOT NULL DEFAULT 0,
            bench_reason  text,
            version       integer NOT NULL DEFAULT 1,
            updated_on    timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (pool, name)
        );
        CREATE INDEX crawl_session_lru ON crawl_session (pool, last_used);
        ANALYZE job_pending;
    """)


def downgrade() -> None:
    op.execute("""
        DROP TABLE crawl_session;
        DROP INDEX job_pending_inflight;
        DROP INDEX job_pending_frontier;
        CREATE INDEX job_pending_due ON job_pending (due)
            WHERE published_on IS NULL AND NOT held;
        ALTER TABLE job_pending DROP COLUMN rank, DROP COLUMN host;
        ALTER TABLE job DROP COLUMN bloom_error, DROP COLUMN bloom_capacity,
            DROP COLUMN queue_order, DROP COLUMN priority;
        DROP SEQUENCE job_pending_seq;
        DROP FUNCTION harvester_rank(text, integer, integer, bigint);
        DROP FUNCTION harvester_host(text);
    """)
