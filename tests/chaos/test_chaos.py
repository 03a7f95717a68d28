"""Chaos: kill and restart every part of Harvester mid-crawl; the job still completes with the
result of an undisturbed run, nothing stays pending, status is never early, and re-fetches are
confined to the fault (each test prints how many the fault caused)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from shared.config import Settings
from shared.embedded import EmbeddedNats, EmbeddedPostgres
from tests.chaos.procs import GraphSite, Tiers

pytestmark = pytest.mark.chaos

DEPTH = 6
# In flight when a fault hits: at most a worker's concurrency (16) per worker, plus a batch.
REFETCH_BOUND_PER_FAULT = 2 * 16 + 16


@pytest.fixture
async def site() -> AsyncIterator[GraphSite]:
    s = await GraphSite().start()
    yield s
    await s.stop()


@pytest.fixture
async def tiers(settings: Settings, tmp_path: Path) -> AsyncIterator[Tiers]:
    t = Tiers(settings, tmp_path)
    yield t
    codes = await t.down()
    # Graceful shutdown on SIGTERM in every tier: finish in flight, exit 0.
    assert all(code == 0 for code in codes.values()), f"exit codes on SIGTERM: {codes}\n{t.tail()}"


class Watch:
    """Polls a job's status; each time it reads complete, checks that nothing is pending."""

    def __init__(self, tiers: Tiers, database_url: str, job: int) -> None:
        self.tiers, self.database_url, self.job = tiers, database_url, job
        self.processed = 0
        self.completed_at_hits: int | None = None
        self.errors: list[str] = []

    async def until_complete(self, site: GraphSite, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                st = await self.tiers.get(f"/status/{self.job}")
            except Exception:  # noqa: BLE001 - the web server may be the thing being killed
                await asyncio.sleep(0.2)
                continue
            self.processed = st["pages"]["processed"]
            if st["pending"] == 0:
                self.completed_at_hits = sum(site.hits.values())
                left = await self.pending_rows()
                if left:
                    self.errors.append(f"status complete with {left} visits pending")
                return st
            await asyncio.sleep(0.05)
        raise AssertionError(f"job {self.job} not complete after {timeout}s\n" + self.tiers.tail())

    async def pending_rows(self) -> int:
        for _ in range(100):
            try:
                conn = await asyncpg.connect(self.database_url)
            except OSError:
                await asyncio.sleep(0.2)
                continue
            try:
                return int(await conn.fetchval(
                    "SELECT count(*) FROM job_pending WHERE job_id = $1", self.job))
            finally:
                await conn.close()
        raise AssertionError("database unreachable")

    async def reach(self, processed: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.processed < processed and time.monotonic() < deadline:
            try:
                self.processed = (await self.tiers.get(f"/status/{self.job}"))["pages"]["processed"]
            except Exception:  # noqa: BLE001
                pass
            await asyncio.sleep(0.02)


async def run_with_fault(tiers: Tiers, site: GraphSite, settings: Settings,
                         fault: Callable[[Watch], Awaitable[None]] | None, faults: int = 1,
                         post: Callable[[], Awaitable[int]] | None = None) -> None:
    """Crawl the graph site while ``fault`` (None: none) runs; the result must be exact."""
    await tiers.up()
    job = await (post() if post else tiers.post([site.base + "/p/0.html"], depth=str(DEPTH)))
    watch = Watch(tiers, settings.database_url, job)
    expected = site.expected(DEPTH)
    faulting = asyncio.create_task(fault(watch) if fault else asyncio.sleep(0))
    st = await watch.until_complete(site)
    await faulting
    assert not watch.errors, watch.errors
    await asyncio.sleep(1.0)  # anything still running for this job would fetch now
    assert sum(site.hits.values()) == watch.completed_at_hits, "pages fetched after completion"
    result = await tiers.get(f"/result/{job}")
    if result != expected:
        missing = sorted(set(expected) - set(result))[:5]
        extra = sorted(set(result) - set(expected))[:5]
        wrong = [k for k in expected if k in result and result[k] != expected[k]][:3]
        failures = await tiers.get(f"/result/{job}", status="failed")
        queues = await queue_state(settings)
        raise AssertionError(f"result differs from an undisturbed run: {queues} {len(missing)} missing "
                             f"{missing}, extra {extra}, wrong {wrong}, failures "
                             f"{list(failures.items())[:3]}\n{tiers.tail()}")
    assert await watch.pending_rows() == 0
    assert st["pages"]["processed"] == len(expected)
    print(f"\nfault caused {site.refetches()} re-fetches of {len(expected)} pages")
    assert site.refetches() <= REFETCH_BOUND_PER_FAULT * faults, site.refetches()


async def queue_state(settings: Settings) -> str:
    """JetStream's view of both queues, for failure messages."""
    import nats

    from shared.config import stream_name
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        out = []
        for topic, durable in ((settings.url_topic, "foreman"), (settings.work_topic, "worker")):
            ci = await js.consumer_info(stream_name(topic), durable)
            si = await js.stream_info(stream_name(topic))
            out.append(f"{topic}: stream msgs={si.state.messages} first={si.state.first_seq} "
                       f"last={si.state.last_seq}; consumer pending={ci.num_pending} "
                       f"ack_pending={ci.num_ack_pending} redelivered={ci.num_redelivered} "
                       f"waiting={ci.num_waiting} delivered={ci.delivered} ackfloor={ci.ack_floor}")
        return "; ".join(out)
    finally:
        await nc.close()


async def test_undisturbed_run_fetches_each_page_once(tiers: Tiers, site: GraphSite,
                                                      settings: Settings) -> None:
    await run_with_fault(tiers, site, settings, None)
    assert site.refetches() == 0
    assert len(site.hits) >= 2000


async def test_sigkill_a_worker_three_times(tiers: Tiers, site: GraphSite, settings: Settings) -> None:
    async def kill_workers(watch: Watch) -> None:
        for share in (0.15, 0.4, 0.65):
            await watch.reach(int(share * 2000))
            tiers.kill("worker-1")
            tiers.start("worker-1")

    await run_with_fault(tiers, site, settings, kill_workers, faults=3)


async def test_sigkill_the_foreman(tiers: Tiers, site: GraphSite, settings: Settings) -> None:
    async def kill_foreman(watch: Watch) -> None:
        await watch.reach(500)
        tiers.kill("foreman")
        await asyncio.sleep(1.0)
        tiers.start("foreman")

    await run_with_fault(tiers, site, settings, kill_foreman)


async def test_sigkill_the_web_server_after_it_answers(tiers: Tiers, site: GraphSite,
                                                       settings: Settings) -> None:
    async def post_then_kill() -> int:
        job = await tiers.post([site.base + "/p/0.html"], depth=str(DEPTH))
        tiers.kill("web_server")
        tiers.start("web_server")
        await tiers.wait_ready()
        return job

    await run_with_fault(tiers, site, settings, None, post=post_then_kill)


def restart(server: EmbeddedNats | EmbeddedPostgres) -> Callable[[Watch], Awaitable[None]]:
    """The fault: at 600 pages, stop ``server``, wait a second, start it on the same data."""
    async def fault(watch: Watch) -> None:
        await watch.reach(600)
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(server.start)

    return fault


async def test_restart_nats(tiers: Tiers, site: GraphSite, settings: Settings,
                            nats_server: EmbeddedNats) -> None:
    await run_with_fault(tiers, site, settings, restart(nats_server))


async def test_restart_postgres(tiers: Tiers, site: GraphSite, settings: Settings,
                                postgres: EmbeddedPostgres) -> None:
    await run_with_fault(tiers, site, settings, restart(postgres))


async def test_rolling_restart_with_sigterm(tiers: Tiers, site: GraphSite, settings: Settings) -> None:
    async def rolling(watch: Watch) -> None:
        for i, share in ((1, 0.2), (2, 0.5)):
            await watch.reach(int(share * 2000))
            code = await asyncio.to_thread(tiers.kill, f"worker-{i}", signal.SIGTERM)
            assert code == 0, f"worker-{i} exited with {code} on SIGTERM"
            tiers.start(f"worker-{i}")

    await run_with_fault(tiers, site, settings, rolling, faults=2)
