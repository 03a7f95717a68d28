"""Per-version results per rule set: the job's fetcher kind and rule set (``job.fetcher``,
``job.ruleset``, see ``shared.jobspec.JobSpec.ruleset``), a version per page (``url.version``:
one more per fetch with a body, not per 304), and what a page yields besides its links under a
rule set: ``url_extraction`` (page P was extracted with rule set R at version V), ``url_yield``
(its yields, replaced on re-extraction like ``url_link``) and ``job_yield`` (a job's yields,
copied at completion like ``job_result``).

The new columns have constant defaults, so adding them rewrites no table. No foreign keys on
the yield tables (cf. 0007): their rows are written from locked pending visits and fetched
pages, and ``jobs.delete_job`` removes a job's ``job_yield`` rows explicitly.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29
"""
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        ALTER TABLE job ADD COLUMN fetcher text NOT NULL DEFAULT 'http',
                        ADD COLUMN ruleset bigint NOT NULL DEFAULT 0;
        ALTER TABLE url ADD COLUMN version integer NOT NULL DEFAULT 0;
        CREATE TABLE url_extraction (
            url_id bigint NOT NULL,
            ruleset bigint NOT NULL,
            version integer NOT NULL,
            PRIMARY KEY (url_id, ruleset)
        );
        CREATE TABLE url_yield (
            url_id bigint NOT NULL,
            ruleset bigint NOT NULL,
            kind text NOT NULL CHECK (kind IN ('item', 'id', 'link', 'body')),
            seq integer NOT NULL,
            value jsonb NOT NULL,
            PRIMARY KEY (url_id, ruleset, kind, seq)
        );
        CREATE TABLE job_yield (
            job_id bigint NOT NULL,
            url_id bigint NOT NULL,
            kind text NOT NULL,
            seq integer NOT NULL,
            value jsonb NOT NULL,
            PRIMARY KEY (job_id, url_id, kind, seq)
        );
    """)


def downgrade() -> None:
    op.execute("""
        DROP TABLE job_yield;
        DROP TABLE url_yield;
        DROP TABLE url_extraction;
        ALTER TABLE url DROP COLUMN version;
        ALTER TABLE job DROP COLUMN ruleset, DROP COLUMN fetcher;
    """)
