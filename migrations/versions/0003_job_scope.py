"""Per-job scope: which links a job follows, and how many pages it may process.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        ALTER TABLE job ADD COLUMN scope text NOT NULL DEFAULT 'any'
            CHECK (scope IN ('any', 'host', 'domain'));
        ALTER TABLE job ADD COLUMN allow text[] NOT NULL DEFAULT '{}';  -- regexes; any must match
        ALTER TABLE job ADD COLUMN deny text[] NOT NULL DEFAULT '{}';   -- regexes; none may match
        ALTER TABLE job ADD COLUMN max_pages integer CHECK (max_pages > 0);
    """)


def downgrade() -> None:
    op.execute("""
        ALTER TABLE job DROP COLUMN max_pages;
        ALTER TABLE job DROP COLUMN deny;
        ALTER TABLE job DROP COLUMN allow;
        ALTER TABLE job DROP COLUMN scope;
    """)
