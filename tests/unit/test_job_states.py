"""worker/crawl.py ``JobStates``: the state of a job whose visits wait at their host, read again
once ``JOB_STATE_TTL`` old, and read once however many visits find it due together."""

from __future__ import annotations

import asyncio

import pytest

from worker import crawl
from worker.crawl import JobState, JobStates

RUNNING: JobState = ("running", ())
PAUSED: JobState = ("paused", ("/private/",))


class Reads:
    """A job-state read that takes ``delay`` and counts itself; ``answers`` in turn."""

    def __init__(self, *answers: JobState | None, delay: float = 0.01) -> None:
        self.answers = list(answers)
        self.delay = delay
        self.calls: list[int] = []

    async def __call__(self, job_id: int) -> JobState | None:
        self.calls.append(job_id)
        await asyncio.sleep(self.delay)
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


async def test_visits_finding_a_state_due_together_share_one_read() -> None:
    reads = Reads(RUNNING)
    states = JobStates(reads)
    got = await asyncio.gather(*(states.get(7) for _ in range(64)),
                               *(states.get(8) for _ in range(3)))
    assert got == [RUNNING] * 67
    assert sorted(reads.calls) == [7, 8]  # one read a job, not one a visit


async def test_a_state_is_read_again_once_it_is_old(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crawl, "JOB_STATE_TTL", 0.05)
    reads = Reads(RUNNING, PAUSED, delay=0)
    states = JobStates(reads)
    assert await states.get(1) == RUNNING
    assert await states.get(1) == RUNNING  # within the time to live: kept
    assert reads.calls == [1]
    await asyncio.sleep(0.08)
    assert await states.get(1) == PAUSED  # the job was paused meanwhile
    assert reads.calls == [1, 1]


async def test_a_failed_read_is_not_kept() -> None:
    reads = Reads(None, RUNNING, delay=0)
    states = JobStates(reads)
    assert await states.get(1) is None  # the visit runs (crawl._stale_now: None)
    assert await states.get(1) == RUNNING  # and the next asks again
    assert reads.calls == [1, 1]


async def test_a_cancelled_waiter_leaves_the_read_to_the_others() -> None:
    reads = Reads(PAUSED, delay=0.05)
    states = JobStates(reads)
    first = asyncio.ensure_future(states.get(3))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(states.get(3))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == PAUSED
    assert first.cancelled()
    assert reads.calls == [3]
