"""``harvester up`` (what ``make run`` runs): one command starts everything, crawls the demo
site, keeps its data across restarts, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil
import pytest
from aiohttp import web

from harvester_ops.demo_site import create_demo_app
from harvester_ops.embedded import free_port


async def wait_http(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def start_up(data: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "harvester_ops.cli", "up", "--data-dir", str(data),
                             "-addr", f"127.0.0.1:{port}", "--workers", "2", *extra],
                            start_new_session=True)


def live_workers(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(proc.pid).children():
        try:
            if "worker" in child.cmdline():
                found.append(child)
        except psutil.Error:  # exited (a zombie until the supervisor reaps it)
            pass
    return found


def ctrl_c(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """SIGINT to the foreground process group, as a terminal's Ctrl-C; returns what it ran."""
    tree = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(60) == 0
    return tree


async def test_up_crawls_stops_cleanly_and_keeps_data(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    data = tmp_path / "data"
    demo = web.AppRunner(create_demo_app())
    await demo.setup()
    demo_port = free_port()
    await web.TCPSite(demo, "127.0.0.1", demo_port).start()
    port = free_port()
    proc = start_up(data, port)
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_http(base + "/healthz")
        async with aiohttp.ClientSession() as s:
            async with s.post(base + "/", data=f"http://127.0.0.1:{demo_port}/\n") as r:
                job = (await r.json())["jobId"]
            for _ in range(600):
                async with s.get(f"{base}/status/{job}") as r:
                    st = await r.json()
                if st["pending"] == 0:
                    break
                await asyncio.sleep(0.1)
            assert st["completed"] == 1 and st["pages"]["fetched"] >= 4
            async with s.get(f"{base}/result/{job}") as r:
                result = await r.json()
        assert f"http://127.0.0.1:{demo_port}/news/" in result[f"http://127.0.0.1:{demo_port}/"]
        # A tier that dies is restarted by the supervisor.
        workers = live_workers(proc)
        assert len(workers) == 2
        workers[0].kill()
        for _ in range(100):
            now = live_workers(proc)
            if len(now) == 2 and workers[0].pid not in {p.pid for p in now}:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the killed worker was not restarted")
        tree = ctrl_c(proc)
        assert len(tree) >= 5  # postgres, nats-server, web server, foreman, 2 workers
        assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

        proc = start_up(data, port)
        await wait_http(base + "/healthz")
        async with aiohttp.ClientSession() as s, s.get(f"{base}/status/{job}") as r:
            assert r.status == 200 and (await r.json())["completed"] == 1
        ctrl_c(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        await demo.cleanup()


async def test_nothing_outlives_a_killed_supervisor(tmp_path: Path) -> None:
    """SIGKILL to ``harvester up`` alone: PostgreSQL, nats-server and every tier stop too, and
    the next ``harvester up`` starts on the same data. Its ``-log-level`` reaches every tier."""
    tmp_path.chmod(0o755)
    data = tmp_path / "data"
    port = free_port()
    proc = start_up(data, port, "-log-level", "warning")
    try:
        await wait_http(f"http://127.0.0.1:{port}/healthz")
        tree = psutil.Process(proc.pid).children(recursive=True)
        names = [" ".join(p.cmdline()) for p in tree]
        assert any("postgres" in n for n in names) and any("nats-server" in n for n in names)
        # The tiers are the supervisor's own children: a worker's HTML parser processes run
        # "-m worker.extractors.lanes", and while one is being spawned (between fork and exec)
        # it still shows its worker's command line, so only direct children are counted.
        direct = [" ".join(p.cmdline()) for p in psutil.Process(proc.pid).children()]
        assert sum("-m worker " in n + " " for n in direct) == 2, direct
        tiers = [n for n in direct
                 if any(f"-m {t} " in n + " " for t in ("web_server", "foreman", "worker"))]
        assert len(tiers) == 4 and all("-log-level warning" in n for n in tiers), tiers
        proc.kill()  # the supervisor only, not its process group
        proc.wait(10)
        _, alive = psutil.wait_procs(tree, timeout=60)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
        proc = start_up(data, port)
        await wait_http(f"http://127.0.0.1:{port}/healthz")
        ctrl_c(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_web_server_exits_at_once_when_its_port_is_taken(tmp_path: Path) -> None:
    """One line on stderr and status 1, whether or not PostgreSQL and NATS are reachable."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = {**os.environ, "HARVESTER_DATABASE_URL": f"postgresql://x@127.0.0.1:{free_port()}/x",
               "HARVESTER_NATS_URL": f"nats://127.0.0.1:{free_port()}"}
        started = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "web_server", "-addr", f"127.0.0.1:{port}"],
                           env=env, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"web_server: cannot listen on 127.0.0.1:{port}: Address already in use"], r.stderr
    assert time.monotonic() - started < 30


def test_up_fails_when_a_tier_cannot_start(tmp_path: Path) -> None:
    """The web server's port is taken: ``harvester up`` does not claim to be up; it stops what it
    started and exits 1, naming the tier."""
    tmp_path.chmod(0o755)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "harvester_ops.cli", "up", "--data-dir",
                                 str(tmp_path / "data"), "-addr", f"127.0.0.1:{port}",
                                 "--workers", "1"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, err
    assert "Harvester is up" not in out
    assert "harvester up: web_server exited with status 1 during start-up; stopping" in err
    assert f"web_server: cannot listen on 127.0.0.1:{port}: Address already in use" in err


@pytest.mark.parametrize("tier", ["foreman", "worker", "web_server"])
def test_a_tier_stops_on_sigterm_while_it_retries_at_start(tier: str, tmp_path: Path) -> None:
    """PostgreSQL and NATS unreachable: the tier retries its connections; SIGTERM then stops it
    at once (status 0), instead of leaving it retrying for ever."""
    env = {**os.environ, "HARVESTER_DATABASE_URL": f"postgresql://x@127.0.0.1:{free_port()}/x",
           "HARVESTER_NATS_URL": f"nats://127.0.0.1:{free_port()}"}
    log = tmp_path / "stderr"
    args = ["-addr", f"127.0.0.1:{free_port()}"] if tier == "web_server" else []
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", tier, *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while " WARNING " not in log.read_text():  # a connection failed: it is retrying
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
