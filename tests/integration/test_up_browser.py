"""``harvester up --browser-workers`` (CC-4, CC-5): init functions run once per worker process
(2 http workers and a browser worker: 3 calls, 3 processes; tasks add none); a worker killed
with SIGKILL mid-task is restarted (its init runs once more) and its task is redelivered and
finishes once, at attempt 2; Ctrl-C leaves no Chromium behind. Without an executable
browserPath, ``up`` stops at once with one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from harvester_ops.embedded import free_port
from tests.integration.test_up import ctrl_c, wait_http
from tests.polling import until

CHROMIUM = "/usr/bin/chromium"


def start_up(data: Path, port: int, config: Path,
             env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "harvester_ops.cli", "up", "--data-dir", str(data),
         "-addr", f"127.0.0.1:{port}", "-config", str(config), "--workers", "2",
         "--browser-workers", "1", "--browser-pages", "2"],
        start_new_session=True, env=env)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def chromium(procs: list[psutil.Process]) -> list[psutil.Process]:
    found = []
    for p in procs:
        try:
            if "chromium" in p.name() or any("chromium" in a for a in p.cmdline()[:1]):
                found.append(p)
        except psutil.Error:
            pass
    return found


async def test_init_per_process_and_a_killed_worker_restarted_with_its_task(
        tmp_path: Path) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: run `make browser` (Debian's chromium)")
    tmp_path.chmod(0o755)
    init_log, task_log = tmp_path / "init.log", tmp_path / "task.log"
    config = tmp_path / "harvester.json"
    config.write_text(json.dumps({
        "ackWait": "3s", "heartbeatInterval": "500ms", "shutdownTimeout": "5s",
        "init": ["tests.init_fixture:record_init"],
        "tasks": {"add": "tests.tasks_fixture:add", "slow": "tests.tasks_fixture:slow"}}))
    port = free_port()
    env = {**os.environ, "HARVESTER_TEST_INIT_LOG": str(init_log),
           "HARVESTER_TEST_TASK_LOG": str(task_log)}
    proc = start_up(tmp_path / "data", port, config, env)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_http(base + "/healthz")
        await until(lambda: len(lines(init_log)) >= 3, 60, "3 init calls")
        pids = lines(init_log)
        assert len(pids) == 3 and len(set(pids)) == 3, pids
        async with aiohttp.ClientSession() as http:
            async def get(path: str) -> Any:
                async with http.get(base + path) as r:
                    assert r.status == 200, await r.text()
                    return await r.json()

            async def post_task(body: dict[str, Any]) -> int:
                async with http.post(base + "/tasks", json=body) as r:
                    assert r.status == 200, await r.text()
                    return int((await r.json())["taskId"])

            async def three_workers() -> bool:
                kinds = sorted(w["kinds"] for w in (await get("/workers"))["workers"])
                return kinds == [["browser"], ["http"], ["http"]]
            await until(three_workers, 30, "2 http workers and a browser worker live")

            adds = [await post_task({"task": "add", "args": {"a": i, "b": 1}}) for i in range(3)]

            async def added() -> bool:
                return [(await get(f"/tasks/{t}"))["state"] for t in adds] == ["succeeded"] * 3
            await until(added, 30, "3 add tasks")
            assert [(await get(f"/tasks/{t}"))["result"] for t in adds] == [1, 2, 3]
            assert lines(init_log) == pids  # tasks call no init

            slow = await post_task({"task": "slow", "args": {"seconds": 4}})
            await until(lambda: len(lines(task_log)) >= 1, 30, "the slow task started")
            (start,) = lines(task_log)
            _, pid, _, attempt = start.split()
            assert (pid in pids, attempt) == (True, "1")
            os.kill(int(pid), signal.SIGKILL)
            await until(lambda: len(lines(init_log)) == 4, 15, "the killed worker restarted")
            assert lines(init_log)[3] not in pids

            async def finished() -> bool:
                return (await get(f"/tasks/{slow}"))["state"] in ("succeeded", "failed")
            await until(finished, 30, "the slow task redelivered and finished")
            info = await get(f"/tasks/{slow}")
            assert (info["state"], info["attempts"]) == ("succeeded", 2), info
            assert [ln.split()[0] for ln in lines(task_log)] == ["start", "start", "finish"]
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert chromium(tree), "the browser worker runs a Chromium"
        tree = ctrl_c(proc)
        left = [p for p in chromium(tree) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, left
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_up_without_chromium_stops_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-chromium"
    r = subprocess.run(
        [sys.executable, "-m", "harvester_ops.cli", "up", "--data-dir", str(tmp_path / "d"),
         "--workers", "0", "--browser-workers", "1"],
        env={**os.environ, "HARVESTER_BROWSER_PATH": str(missing)},
        capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and str(missing) in r.stderr and "make browser" in r.stderr
    assert not (tmp_path / "d").exists()  # nothing started


def test_up_needs_a_worker(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "harvester_ops.cli", "up", "--data-dir", str(tmp_path / "d"),
         "--workers", "0"], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and "--browser-workers" in r.stderr
