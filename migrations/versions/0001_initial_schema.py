"""Initial schema: url, url_link, job, job_url, job_visit, job_pending, job_result, job_failure.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = """
-- Every URL Harvester has seen, in canonical form, with what its last fetch found.
CREATE TABLE url (
    id          bigserial PRIMARY KEY,
    url         text NOT NULL,
    mime        text NOT NULL DEFAULT '',   -- lower-case type; guessed from the extension until fetched
    crawled_on  timestamptz,                -- last fetch whose answer may be served from cache
    fetched_on  timestamptz,                -- last fetch attempt, successful or not
    status      integer,                    -- HTTP status of the last fetch (NULL: no response)
    error       text,                       -- why the last fetch failed, if it did
    final_url   text,                       -- where redirects ended
    redirects   text[],                     -- the redirect chain, in order
    CONSTRAINT url_unique UNIQUE (url)
);

-- Links found on a page at its last fetch (replaced on every fetch).
CREATE TABLE url_link (
    refer_id bigint NOT NULL,   -- the page
    url_id   bigint NOT NULL,   -- a link on it
    PRIMARY KEY (refer_id, url_id)
);

CREATE TABLE job (
    id          bigserial PRIMARY KEY,
    created_on  timestamptz NOT NULL DEFAULT now(),
    max_level   integer NOT NULL,
    force_crawl boolean NOT NULL DEFAULT false
);

-- The job URLs (origins), with counters kept in the same transactions as the work they count.
CREATE TABLE job_url (
    job_id       bigint NOT NULL REFERENCES job(id) ON DELETE CASCADE,
    url_id       bigint NOT NULL REFERENCES url(id),
    pending      integer NOT NULL DEFAULT 0,   -- visits of this origin queued or in flight
    processed    integer NOT NULL DEFAULT 0,
    fetched      integer NOT NULL DEFAULT 0,
    cached       integer NOT NULL DEFAULT 0,
    failed       integer NOT NULL DEFAULT 0,
    completed_on timestamptz,                  -- set in the transaction that brings pending to 0
    PRIMARY KEY (job_id, url_id),
    CONSTRAINT job_url_pending_nonnegative CHECK (pending >= 0)
);

-- The per-job visited set: each URL the job processes, at its shortest known link distance.
CREATE TABLE job_visit (
    job_id bigint NOT NULL REFERENCES job(id) ON DELETE CASCADE,
    url_id bigint NOT NULL,
    level  integer NOT NULL,
    PRIMARY KEY (job_id, url_id)
);

-- Visits queued or in flight: the frontier, and the outbox the foremen feed to the URL queue.
-- Inserted with the parent's completion, deleted with its own.
CREATE TABLE job_pending (
    job_id       bigint NOT NULL REFERENCES job(id) ON DELETE CASCADE,
    url_id       bigint NOT NULL,
    origin_id    bigint NOT NULL,          -- the job URL whose completion waits for this visit
    refer_id     bigint,                   -- the page that queued it (NULL for job URLs)
    reexpand     boolean NOT NULL DEFAULT false,  -- processed already; expand again from a lower level
    queued_on    timestamptz NOT NULL DEFAULT now(),
    published_on timestamptz,              -- put on the URL queue (NULL: not yet)
    requeues     integer NOT NULL DEFAULT 0,  -- times the watchdog published it again
    PRIMARY KEY (job_id, url_id)
);
CREATE INDEX job_pending_unpublished ON job_pending (queued_on) WHERE published_on IS NULL;
CREATE INDEX job_pending_published ON job_pending (published_on) WHERE published_on IS NOT NULL;

-- Visits of a job that failed: fetch errors, HTTP errors, and work abandoned by the watchdog.
CREATE TABLE job_failure (
    job_id    bigint NOT NULL REFERENCES job(id) ON DELETE CASCADE,
    url_id    bigint NOT NULL,
    status    integer,                   -- HTTP status, when there was a response
    reason    text NOT NULL,
    attempts  integer NOT NULL,          -- fetch attempts in this job (0: answered from the store)
    failed_on timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, url_id)
);

-- What a job found: every link on every page processed for the job.
CREATE TABLE job_result (
    job_id   bigint NOT NULL REFERENCES job(id) ON DELETE CASCADE,
    refer_id bigint NOT NULL,
    url_id   bigint NOT NULL,
    PRIMARY KEY (job_id, refer_id, url_id)
);
"""

DOWNGRADE = """
DROP TABLE IF EXISTS job_failure;
DROP TABLE IF EXISTS job_result;
DROP TABLE IF EXISTS job_pending;
DROP TABLE IF EXISTS job_visit;
DROP TABLE IF EXISTS job_url;
DROP TABLE IF EXISTS job;
DROP TABLE IF EXISTS url_link;
DROP TABLE IF EXISTS url;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
