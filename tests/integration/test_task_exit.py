"""A stuck sync task never keeps its worker process from exiting: past ``taskTimeout`` it is
recorded failed, and on SIGTERM the worker exits after its drain although the task's thread
still runs (a daemon thread of its own, not the loop's default executor, which
``asyncio.run`` would wait for at exit)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import nats

from foreman.tasks import feed_tasks
from shared import bus
from shared.config import Settings
from shared.db import tasks


def start_worker(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:  # the child keeps its own copy
        return subprocess.Popen([sys.executable, "-m", "worker", "-config", str(config)],
                                env=env, stdout=out, stderr=subprocess.STDOUT)


async def test_a_worker_with_a_stuck_task_thread_exits_on_sigterm(settings: Settings,
                                                                    tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    config = tmp_path / "harvester.json"
    config.write_text(json.dumps({"taskTimeout": "1s", "shutdownTimeout": "1s",
                                  "tasks": {"slow": "tests.tasks_fixture:slow"}}))
    env = {**os.environ, "HARVESTER_DATABASE_URL": settings.database_url,
           "HARVESTER_NATS_URL": settings.nats_url, "HARVESTER_URL_TOPIC": settings.url_topic,
           "HARVESTER_WORK_TOPIC": settings.work_topic,
           "HARVESTER_TASK_TOPIC": settings.task_topic, "HARVESTER_LOG_LEVEL": "WARNING",
           "HARVESTER_TEST_TASK_LOG": str(log)}
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    nc = await nats.connect(settings.nats_url)
    worker = start_worker(config, env, tmp_path / "worker.log")
    try:
        js = nc.jetstream()
        await bus.ensure_task_streams(js, settings)
        async with pool.acquire() as conn:
            task_id, _ = await tasks.create(conn, "slow", "http", {"seconds": 3600}, None)
        assert await feed_tasks(settings, pool, js) == 1
        deadline = time.monotonic() + 60
        while True:
            async with pool.acquire() as conn:
                state = await conn.fetchval("SELECT state FROM task WHERE id = $1", task_id)
            if state == "failed":
                break
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, f"task still {state}"
            await asyncio.sleep(0.1)
        assert log.read_text().split()[0] == "start"  # its thread runs on, asleep
        worker.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(worker.wait, 30)
        except subprocess.TimeoutExpired:
            raise AssertionError("the worker did not exit: its stuck task thread held it") from None
        assert code == 0, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        await nc.close()
        await pool.close()
