"""Links stored once per fetched version (issue 15): ``url_links`` (a page's links at one
version, one row: the distinct link ids, ascending, and their count), ``job_page`` (a page a job
processed and the version it used) and ``job.links_derived`` (the job's results are derived from
those two: false for the jobs there before this revision, true for every job made after it).
``url_link`` (the links of each page's last fetch) goes; ``job_result`` stays, for the jobs
that are not derived: they keep the rows they had, and the processor still writes theirs.

The backfill runs here, set-based, not in rounds: each fetched page's links from ``url_link``
become its ``url_links`` row at its current version (``url.version``), then ``url_link`` is
dropped. Upgrades are stop-the-world (``harvester up`` migrates before it starts foremen and
workers), so no process reads or writes ``url_link`` meanwhile, and nothing needs a fallback
for pages without a link set: every fetched page has one at its current version, and every
later fetch (but a 304, which keeps its version) writes its own.

The downgrade rebuilds ``url_link`` from each page's link set at its current version, gives the
derived jobs ``job_result`` rows (from ``job_page`` and the link sets their pages used), then
drops what this revision added.

Revision ID: 0023
Revises: 0022
Create Date: 2026-11-30
"""
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

# What 0006 gives the hot tables: statistics fresh while a large job grows.
ANALYZE = "autovacuum_analyze_threshold = 500, autovacuum_analyze_scale_factor = 0.02"


def upgrade() -> None:
    op.execute(f"""
        CREATE TABLE url_links (
            url_id  bigint  NOT NULL,
            version integer NOT NULL,
            n       integer NOT NULL,
            links   bigint[] NOT NULL,
            PRIMARY KEY (url_id, version)
        );
        CREATE TABLE job_page (
            job_id  bigint  NOT NULL,
            url_id  bigint  NOT NULL,
            version integer NOT NULL,
            PRIMARY KEY (job_id, url_id)
        );
        CREATE INDEX job_page_version ON job_page (url_id, version);
        ALTER TABLE url_links SET ({ANALYZE});
        ALTER TABLE job_page SET ({ANALYZE});
        ALTER TABLE job ADD COLUMN links_derived boolean NOT NULL DEFAULT false;
        ALTER TABLE job ALTER COLUMN links_derived SET DEFAULT true;
        INSERT INTO url_links (url_id, version, n, links)
        SELECT u.id, u.version, count(l.url_id),
               coalesce(array_agg(l.url_id ORDER BY l.url_id)
                        FILTER (WHERE l.url_id IS NOT NULL), '{{}}')
        FROM url u LEFT JOIN url_link l ON l.refer_id = u.id
        WHERE u.fetched_on IS NOT NULL OR EXISTS (SELECT FROM url_link k WHERE k.refer_id = u.id)
        GROUP BY u.id, u.version;
        DROP TABLE url_link;
        ANALYZE url_links;
        """)


def downgrade() -> None:
    op.execute(f"""
        CREATE TABLE url_link (
            refer_id bigint NOT NULL,
            url_id   bigint NOT NULL,
            PRIMARY KEY (refer_id, url_id)
        );
        ALTER TABLE url_link SET ({ANALYZE});
        INSERT INTO url_link (refer_id, url_id)
        SELECT l.url_id, k.link
        FROM url u JOIN url_links l ON l.url_id = u.id AND l.version = u.version
        CROSS JOIN LATERAL unnest(l.links) AS k(link)
        ORDER BY 1, 2;
        INSERT INTO job_result (job_id, refer_id, url_id)
        SELECT jp.job_id, jp.url_id, k.link
        FROM job_page jp JOIN job j ON j.id = jp.job_id AND j.links_derived
        JOIN url_links l ON l.url_id = jp.url_id AND l.version = jp.version
        CROSS JOIN LATERAL unnest(l.links) AS k(link)
        ORDER BY 1, 2, 3
        ON CONFLICT DO NOTHING;
        DROP TABLE job_page;
        DROP TABLE url_links;
        ALTER TABLE job DROP COLUMN links_derived;
        """)
