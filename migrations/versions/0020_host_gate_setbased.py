"""``harvester_acquire`` set-based: two statements per call, not three per host (issue 14).

The function (same signature, same grants) creates the batch's missing ``host`` rows with one
``INSERT … ON CONFLICT DO NOTHING`` (in name order), then locks every row of the batch in name
order (``ORDER BY host FOR UPDATE``, as before and as ``hosts.release`` does: no deadlock) and
computes every host's grants in one ``UPDATE``-bearing statement. One host alone (a one-site
crawl) takes the old loop's three plain statements, cheaper than the set-based one's fixed cost.
A host granted nothing whose leases have not expired is not rewritten (no new row version). The
hosts must be distinct (the caller passes a dict's keys); a repeated host is refused, not
half-counted.

Downgrade restores the per-host loop of 0002.

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-30
"""
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

# For each host: live leases (expiring after now), the first possible start t0 = max(next_start,
# now, backoff_until), and starts t0 + k*D for k = 0, 1, … while k < want, live + k < cap and
# the start is within the horizon. D is an interval, so t0 + k*D is exactly the loop's repeated
# addition; tokens are unique per host even for equal starts (release removes one by value).
UPGRADE = r"""
CREATE OR REPLACE FUNCTION harvester_acquire(p_hosts text[], p_wants int[], p_caps int[],
                                             p_delays float8[], p_lease float8,
                                             p_horizon float8)
RETURNS TABLE (host text, starts timestamptz[], tokens timestamptz[], next_free timestamptz)
LANGUAGE plpgsql
-- One plan for every call: a custom plan per call costs more to plan (~0.3 ms) than one
-- host's grants cost to compute; the generic plan reads the host rows by their key.
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    now_ timestamptz := clock_timestamp();
    until_ timestamptz := now_ + make_interval(secs => p_horizon);
    h record;
    active timestamptz[];
    t timestamptz;
    n integer;
BEGIN
    IF cardinality(p_hosts) = 1 THEN  -- one host (a one-site crawl): three plain statements
        INSERT INTO host AS hh (host) VALUES (p_hosts[1]) ON CONFLICT DO NOTHING;
        SELECT hh.leases, hh.next_start, hh.backoff_until INTO h
        FROM host AS hh WHERE hh.host = p_hosts[1] FOR UPDATE;
        active := ARRAY(SELECT e FROM unnest(h.leases) AS e WHERE e > now_);
        t := greatest(h.next_start, now_, coalesce(h.backoff_until, now_));
        starts := '{}';
        tokens := '{}';
        n := 0;
        WHILE n < p_wants[1] AND cardinality(active) + n < p_caps[1] AND t <= until_ LOOP
            starts := starts || t;
            tokens := tokens || (t + make_interval(secs => p_lease + n * 1e-6));
            n := n + 1;
            t := t + make_interval(secs => p_delays[1]);
        END LOOP;
        IF n > 0 OR cardinality(active) < cardinality(h.leases) THEN
            UPDATE host AS hh SET leases = active || tokens,
                                  next_start = CASE WHEN n > 0 THEN t ELSE hh.next_start END
            WHERE hh.host = p_hosts[1];
        END IF;
        host := p_hosts[1];
        next_free := t;
        RETURN NEXT;
        RETURN;
    END IF;
    IF cardinality(p_hosts) <> (SELECT count(DISTINCT x) FROM unnest(p_hosts) AS x) THEN
        RAISE EXCEPTION 'harvester_acquire: a host is given more than once';
    END IF;
    INSERT INTO host AS hh (host) SELECT x FROM unnest(p_hosts) AS x ORDER BY x
    ON CONFLICT DO NOTHING;
    RETURN QUERY
    WITH locked AS (  -- ORDER BY comes before the locking: rows are locked in name order
        SELECT hh.host, hh.leases, hh.next_start, hh.backoff_until
        FROM host AS hh WHERE hh.host = ANY(p_hosts) ORDER BY hh.host FOR UPDATE),
    g AS (
        SELECT l.host, cardinality(l.leases) AS held, a.active, s.t0, s.d, w.n, w.starts, w.tokens
        FROM unnest(p_hosts, p_wants, p_caps, p_delays) AS x(host, want, cap, delay)
        JOIN locked AS l ON l.host = x.host
        CROSS JOIN LATERAL (  -- OFFSET 0: computed once, not once per use
            SELECT ARRAY(SELECT e FROM unnest(l.leases) AS e WHERE e > now_) AS active
            OFFSET 0) AS a
        CROSS JOIN LATERAL (
            SELECT greatest(l.next_start, now_, coalesce(l.backoff_until, now_)) AS t0,
                   make_interval(secs => x.delay) AS d) AS s
        CROSS JOIN LATERAL (
            SELECT count(*)::int AS n,
                   coalesce(array_agg(s.t0 + k * s.d ORDER BY k), '{}') AS starts,
                   coalesce(array_agg(s.t0 + k * s.d + make_interval(secs => p_lease + k * 1e-6)
                                      ORDER BY k), '{}') AS tokens
            FROM generate_series(0, least(x.want, x.cap - cardinality(a.active)) - 1) AS k
            WHERE s.t0 <= until_ AND s.t0 + k * s.d <= until_) AS w),
    upd AS (
        UPDATE host AS hh SET leases = g.active || g.tokens,
                              next_start = CASE WHEN g.n > 0 THEN g.t0 + g.n * g.d
                                                ELSE hh.next_start END
        FROM g WHERE hh.host = g.host AND (g.n > 0 OR cardinality(g.active) < g.held))
    SELECT g.host, g.starts, g.tokens, g.t0 + g.n * g.d FROM g ORDER BY g.host;
END $$;
"""

# 0002's function, as it was.
DOWNGRADE = r"""
CREATE OR REPLACE FUNCTION harvester_acquire(p_hosts text[], p_wants int[], p_caps int[],
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


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
