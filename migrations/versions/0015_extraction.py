"""Follow rules, id crawls and outputs (issue 11).

- ``job.follow``: which links a job's pages give as children: ``html`` (the HTML link
  extractor's, ``url_link``: every job before this revision and every job without ``follow``/
  ``ids``), ``rules`` (only the follow rules' links and ids, ``url_yield.target``) or ``both``.
- ``url_yield.target``: the URL a ``link`` or ``id`` yield names (``url.id``), so children are
  read set-based from the stored yields, the same for a cached page as for a fresh one.
- ``job_yield_kind``: a job's yields of one kind in key order (``GET /items``, ``/bodies``).
- ``id_set`` / ``id_set_member``: id sets uploaded with ``POST /idsets`` (``known`` and
  ``explored`` ids of a job); members are written with COPY, hence no primary key.
- ``body``: bodies saved by the ``db`` output, one row per SHA-256 digest.

A constant default and a nullable column rewrite no table. No foreign keys (cf. 0007, 0013).

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-29
"""
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        ALTER TABLE job ADD COLUMN follow text NOT NULL DEFAULT 'html'
            CONSTRAINT job_follow_check CHECK (follow IN ('html', 'rules', 'both'));
        ALTER TABLE url_yield ADD COLUMN target bigint;
        CREATE INDEX job_yield_kind ON job_yield (job_id, kind, url_id, seq);
        CREATE TABLE id_set (
            id uuid PRIMARY KEY,
            created_on timestamptz NOT NULL DEFAULT now(),
            count bigint NOT NULL DEFAULT 0,
            complete boolean NOT NULL DEFAULT false
        );
        CREATE TABLE id_set_member (
            set_id uuid NOT NULL,
            ident text NOT NULL
        );
        CREATE INDEX id_set_member_set ON id_set_member (set_id, ident);
        CREATE TABLE body (
            digest bytea PRIMARY KEY,
            data bytea NOT NULL
        );
    """)


def downgrade() -> None:
    op.execute("""
        DROP TABLE body;
        DROP TABLE id_set_member;
        DROP TABLE id_set;
        DROP INDEX job_yield_kind;
        ALTER TABLE url_yield DROP COLUMN target;
        ALTER TABLE job DROP COLUMN follow;
    """)
