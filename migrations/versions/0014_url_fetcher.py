"""The fetcher kind that made a page's stored version (``url.fetcher``; NULL: http): a job is
answered from the store, or sends validators, only for a version its own fetcher kind made, so
that "same result, cached or fresh" holds across fetchers (``visits.plan``).

A nullable column without a default rewrites no table; every stored page was fetched over http
before this revision, which NULL says.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-29
"""
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE url ADD COLUMN fetcher text")


def downgrade() -> None:
    op.execute("ALTER TABLE url DROP COLUMN fetcher")
