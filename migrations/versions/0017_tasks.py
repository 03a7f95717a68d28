"""Tasks (issue 12): the task API's queue, results and partial results; worker health.

- ``task``: one call of an allow-listed function (``name``) on a fetcher kind's workers, its
  arguments, state (``queued`` → ``running`` → ``succeeded``/``failed``; ``RetryLater`` puts it
  back to ``queued``), deliveries counted in ``attempts``, and its result or error. A follow-up
  has its ``parent_id`` and the ``root_id`` of its tree (a root's own id). ``idem_key`` is
  unique where set: the client's idempotency key, or ``<parent>/<n>`` for a follow-up, so a
  re-run enqueues no duplicate. ``published_on`` is the outbox (NULL: the foreman's task
  feeder publishes it when ``due``); ``worker`` is ``host:pid:kind`` of the last attempt.
- ``task_partial``: the partial results a task wrote, by sequence, shown under its root.
- ``worker_process.health``: NULL when healthy, else why not (a failed init function).

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-30
"""
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE task (
            id bigserial PRIMARY KEY,
            name text NOT NULL,
            kind text NOT NULL,
            args jsonb NOT NULL DEFAULT '{}',
            idem_key text,
            parent_id bigint REFERENCES task ON DELETE CASCADE,
            root_id bigint NOT NULL,
            state text NOT NULL DEFAULT 'queued' CONSTRAINT task_state_check
                CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
            attempts int NOT NULL DEFAULT 0,
            result jsonb,
            error jsonb,
            created_on timestamptz NOT NULL DEFAULT now(),
            started_on timestamptz,
            finished_on timestamptz,
            published_on timestamptz,
            due timestamptz NOT NULL DEFAULT now(),
            worker text
        );
        CREATE UNIQUE INDEX task_idem_key ON task (idem_key) WHERE idem_key IS NOT NULL;
        CREATE INDEX task_due ON task (due) WHERE published_on IS NULL AND state = 'queued';
        CREATE INDEX task_published ON task (published_on) WHERE state IN ('queued', 'running');
        CREATE INDEX task_root ON task (root_id);
        CREATE INDEX task_parent ON task (parent_id) WHERE parent_id IS NOT NULL;
        CREATE TABLE task_partial (
            task_id bigint NOT NULL REFERENCES task ON DELETE CASCADE,
            seq int NOT NULL,
            root_id bigint NOT NULL,
            value jsonb NOT NULL,
            created_on timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (task_id, seq)
        );
        CREATE INDEX task_partial_root ON task_partial (root_id);
        ALTER TABLE worker_process ADD COLUMN health text;
    """)


def downgrade() -> None:
    op.execute("""
        ALTER TABLE worker_process DROP COLUMN health;
        DROP TABLE task_partial;
        DROP TABLE task;
    """)
