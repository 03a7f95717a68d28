"""URLs of any length: ``url`` is unique by the MD5 of its text, not by a btree on the text.

A btree entry holds at most about 2.7 KB (after compression), so a longer URL could not be
stored: a page linking one failed to commit, again and again, and as a job URL it was a 500.
The unique index is now on ``md5(url)::uuid`` (16 bytes an entry, smaller than most URLs), and
every look-up by text goes through it: ``md5(url)::uuid = md5($1)::uuid AND url = $1``
(``shared/db/pages.py`` ``upsert_urls``). Two distinct URLs with the same MD5 cannot both be
stored; the second one's page then fails with the reason, like any page that cannot be stored.

The downgrade restores ``url_unique``; it fails if a URL too long for it was stored meanwhile.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE UNIQUE INDEX url_hash ON url ((md5(url)::uuid))")
    op.execute("ALTER TABLE url DROP CONSTRAINT url_unique")


def downgrade() -> None:
    op.execute("ALTER TABLE url ADD CONSTRAINT url_unique UNIQUE (url)")
    op.execute("DROP INDEX url_hash")
