"""job_result without a foreign key to job: no per-row check on the largest table.

job_result gets one row per link of every processed page (about 26 per page in the benchmark),
and its foreign key fired one check query per row (520,000 in a 20,000-page crawl, a quarter
of the cost of the statement that writes results). Its rows are only ever written from locked
job_pending rows, which keep their own foreign key to job, and jobs.delete_job removes a job's
results explicitly.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-21
"""
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE job_result DROP CONSTRAINT IF EXISTS job_result_job_id_fkey")


def downgrade() -> None:
    op.execute("DELETE FROM job_result r WHERE NOT EXISTS (SELECT FROM job j WHERE j.id = r.job_id)")
    op.execute("ALTER TABLE job_result ADD CONSTRAINT job_result_job_id_fkey "
               "FOREIGN KEY (job_id) REFERENCES job(id) ON DELETE CASCADE")
