"""host.robots_unresolved: the host's name did not resolve when its robots.txt was fetched.

Such a host has no server to ask for robots.txt or for pages: once its robots.txt has failed
``robotsMaxFailures`` times, its visits fail with the resolver's error rather than being blocked
as "robots.txt unreachable" (which is for a server that does not answer).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        ALTER TABLE host ADD COLUMN robots_unresolved text;  -- the resolver's error, else NULL
    """)


def downgrade() -> None:
    op.execute("ALTER TABLE host DROP COLUMN IF EXISTS robots_unresolved")
