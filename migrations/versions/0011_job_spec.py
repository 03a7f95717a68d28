"""job.spec: the job spec as ``POST /`` gave it (``shared.jobspec.JobSpec.stored``), shown by
``/status``. Old jobs get theirs from the columns that held it until now (which stay the hot
path's source of truth).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29
"""
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        ALTER TABLE job ADD COLUMN spec jsonb NOT NULL DEFAULT '{}';
        UPDATE job SET spec = jsonb_build_object(
            'depth', max_level, 'forceCrawl', force_crawl, 'sitemaps', sitemaps,
            'scope', jsonb_build_object('scope', scope, 'allow', to_jsonb(allow),
                                        'deny', to_jsonb(deny), 'maxPages', max_pages));
    """)


def downgrade() -> None:
    op.execute("ALTER TABLE job DROP COLUMN spec")
