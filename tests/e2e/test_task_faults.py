"""The task API under faults, against real PostgreSQL and NATS:

- sync tasks past ``taskTimeout`` are recorded failed at the timeout, but their threads keep
  their slots until they return (no more threads than ``taskConcurrency``);
- failing tasks are the user's, not the worker's: they do not degrade it (CC-4);
- a follow-up whose key another tree uses is still enqueued (keys are scoped to the tree);
  one whose key names another call in its own tree fails its task with KeyConflict;
- the task feeder publishes only as the task stream has room, the task watchdog republishes
  only messages that are really gone (a purged stream), and the tasks then run, even when the
  visit watchdog's round fails;
- PostgreSQL and NATS restarted with tasks queued, published and running: every task
  succeeds, once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest

from foreman import schedule
from foreman.tasks import feed_tasks, task_watch_once
from harvester_ops.embedded import EmbeddedNats, EmbeddedPostgres
from shared import bus
from shared.config import Settings, stream_name
from shared.db import tasks, workers
from shared.db.frontier import DueFrontier
from tests.e2e.stack import Stack
from tests.e2e.test_tasks import get_task, run_task, task_settings, wait_task
from tests.polling import until

pytestmark = pytest.mark.e2e


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def test_a_timed_out_sync_task_keeps_its_slot_until_its_thread_returns(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "runs.log"
    monkeypatch.setenv("HARVESTER_TEST_TASK_LOG", str(log))
    settings = task_settings(settings, task_concurrency=2, task_timeout=0.5)
    stack = await Stack(settings).start()
    try:
        stuck = [await run_task(stack, "slow", seconds=3) for _ in range(2)]
        await until(lambda: _all_started(stack, stuck), what="both stuck tasks started")
        later = await run_task(stack, "slow", seconds=0)
        # Recorded failed at the timeout, while their threads still run ...
        for t in stuck:
            done = await wait_task(stack, t)
            assert (done["state"], done["error"]["type"]) == ("failed", "TimeoutError")
        assert not [line for line in log_lines(log) if line.startswith("finish")]
        # ... and no third thread starts before one of them returned.
        assert (await wait_task(stack, later))["state"] == "succeeded"
        lines = log_lines(log)
        first_finish = next(i for i, line in enumerate(lines) if line.startswith("finish"))
        later_start = next(i for i, line in enumerate(lines)
                           if line.startswith("start") and line.split()[2] == str(later))
        assert first_finish < later_start, lines
    finally:
        await stack.stop()


async def _all_started(stack: Stack, ids: list[int]) -> bool:
    return all([(await get_task(stack, t))["state"] == "running" for t in ids])


async def test_failing_tasks_do_not_degrade_the_worker(settings: Settings) -> None:
    settings = task_settings(settings, worker_max_error_rate=0.5, worker_health_window=4)
    stack = await Stack(settings).start()
    try:
        failing = [await run_task(stack, "boom") for _ in range(8)]
        for t in failing:
            assert (await wait_task(stack, t))["state"] == "failed"
        assert (await wait_task(stack, await run_task(stack, "add", a=1, b=2)))["result"] == 3
        assert not any(t.done() for _, t in stack.tasks), "a tier ended"
    finally:
        await stack.stop()


@pytest.fixture
async def queue(settings: Settings) -> AsyncIterator[tuple[Settings, asyncpg.Pool, Any]]:
    small = task_settings(settings, work_queue_limit=3, stale_after=0.2)
    pool = await asyncpg.create_pool(small.database_url, min_size=1, max_size=4)
    nc = await nats.connect(small.nats_url)
    js = nc.jetstream()
    await bus.ensure_task_streams(js, small)
    try:
        yield small, pool, js
    finally:
        await nc.close()
        await pool.close()


async def test_the_task_feeder_publishes_as_the_stream_has_room(
        queue: tuple[Settings, asyncpg.Pool, Any]) -> None:
    settings, pool, js = queue
    subject = bus.task_subject(settings, "http")
    async with pool.acquire() as conn:
        ids = [(await tasks.create(conn, "add", "http", {"a": i, "b": 0}, None))[0]
               for i in range(5)]
    assert await feed_tasks(settings, pool, js) == 3  # workQueueLimit
    assert await bus.stream_depth(js, subject) == 3
    assert await feed_tasks(settings, pool, js) == 0  # no room: nothing claimed for good
    async with pool.acquire() as conn:
        unpublished = await conn.fetchval(
            "SELECT count(*) FROM task WHERE id = ANY($1) AND published_on IS NULL", ids)
    assert unpublished == 2
    await js.purge_stream(stream_name(subject))
    assert await feed_tasks(settings, pool, js) == 2
    assert await feed_tasks(settings, pool, js) == 0


async def test_the_task_watchdog_republishes_only_lost_messages_and_they_run(
        queue: tuple[Settings, asyncpg.Pool, Any]) -> None:
    settings, pool, js = queue
    subject = bus.task_subject(settings, "http")
    async with pool.acquire() as conn:
        a = (await tasks.create(conn, "add", "http", {"a": 1, "b": 2}, None))[0]
        b = (await tasks.create(conn, "add", "http", {"a": 3, "b": 4}, None))[0]
        await workers.beat(conn, uuid.uuid4(), ["http"], "t", 1, "test")
    assert await feed_tasks(settings, pool, js) == 2
    async with pool.acquire() as conn:  # long published: waiting in line, or lost?
        await conn.execute("UPDATE task SET published_on = now() - interval '1 hour' "
                           "WHERE id = ANY($1)", [a, b])
    assert await task_watch_once(settings, pool, js) == 0  # both still in the stream
    assert await bus.stream_depth(js, subject) == 2
    await js.purge_stream(stream_name(subject))  # both lost
    assert await task_watch_once(settings, pool, js) == 2
    assert await task_watch_once(settings, pool, js) == 0
    assert await feed_tasks(settings, pool, js) == 2
    stack = await Stack(settings).start(foremen=0)
    try:
        assert [(await wait_task(stack, t))["result"] for t in (a, b)] == [3, 7]
    finally:
        await stack.stop()


async def test_tasks_survive_postgres_and_nats_restarts_each_once(
        settings: Settings, postgres: EmbeddedPostgres, tmp_path: Path) -> None:
    own = EmbeddedNats(tmp_path / "nats")
    own.start()
    # 6 deliveries: 1 s apart they would all fail within an 8 s outage (and the tasks wait
    # for the watchdog, staleAfter); backing off, the last comes 15.5 s after the first.
    settings = task_settings(settings, nats_url=own.url, task_concurrency=2, ack_wait=30,
                             max_deliver=6)
    stack = await Stack(settings).start()
    try:
        for restart, outage in ((postgres, 8), (own, 2)):
            ids = [await run_task(stack, "nap", seconds=0.5) for _ in range(6)]
            await until(lambda ids=ids: _any_running(stack, ids), what="a task running")
            await asyncio.to_thread(restart.stop)  # queued, published and running tasks
            await asyncio.sleep(outage)  # the outage (not a synchronisation)
            await asyncio.to_thread(restart.start)
            await stack.wait_ready()
            for t in ids:
                done = await wait_task(stack, t, timeout=60)
                assert (done["state"], done["result"]) == ("succeeded", "rested"), done
                assert done["attempts"] <= 2, done
        conn = await asyncpg.connect(settings.database_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM task") == 12  # nothing doubled
        finally:
            await conn.close()
    finally:
        await stack.stop()
        own.stop()


async def _any_running(stack: Stack, ids: list[int]) -> bool:
    return any([(await get_task(stack, t))["state"] == "running" for t in ids])



async def test_the_task_watchdog_runs_when_the_visit_round_fails(
        queue: tuple[Settings, asyncpg.Pool, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    settings, pool, js = queue
    settings = settings.model_copy(update={"watchdog_interval": 0.05})
    async with pool.acquire() as conn:
        lost = (await tasks.create(conn, "add", "http", {"a": 1, "b": 2}, None))[0]
        await workers.beat(conn, uuid.uuid4(), ["http"], "t", 1, "test")
        await conn.execute("UPDATE task SET published_on = now() - interval '1 hour' "
                           "WHERE id = $1", lost)  # its message is nowhere: lost

    async def visit_round_fails(*_: Any) -> None:
        raise asyncpg.exceptions.DeadlockDetectedError("the visit round failed")

    monkeypatch.setattr(schedule, "watch_once", visit_round_fails)
    stop = asyncio.Event()
    dog = asyncio.create_task(schedule.watchdog(settings, pool, DueFrontier(settings), stop, js))
    try:
        async def republished() -> bool:
            async with pool.acquire() as conn:
                return bool(await conn.fetchval(
                    "SELECT published_on IS NULL FROM task WHERE id = $1", lost))
        await until(republished, timeout=10, what="the lost task unpublished")
    finally:
        stop.set()
        await dog


async def test_a_follow_up_key_is_its_trees_and_a_clash_fails_the_task(
        settings: Settings) -> None:
    settings = task_settings(settings)
    settings = settings.model_copy(update={
        "tasks": {**settings.tasks, "keyed": "tests.task_keys_fixture:keyed"}})
    stack = await Stack(settings).start()
    try:
        roots = [await run_task(stack, "keyed", key="page-1", values=[v]) for v in (10, 20)]
        for root, v in zip(roots, (10, 20)):
            done = await wait_task(stack, root)
            assert done["state"] == "succeeded" and done["result"] == [f"{root}:page-1"], done
            assert done["tree"]["results"] and len(done["children"]) == 1, done
            child = await wait_task(stack, done["children"][0])
            assert (child["result"], child["key"]) == (v, f"{root}:page-1")
        clash = await wait_task(stack, await run_task(stack, "keyed", key="k", values=[1, 2]))
        assert (clash["state"], clash["error"]["type"], clash["children"]) == (
            "failed", "shared.db.tasks.KeyConflict", []), clash
        assert f"{clash['taskId']}:k" in clash["error"]["message"]
    finally:
        await stack.stop()
