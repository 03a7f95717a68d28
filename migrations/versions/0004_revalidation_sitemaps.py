"""Validators for conditional re-fetches; per-job sitemap discovery.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        ALTER TABLE url ADD COLUMN etag text;            -- from the last 2xx answer
        ALTER TABLE url ADD COLUMN last_modified text;   -- likewise, as the server wrote it
        ALTER TABLE job ADD COLUMN sitemaps boolean NOT NULL DEFAULT false;
    """)


def downgrade() -> None:
    op.execute("""
        ALTER TABLE job DROP COLUMN sitemaps;
        ALTER TABLE url DROP COLUMN last_modified;
        ALTER TABLE url DROP COLUMN etag;
    """)
