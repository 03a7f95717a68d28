"""Per-job tables partitioned by job (issue 18): ``job_url``, ``job_visit``, ``job_pending``,
``job_failure``, ``job_page``, ``job_result`` and ``job_yield`` become tables partitioned by RANGE
of ``job_id``, ``JOB_RANGE`` consecutive job ids per partition (``job_visit_r0`` holds jobs 0-999,
``job_visit_r1`` jobs 1000-1999, ...). Purging every job of a range drops its partitions
(``shared.db.jobs.drop_job_range``) instead of deleting their rows; a job purged before its
neighbours still has its rows deleted.

Why RANGE and not one partition per job: the feeder's claim and the watchdog read
``job_pending`` across jobs, and a plan over thousands of partitions (one per kept job) costs
more than the rows it saves; a range of 1,000 ids keeps a running service at one or two live
partitions per table while a purge still frees whole tables.

- ``harvester_job_partitions(job)``: makes whatever partitions of the range holding ``job`` are
  missing (``CREATE TABLE ... LIKE`` then ``ATTACH PARTITION``, which takes SHARE UPDATE
  EXCLUSIVE on the parent, so the crawl's reads and writes go on), their indexes named after
  the parent's with the range as suffix (``job_pending_frontier_r0``) and 0006's statistics
  settings (a partitioned parent takes no storage parameters; autovacuum analyzes partitions).
- ``harvester_job_partitions_ahead()``: the range of the next job id, and the one after it once
  the next id is within ``AHEAD`` ids of its range's end (not before: an empty partition is one
  more for every plan to open and lock); housekeeping calls it every round and ``create_job``
  before each job, so a job's rows always have their partitions.

Keys, foreign keys, checks, defaults and indexes stay as they were, by name (on the partitioned
parent). The rows move set-based; upgrades are stop-the-world (``harvester up`` migrates before
it starts the tiers). The downgrade makes the plain tables again, with the same rows.

Revision ID: 0024
Revises: 0023
Create Date: 2026-11-30
"""
from alembic import op
from sqlalchemy import text

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

JOB_RANGE = 1000  # job ids per partition (shared.db.jobs.JOB_RANGE reads the same number)
# The next range is made once the next job id is this close to its range's end: not before,
# as every partition, even empty, is one more for the statements' plans to open and lock.
AHEAD = 100
TABLES = ("job_url", "job_visit", "job_pending", "job_failure", "job_page", "job_result",
          "job_yield")
# What 0006 and 0023 gave these tables as plain tables (the downgrade gives it back).
ANALYZE = "autovacuum_analyze_threshold = 500, autovacuum_analyze_scale_factor = 0.02"
ANALYZED = ("job_visit", "job_pending", "job_failure", "job_page", "job_result")
LIKE = "INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE"
NAMES = ", ".join(f"'{t}'" for t in TABLES)

FUNCTIONS = f"""
CREATE FUNCTION harvester_job_partitions(p_job bigint) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    r    bigint := p_job / {JOB_RANGE};
    t    text;
    part text;
    ix   record;
    made integer := 0;
BEGIN
    FOREACH t IN ARRAY ARRAY[{NAMES}] LOOP
        part := t || '_r' || r;
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        -- One maker at a time; the lock also makes the second see what the first made.
        EXECUTE format('LOCK TABLE %I IN SHARE UPDATE EXCLUSIVE MODE', t);
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        EXECUTE format('CREATE TABLE %I (LIKE %I {LIKE}) WITH ({ANALYZE})', part, t);
        FOR ix IN SELECT c.relname AS name, pg_get_indexdef(x.indexrelid) AS def
                  FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
                  WHERE x.indrelid = t::regclass AND NOT x.indisprimary LOOP
            EXECUTE replace(ix.def, format('INDEX %s ON ONLY public.%s ', ix.name, t),
                            format('INDEX %s_r%s ON public.%s ', ix.name, r, part));
        END LOOP;
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
                       t, part, r * {JOB_RANGE}, (r + 1) * {JOB_RANGE});
        made := made + 1;
    END LOOP;
    RETURN made;
END $$;

CREATE FUNCTION harvester_job_partitions_ahead() RETURNS integer LANGUAGE sql AS $$
    SELECT harvester_job_partitions(n)
           + CASE WHEN n % {JOB_RANGE} >= {JOB_RANGE - AHEAD}
                  THEN harvester_job_partitions(n + {JOB_RANGE}) ELSE 0 END
    FROM (SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END AS n
          FROM job_id_seq) s $$;
"""


def _rebuild(table: str, partitioned: bool) -> None:
    """Rename ``table`` to ``<table>_old`` (its key and indexes too) and make ``table`` again,
    partitioned or plain, with the same columns, checks, keys, foreign keys and indexes."""
    bind = op.get_bind()
    indexes = bind.execute(text(
        "SELECT c.relname, pg_get_indexdef(x.indexrelid) FROM pg_index x "
        "JOIN pg_class c ON c.oid = x.indexrelid "
        "WHERE x.indrelid = CAST(:t AS regclass) AND NOT x.indisprimary ORDER BY 1"),
        {"t": table}).all()
    constraints = bind.execute(text(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = CAST(:t AS regclass) AND contype IN ('p', 'f') "
        "ORDER BY contype DESC, conname"), {"t": table}).all()
    old = f"{table}_old"
    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    op.execute(f"ALTER TABLE {old} RENAME CONSTRAINT {table}_pkey TO {old}_pkey")
    for name, _ in indexes:
        op.execute(f"ALTER INDEX {name} RENAME TO {name}_old")
    if partitioned:
        op.execute(f"CREATE TABLE {table} (LIKE {old} {LIKE}) PARTITION BY RANGE (job_id)")
    else:
        options = f" WITH ({ANALYZE})" if table in ANALYZED else ""
        op.execute(f"CREATE TABLE {table} (LIKE {old} {LIKE}){options}")
    for name, definition in constraints:
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}")
    for _, definition in indexes:
        op.execute(definition.replace(" ON ONLY ", " ON "))


def _move_rows() -> None:
    for table in TABLES:
        op.execute(f"INSERT INTO {table} SELECT * FROM {table}_old")
        op.execute(f"DROP TABLE {table}_old")
        op.execute(f"ANALYZE {table}")


def upgrade() -> None:
    for table in TABLES:
        _rebuild(table, partitioned=True)
    op.execute(FUNCTIONS)
    ranges = " UNION ".join(f"SELECT DISTINCT job_id / {JOB_RANGE} AS r FROM {t}_old"
                            for t in TABLES)
    op.execute(f"SELECT harvester_job_partitions(r * {JOB_RANGE}) FROM ({ranges}) s")
    op.execute("SELECT harvester_job_partitions_ahead()")
    _move_rows()


def downgrade() -> None:
    for table in TABLES:
        _rebuild(table, partitioned=False)
    _move_rows()  # dropping each partitioned <table>_old drops its partitions
    op.execute("DROP FUNCTION harvester_job_partitions_ahead(); "
               "DROP FUNCTION harvester_job_partitions(bigint)")
