"""worker_process: the live worker registry. Each worker process upserts its row every
``heartbeatInterval`` (``shared.db.workers.beat``) with the fetcher kinds it serves; a row unseen
for ``workerTimeout`` is no longer live, so ``/status`` can say that no worker serves a job's
fetcher kind instead of waiting silently.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29
"""
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE worker_process (
            id uuid PRIMARY KEY,
            kinds text[] NOT NULL,
            hostname text NOT NULL,
            pid integer NOT NULL,
            version text NOT NULL,
            started_on timestamptz NOT NULL DEFAULT now(),
            seen_on timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX worker_process_seen ON worker_process (seen_on);
    """)


def downgrade() -> None:
    op.execute("DROP TABLE worker_process")
