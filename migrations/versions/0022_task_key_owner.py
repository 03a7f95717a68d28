"""A task's idempotency key is its owner's (issue 17): ``task_idem_key`` on the key and
``coalesce(owner, '')``, so another token's same key is another task; follow-ups (owner NULL)
share the unauthenticated namespace, as before. A revision of its own, not an edit of 0021: a
database already at 0021 keeps the key unique on its own until this runs.

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-30
"""
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        DROP INDEX task_idem_key;
        CREATE UNIQUE INDEX task_idem_key ON task (idem_key, coalesce(owner, ''))
            WHERE idem_key IS NOT NULL;
        """)


def downgrade() -> None:
    # Two owners' tasks may share a key by now: the older keeps it, as 0021's index requires.
    op.execute("""
        UPDATE task t SET idem_key = NULL
        WHERE idem_key IS NOT NULL AND EXISTS (
            SELECT 1 FROM task o WHERE o.idem_key = t.idem_key AND o.id < t.id);
        DROP INDEX task_idem_key;
        CREATE UNIQUE INDEX task_idem_key ON task (idem_key) WHERE idem_key IS NOT NULL;
        """)
