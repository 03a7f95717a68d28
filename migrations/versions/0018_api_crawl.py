"""Crawling JSON APIs (issue 13): rate-limit state per API token, worker stats.

- ``api_token``: one row per (token, resource) (``core``, ``search``): the budget GitHub last
  reported (``lim``, ``remaining``, ``reset_at``), a pause (``paused_until``: a secondary limit,
  a ``Retry-After``, a 401) and the expiring leases of the requests in flight (as
  ``host.leases``: a killed worker's in-flight count heals). Shared by every worker on every
  machine, so a pool of workers spends one budget. ``token_id`` is ``t-`` and 12 hex digits of
  the token's SHA-256: the token itself is never stored.
- ``worker_process.stats``: what a worker reports at each beat (in flight, fetched by kind,
  pages per second, error rate, latency percentiles); NULL until its first beat with stats.

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-30
"""
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE api_token (token_id text NOT NULL, resource text NOT NULL, lim integer, remaining integer,
          reset_at timestamptz, paused_until timestamptz, leases timestamptz[] NOT NULL DEFAULT '{}',
          seen_on timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (token_id, resource));
        ALTER TABLE worker_process ADD COLUMN stats jsonb;
    """)


def downgrade() -> None:
    op.execute("""
        ALTER TABLE worker_process DROP COLUMN stats;
        DROP TABLE api_token;
    """)
