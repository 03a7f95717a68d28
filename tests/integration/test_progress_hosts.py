"""/status's robots-blocked hosts (``progress.hosts``) and ``jobs.job_failures`` tell refusals
from failures with the one SQL predicate (``progress.REFUSAL_SQL``); a host is the politeness
key of ``harvester_host``, the same as ``shared.urls.host_key`` (userinfo up to its last ``@``)."""

from __future__ import annotations

import asyncpg

from shared.db import jobs, progress, visits
from shared.robots import BLOCKED, BLOCKED_CREDENTIALS, TRAP
from shared.urls import host_key

A = "http://a.example"
ODD = "http://u@v@b.example/x"  # two @: the host is after the last one


async def test_blocked_hosts_and_failures_use_one_refusal_rule(db: asyncpg.Connection) -> None:
    urls = [f"{A}/1", f"{A}/2", ODD, f"{A}/3"]
    async with db.transaction():
        job, (a1, a2, odd, a3) = await jobs.create_job(db, urls, 3, False)
        await visits.block(db, {(job, a1): BLOCKED, (job, a2): f"{TRAP} (x)",
                                (job, odd): BLOCKED_CREDENTIALS})
        key = (job, a3)
        await visits.complete(db, await visits.lock_pending(db, [key]), {key: "abandoned"},
                              reasons={key: "abandoned: still pending"})
    _, _, blocked = await progress.hosts(db, job)
    assert blocked == [(A, 2), (host_key(ODD), 1)]
    assert host_key(ODD) == "http://b.example"
    refused = await jobs.job_failures(db, job, blocked=True)
    assert sorted(r["url"] for r in refused) == sorted([f"{A}/1", f"{A}/2", ODD])
    assert [r["url"] for r in await jobs.job_failures(db, job)] == [f"{A}/3"]
