"""Tests' views of stored links since migration 0023, in the shape of the tables they replace,
so a test keeps its assertion whatever the storage: ``JOB_RESULT`` is a job's (job_id,
refer_id, url_id) result rows (its pages' link sets at the versions it used, and the
``job_result`` rows of a job made before 0023), ``URL_LINK`` each page's (refer_id, url_id)
links at its current version. Use them as ``FROM {JOB_RESULT} WHERE job_id = $1``."""

from __future__ import annotations

import asyncpg

JOB_RESULT = """(
    SELECT jp.job_id, jp.url_id AS refer_id, k.url_id FROM job_page jp
    JOIN url_links l ON l.url_id = jp.url_id AND l.version = jp.version
    CROSS JOIN LATERAL unnest(l.links) AS k(url_id)
    UNION SELECT job_id, refer_id, url_id FROM job_result) AS job_result"""

URL_LINK = """(
    SELECT l.url_id AS refer_id, k.url_id FROM url u
    JOIN url_links l ON l.url_id = u.id AND l.version = u.version
    CROSS JOIN LATERAL unnest(l.links) AS k(url_id)) AS url_link"""


async def write_result(db: asyncpg.Connection, job: int, derived: bool, pairs: str,
                       *args: object) -> None:
    """Store the job's result straight: ``pairs`` is a SELECT of (refer_id, url_id) rows (its
    parameters from $2: $1 is the job). ``derived``: as a job since migration 0023 has it (a
    link set per page at its current version, a job_page row each); else as a job made before
    it (``job.links_derived`` false, job_result rows)."""
    if not derived:
        await db.execute("UPDATE job SET links_derived = false WHERE id = $1", job)
        await db.execute(f"""
            INSERT INTO job_result (job_id, refer_id, url_id)
            SELECT $1, p.refer_id, p.url_id FROM ({pairs}) p ON CONFLICT DO NOTHING""",
            job, *args)
        return
    await db.execute(f"""
        WITH p AS ({pairs}), s AS (
            INSERT INTO url_links (url_id, version, n, links)
            SELECT u.id, u.version, count(DISTINCT p.url_id),
                   array_agg(DISTINCT p.url_id ORDER BY p.url_id)
            FROM p JOIN url u ON u.id = p.refer_id
            GROUP BY u.id, u.version
            RETURNING url_id, version)
        INSERT INTO job_page (job_id, url_id, version) SELECT $1, url_id, version FROM s""",
        job, *args)
