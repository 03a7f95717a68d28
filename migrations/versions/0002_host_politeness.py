"""Per-host politeness and robots.txt shared by all workers; deferred visits.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- One row per host (scheme, host and port, as in "http://example.com"): pacing, leases,
-- backoff and robots.txt.
CREATE TABLE host (
    host                  text PRIMARY KEY,
    next_start            timestamptz NOT NULL DEFAULT '-infinity',  -- no request starts before
    leases                timestamptz[] NOT NULL DEFAULT '{}',  -- expiry of each request in flight
    failures              integer NOT NULL DEFAULT 0,   -- consecutive 429/503/connection failures
    backoff_until         timestamptz,
    robots_status         integer,          -- HTTP status of robots.txt; NULL: no answer
    robots_body           text,
    robots_fetched_on     timestamptz,
    robots_failures       integer NOT NULL DEFAULT 0,   -- consecutive 5xx/unreachable answers
    robots_fetching_until timestamptz       -- a worker is fetching robots.txt (a lease)
);

-- Visits can wait in the frontier until a time (politeness, robots.txt, a busy host).
ALTER TABLE job_pending ADD COLUMN due timestamptz NOT NULL DEFAULT now();
DROP INDEX job_pending_unpublished;
CREATE INDEX job_pending_due ON job_pending (due) WHERE published_on IS NULL;

ALTER TABLE job_url ADD COLUMN blocked integer NOT NULL DEFAULT 0;

-- Lease request slots on hosts, for every worker of the cluster at once. For each host (locked
-- in name order, so concurrent callers cannot deadlock) grant up to p_wants[i] starts while
-- fewer than p_caps[i] requests are in flight, spaced p_delays[i] seconds apart, and no later
-- than p_horizon seconds from now. A lease expires by itself (a crashed worker frees its slot).
CREATE FUNCTION harvester_acquire(p_hosts text[], p_wants int[], p_caps int[],
                                  p_delays float8[], p_lease float8, p_horizon float8)
RETURNS TABLE (host text, starts timestamptz[], tokens timestamptz[], next_free timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    h record;
    now_ timestamptz := clock_timestamp();
    active timestamptz[];
    t timestamptz;
    n integer;
BEGIN
    FOR i IN SELECT x.ord FROM unnest(p_hosts) WITH ORDINALITY AS x(name, ord) ORDER BY x.name LOOP
        INSERT INTO host AS hh (host) VALUES (p_hosts[i]) ON CONFLICT DO NOTHING;
        SELECT * INTO h FROM host AS hh WHERE hh.host = p_hosts[i] FOR UPDATE;
        active := ARRAY(SELECT l FROM unnest(h.leases) AS l WHERE l > now_);
        t := greatest(h.next_start, now_, coalesce(h.backoff_until, now_));
        starts := '{}';
        tokens := '{}';
        n := 0;
        WHILE n < p_wants[i] AND cardinality(active) + n < p_caps[i]
              AND t <= now_ + make_interval(secs => p_horizon) LOOP
            starts := starts || t;
            -- distinct tokens even for equal start times: release removes one by value
            tokens := tokens || (t + make_interval(secs => p_lease + n * 1e-6));
            n := n + 1;
            t := t + make_interval(secs => p_delays[i]);
        END LOOP;
        IF n > 0 THEN
            UPDATE host AS hh SET leases = active || tokens, next_start = t
            WHERE hh.host = p_hosts[i];
        ELSE
            UPDATE host AS hh SET leases = active WHERE hh.host = p_hosts[i];
        END IF;
        host := p_hosts[i];
        next_free := t;
        RETURN NEXT;
    END LOOP;
END $$;
"""

DOWNGRADE = r"""
DROP FUNCTION IF EXISTS harvester_acquire(text[], int[], int[], float8[], float8, float8);
ALTER TABLE job_url DROP COLUMN IF EXISTS blocked;
DROP INDEX IF EXISTS job_pending_due;
ALTER TABLE job_pending DROP COLUMN IF EXISTS due;
CREATE INDEX job_pending_unpublished ON job_pending (queued_on) WHERE published_on IS NULL;
DROP TABLE IF EXISTS host;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
