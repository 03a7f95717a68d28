"""Job and task owners (issue 17): ``job.owner``, ``task.owner``.

The name of the API token that created the row; NULL for a row made without authentication
(no tokens configured, or before this revision): once tokens are configured only an admin
token sees those. ``GET /jobs`` of a token reads ``job_owner`` (its jobs, newest first).

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-30
"""
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        ALTER TABLE job ADD COLUMN owner text;
        ALTER TABLE task ADD COLUMN owner text;
        CREATE INDEX job_owner ON job (owner, id DESC) WHERE owner IS NOT NULL;
        """)


def downgrade() -> None:
    op.execute("""
        DROP INDEX job_owner;
        ALTER TABLE task DROP COLUMN owner;
        ALTER TABLE job DROP COLUMN owner;
        """)
