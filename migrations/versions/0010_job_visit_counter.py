"""job.visits: the size of a capped job's visited set, kept with it, for the ``maxPages`` cap.

The cap used to count the job's ``job_visit`` rows on every commit that queued children, under
the job row's lock: O(job) per commit, every commit of the job serialised behind it, and the
lock taken mid-transaction could close a cycle with another transaction's level update. The
count is now kept in ``job.visits`` by the statements that insert ``job_visit`` rows (jobs with
``max_pages`` only: for the others it stays NULL and their commits never touch the job row).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        ALTER TABLE job ADD COLUMN visits integer;  -- job_visit rows; NULL: no max_pages
        UPDATE job SET visits = (SELECT count(*) FROM job_visit v WHERE v.job_id = job.id)
        WHERE max_pages IS NOT NULL;
        ALTER TABLE job ADD CONSTRAINT job_visits_counted
            CHECK ((max_pages IS NULL) = (visits IS NULL));
    """)


def downgrade() -> None:
    op.execute("ALTER TABLE job DROP COLUMN visits")
