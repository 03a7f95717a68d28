"""``visits.plan`` reads a job's spec "traps" only for a job its caller does not know yet (the
foreman keeps each job's limits: a job's spec never changes)."""

from __future__ import annotations

import json

import asyncpg

from shared.db import jobs, visits
from shared.jobspec import stored_spec
from shared.scope import Scope


async def test_plan_reads_the_traps_only_of_jobs_not_known(db: asyncpg.Connection) -> None:
    spec = {**stored_spec(3, False, False, Scope(), None), "traps": {"maxPathDepth": 5}}
    async with db.transaction():
        job, (url,) = await jobs.create_job(db, ["http://h.example/a"], 3, False, spec=spec)
    (first,) = await visits.plan(db, [(job, url)], 3600)
    assert first.traps is not None and json.loads(first.traps) == {"maxPathDepth": 5}
    (known,) = await visits.plan(db, [(job, url)], 3600, known_traps={job})
    assert known.traps is None
    assert (known.job_id, known.url_id, known.url) == (first.job_id, first.url_id, first.url)
    (other,) = await visits.plan(db, [(job, url)], 3600, known_traps={job + 1})
    assert other.traps == first.traps
