"""Operating Harvester (issue 16): job state, held visits, completion webhooks.

- ``job.state``: ``running``, ``paused`` or ``cancelled`` (completed is derived: every
  ``job_url.completed_on`` set); ``state_on`` when it last changed; ``deleted_on`` marks a job
  deleted through the API (gone from every answer, purged by housekeeping).
- ``job_pending.held``: an unpublished visit of a paused job; the feeder's partial index
  ``job_pending_due`` is rebuilt without held rows, so a paused job costs the feeder nothing.
- ``job_webhook``: a job's completion webhook and its delivery state.

A constant default and a nullable column rewrite no table.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-29
"""
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        ALTER TABLE job ADD COLUMN state text NOT NULL DEFAULT 'running'
                CONSTRAINT job_state_check CHECK (state IN ('running', 'paused', 'cancelled')),
            ADD COLUMN state_on timestamptz,
            ADD COLUMN deleted_on timestamptz;
        ALTER TABLE job_pending ADD COLUMN held boolean NOT NULL DEFAULT false;
        DROP INDEX job_pending_due;
        CREATE INDEX job_pending_due ON job_pending (due)
            WHERE published_on IS NULL AND NOT held;
        CREATE INDEX job_state_id ON job (state, id DESC);
        CREATE INDEX job_url_open ON job_url (job_id) WHERE completed_on IS NULL;
        CREATE INDEX job_pending_held ON job_pending (job_id) WHERE held;
        CREATE TABLE job_webhook (
            job_id bigint PRIMARY KEY REFERENCES job ON DELETE CASCADE,
            url text NOT NULL,
            attempts int NOT NULL DEFAULT 0,
            next_attempt timestamptz NOT NULL DEFAULT now(),
            sent_on timestamptz,
            last_status int,
            last_error text
        );
        CREATE INDEX job_webhook_due ON job_webhook (next_attempt) WHERE sent_on IS NULL;
    """)


def downgrade() -> None:
    op.execute("""
        DROP TABLE job_webhook;
        DROP INDEX job_pending_held;
        DROP INDEX job_url_open;
        DROP INDEX job_state_id;
        DROP INDEX job_pending_due;
        ALTER TABLE job_pending DROP COLUMN held;
        CREATE INDEX job_pending_due ON job_pending (due) WHERE published_on IS NULL;
        ALTER TABLE job DROP COLUMN deleted_on, DROP COLUMN state_on, DROP COLUMN state;
    """)
