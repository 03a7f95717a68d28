"""Chaos: kill and restart every part of Harvester mid-crawl; the job still completes with the
result of an undisturbed run, nothing stays pending, status is never early, and re-fetches are
confined to the fault (each test prints how many the fault caused)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from aiohttp import web
from nats.js.errors import NotFoundError
from warcio.archiveiterator import ArchiveIterator

from harvester_ops.embedded import EmbeddedNats, EmbeddedNatsCluster, EmbeddedPostgres
from shared import bus
from shared.config import Settings, stream_name
from shared.db import jobs
from tests.chaos.procs import GraphSite, Tiers
from tests.servers import serve

pytestmark = pytest.mark.chaos

DEPTH = 6
# In flight when a fault hits: at most a worker's concurrency (16) per worker, plus a batch.
REFETCH_BOUND_PER_FAULT = 2 * 16 + 16


@pytest.fixture
async def tiers(settings: Settings, tmp_path: Path) -> AsyncIterator[Tiers]:
    t = Tiers(settings, tmp_path)
    yield t
    codes = await t.down()
    # Graceful shutdown on SIGTERM in every tier: finish in flight, exit 0.
    assert all(code == 0 for code in codes.values()), f"exit codes on SIGTERM: {codes}\n{t.tail()}"


@dataclass(frozen=True)
class AtFault:
    """The job and the queues just before a fault hit."""

    what: str
    at: float            # time.monotonic()
    status: dict[str, Any]
    queued: int          # messages published and not yet acked, on both queues
    held: int            # of those, delivered to a tier that has not acked them yet
    mid_crawl: bool      # tiers were expected to hold work (not just after the POST)


class Watch:
    """Polls a job's status; each time it reads complete, checks that nothing is pending.
    Faults record the job's state as they hit (``fault``)."""

    def __init__(self, tiers: Tiers, settings: Settings, job: int) -> None:
        self.tiers, self.settings, self.job = tiers, settings, job
        self.database_url = settings.database_url
        self.processed = 0
        self.completed_at_hits: int | None = None
        self.completed_at: float | None = None
        self.faults: list[AtFault] = []
        self.errors: list[str] = []

    async def fault(self, what: str, mid_crawl: bool = True) -> None:
        """Call right before a fault hits (while every part still answers)."""
        status = await self.tiers.get(f"/status/{self.job}")
        queued, held = await queue_counts(self.settings)
        self.faults.append(AtFault(what, time.monotonic(), status, queued, held, mid_crawl))

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
                self.completed_at = time.monotonic()
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
            with contextlib.suppress(Exception):  # the web server may be the thing being killed
                self.processed = (await self.tiers.get(f"/status/{self.job}"))["pages"]["processed"]
            await asyncio.sleep(0.02)


async def run_with_fault(tiers: Tiers, site: GraphSite, settings: Settings,
                         fault: Callable[[Watch], Coroutine[Any, Any, None]] | None,
                         faults: int = 1) -> None:
    """Crawl the graph site while ``fault`` (None: none) runs; the result must be exact, and
    every fault must have hit while the job was under way."""
    await tiers.up()
    job = await tiers.post([site.base + "/p/0.html"], depth=str(DEPTH))
    watch = Watch(tiers, settings, job)
    expected = site.expected(DEPTH)
    faulting = asyncio.create_task(fault(watch) if fault else asyncio.sleep(0, None))
    st = await watch.until_complete(site)
    await faulting
    assert not watch.errors, watch.errors
    assert len(watch.faults) == (faults if fault else 0), watch.faults
    for hit in watch.faults:
        assert watch.completed_at is not None and hit.at < watch.completed_at, hit
        assert hit.status["pending"] > 0 and not hit.status["completed"], \
            f"the job was complete when {hit.what}: {hit}"
        assert hit.status["pages"]["processed"] < len(expected), hit
        assert hit.held > 0 or not hit.mid_crawl, f"no work in flight when {hit.what}: {hit}"
    # Anything still running for this job would fetch before its message is acked: once no
    # message is pending or unacked on either queue, nothing is left that could.
    await wait_idle(settings)
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
    print(f"\nfault caused {site.refetches()} re-fetches of {len(expected)} pages"
          + "".join(f"; {h.what} at {h.status['pages']['processed']} processed, "
                    f"{h.held} messages held" for h in watch.faults))
    assert site.refetches() <= REFETCH_BOUND_PER_FAULT * faults, site.refetches()


QUEUES = (("url_topic", "foreman"), ("work_topic", "worker"))


async def queue_counts(settings: Settings) -> tuple[int, int]:
    """Messages on both queues not yet acked, and how many of them a tier holds."""
    nc = await nats.connect(servers=bus.nats_servers(settings.nats_url))
    try:
        js = nc.jetstream()
        queued = held = 0
        for topic, durable in QUEUES:
            name = stream_name(getattr(settings, topic))
            queued += (await js.stream_info(name)).state.messages
            try:
                held += (await js.consumer_info(name, durable)).num_ack_pending
            except NotFoundError:
                pass  # the tier has not bound its durable yet, so it holds nothing
        return queued, held
    finally:
        await nc.close()


async def wait_idle(settings: Settings, timeout: float = 60) -> None:
    """Until no message is waiting or unacked on either queue (nothing in flight)."""
    nc = await nats.connect(servers=bus.nats_servers(settings.nats_url))
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        while True:
            busy = 0
            for topic, durable in QUEUES:
                name = stream_name(getattr(settings, topic))
                try:
                    info = await js.consumer_info(name, durable)
                    busy += info.num_pending + info.num_ack_pending
                except NotFoundError:  # not bound yet: whatever the stream holds
                    busy += (await js.stream_info(name)).state.messages
            if busy == 0:
                return
            assert time.monotonic() < deadline, f"queues not idle after {timeout}s"
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def queue_state(settings: Settings) -> str:
    """JetStream's view of both queues, for failure messages."""
    nc = await nats.connect(servers=bus.nats_servers(settings.nats_url))
    try:
        js = nc.jetstream()
        out = []
        for topic, durable in QUEUES:
            name = stream_name(getattr(settings, topic))
            ci = await js.consumer_info(name, durable)
            si = await js.stream_info(name)
            out.append(f"{name}: stream msgs={si.state.messages} first={si.state.first_seq} "
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
            await watch.fault("SIGKILL worker-1")
            tiers.kill("worker-1")
            tiers.start("worker-1")

    await run_with_fault(tiers, site, settings, kill_workers, faults=3)


async def test_sigkill_the_foreman(tiers: Tiers, site: GraphSite, settings: Settings) -> None:
    async def kill_foreman(watch: Watch) -> None:
        await watch.reach(500)
        await watch.fault("SIGKILL foreman")
        tiers.kill("foreman")
        await asyncio.sleep(1.0)
        tiers.start("foreman")

    await run_with_fault(tiers, site, settings, kill_foreman)


async def test_sigkill_the_web_server_after_it_answers(tiers: Tiers, site: GraphSite,
                                                       settings: Settings) -> None:
    async def kill_web_server(watch: Watch) -> None:  # starts as soon as the POST is answered
        await watch.fault("SIGKILL web_server", mid_crawl=False)
        tiers.kill("web_server")
        tiers.start("web_server")
        await tiers.wait_ready()

    await run_with_fault(tiers, site, settings, kill_web_server)


def restart(server: EmbeddedNats | EmbeddedPostgres, *, empty_store: bool = False
            ) -> Callable[[Watch], Coroutine[Any, Any, None]]:
    """The fault: at 600 pages, stop ``server``, wait a second, start it on the same data (or,
    ``empty_store``, on an empty data directory: a NATS server that lost its store)."""
    async def fault(watch: Watch) -> None:
        await watch.reach(600)
        await watch.fault(f"{type(server).__name__} stopped" + (", store lost" * empty_store))
        await asyncio.to_thread(server.stop)
        if empty_store:
            shutil.rmtree(server.data_dir)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(server.start)

    return fault


async def test_restart_nats(tiers: Tiers, site: GraphSite, settings: Settings,
                            nats_server: EmbeddedNats) -> None:
    await run_with_fault(tiers, site, settings, restart(nats_server))


async def test_restart_nats_on_an_empty_store(own_nats: EmbeddedNats, tiers: Tiers,
                                              site: GraphSite, settings: Settings) -> None:
    """Streams, consumers and messages are gone: each tier (its own process) creates what it
    uses again, and the watchdog publishes the lost visits again after ``staleAfter``."""
    mine = settings.model_copy(update={"nats_url": own_nats.url})
    tiers.env["HARVESTER_NATS_URL"] = own_nats.url
    await run_with_fault(tiers, site, mine, restart(own_nats, empty_store=True))


async def test_sigkill_the_work_streams_leader_in_a_nats_cluster(
        nats_cluster: EmbeddedNatsCluster, tiers: Tiers, site: GraphSite,
        settings: Settings) -> None:
    """Issue 18: on a three-node cluster with R3 streams, the node leading the work stream is
    killed mid-crawl and stays down; the others elect a leader, the tiers fail over to them,
    and the job completes with the undisturbed result."""
    mine = settings.model_copy(update={"nats_url": nats_cluster.url, "nats_replicas": 3})
    tiers.env["HARVESTER_NATS_URL"] = nats_cluster.url
    tiers.env["HARVESTER_NATS_REPLICAS"] = "3"

    async def kill_leader(watch: Watch) -> None:
        await watch.reach(600)
        nc = await nats.connect(servers=bus.nats_servers(mine.nats_url))
        try:
            info = await nc.jetstream().stream_info(stream_name(mine.work_topic))
        finally:
            await nc.close()
        assert info.config.num_replicas == 3 and info.cluster and info.cluster.leader
        await watch.fault(f"SIGKILL nats-server {info.cluster.leader}, the work stream's leader")
        await asyncio.to_thread(nats_cluster.node(info.cluster.leader).kill)

    await run_with_fault(tiers, site, mine, kill_leader)


async def test_restart_postgres(tiers: Tiers, site: GraphSite, settings: Settings,
                                postgres: EmbeddedPostgres) -> None:
    await run_with_fault(tiers, site, settings, restart(postgres))


async def test_rolling_restart_with_sigterm(tiers: Tiers, site: GraphSite, settings: Settings) -> None:
    async def rolling(watch: Watch) -> None:
        for i, share in ((1, 0.2), (2, 0.5)):
            await watch.reach(int(share * 2000))
            await watch.fault(f"SIGTERM worker-{i}")
            code = await asyncio.to_thread(tiers.kill, f"worker-{i}", signal.SIGTERM)
            assert code == 0, f"worker-{i} exited with {code} on SIGTERM"
            tiers.start(f"worker-{i}")

    await run_with_fault(tiers, site, settings, rolling, faults=2)


@dataclass
class IdSite:
    """``n`` items at ``/item?id=<i>``, each naming its children ``ID-<j>`` (a 6-ary tree) and a
    few other items, several times; ids from ``n`` on are never named (unreachable)."""

    n: int = 1500
    delay: float = 0.003
    hits: Counter[int] = field(default_factory=Counter)
    sent: dict[int, bytes] = field(default_factory=dict)
    base: str = ""
    runner: web.AppRunner | None = None

    def body(self, i: int) -> bytes:
        rng = random.Random(i)
        ids = [*range(6 * i + 1, min(6 * i + 7, self.n)),
               *(rng.randrange(self.n) for _ in range(3))]
        refs = " ".join(f"ID-{j} (see ID-{j})" for j in ids)
        return f"<item><n>{i}</n><refs>{refs}</refs></item>\n".encode()

    async def start(self) -> IdSite:
        self.runner, self.base = await serve(self._item, route="/item")
        return self

    async def _item(self, request: web.Request) -> web.Response:
        i = int(request.query["id"])
        self.hits[i] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        self.sent[i] = self.body(i)
        return web.Response(body=self.sent[i], content_type="application/xml")

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    def url(self, i: int) -> str:
        return f"{self.base}/item?id={i}"

    def refetches(self) -> int:
        return sum(n - 1 for n in self.hits.values() if n > 1)


async def committed_body_refs(database_url: str, job: int) -> list[tuple[str, dict[str, Any]]]:
    conn = await asyncpg.connect(database_url)
    try:
        out: list[tuple[str, dict[str, Any]]] = []
        after = (0, "", -1)
        while rows := await jobs.job_yields(conn, job, after, kind="body"):
            out += [(y.url, y.value) for _, y in rows]
            after = rows[-1][0]
        return out
    finally:
        await conn.close()


async def test_sigkill_a_worker_during_an_id_crawl_with_warc(settings: Settings,
                                                              tmp_path: Path) -> None:
    """DS-4 (and DS-7 after a SIGKILL): the saved set is the reachable set, each page once in
    the committed refs, every WARC file reads back whole (warcio check), each ref's record holds
    the bytes served; the tar export has one entry per id; the archives themselves hold every
    committed entry once, and orphans (visits never committed) at most one per re-fetch."""
    site = await IdSite().start()
    root = tmp_path / "out"
    tiers = Tiers(settings, tmp_path)
    tiers.env["HARVESTER_OUTPUT_ROOT"] = str(root)
    try:
        await tiers.up()
        spec = {"urls": [], "save": [{"kind": "warc"},
                                     {"kind": "tar", "compression": "gz", "pattern": "{id}"}],
                "ids": {"regex": r"ID-(\d+)", "urlFormat": site.base + "/item?id={}",
                        "seeds": ["0"]}}
        async with tiers.http.post(tiers.base + "/", json=spec) as r:
            assert r.status == 200, await r.text()
            job = int((await r.json())["jobId"])
        watch = Watch(tiers, settings, job)

        async def kill_worker(watch: Watch) -> None:
            await watch.reach(int(0.3 * site.n))
            await watch.fault("SIGKILL worker-1")
            tiers.kill("worker-1")
            tiers.start("worker-1")

        faulting = asyncio.create_task(kill_worker(watch))
        st = await watch.until_complete(site)  # type: ignore[arg-type]
        await faulting
        assert not watch.errors, watch.errors
        (hit,) = watch.faults
        assert hit.status["pending"] > 0 and hit.held > 0, hit
        await wait_idle(settings)
        assert st["pages"]["processed"] == site.n and st["pages"]["failed"] == 0, st
        assert set(site.hits) == set(range(site.n))  # every reachable id, no other
        # The job's tar export, streamed from the committed refs: one entry per id.
        async with tiers.http.get(f"{tiers.base}/bodies/{job}", params={"format": "tar"}) as r:
            assert r.status == 200
            exported = await r.read()
        with tarfile.open(fileobj=io.BytesIO(exported), mode="r:") as t:
            entries = [(m.name, t.extractfile(m).read()) for m in t]  # type: ignore[union-attr]
        assert sorted(entries) == sorted((str(i), site.sent[i]) for i in range(site.n))
    finally:
        codes = await tiers.down()
        await site.stop()
    assert all(code == 0 for code in codes.values()), codes
    every = await committed_body_refs(settings.database_url, job)
    tars = [(url, ref) for url, ref in every if ref["output"] == "tar"]
    refs = [(url, ref) for url, ref in every if ref["output"] == "warc"]
    assert Counter(url for url, _ in tars) == Counter(url for url, _ in refs)
    saved = Counter(url for url, _ in refs)
    assert set(saved) == {site.url(i) for i in range(site.n)}  # saved set == reachable set
    assert set(saved.values()) == {1}, "a page listed twice"
    ids = {site.url(i): i for i in range(site.n)}
    for url, ref in refs:
        assert ref["digest"] == "sha1:" + base64.b32encode(
            hashlib.sha1(site.sent[ids[url]]).digest()).decode()
        with (root / ref["file"]).open("rb") as f:
            f.seek(ref["offset"])
            member = f.read(ref["length"])
        read = [(r.rec_type, r.rec_headers.get_header("WARC-Target-URI"), r.raw_stream.read())
                for r in ArchiveIterator(io.BytesIO(member))]
        assert read == [("response", url, site.sent[ids[url]])]
    files = sorted((root / f"job-{job}" / "warc").glob("*.warc.gz"))
    assert len(files) >= 3  # two workers' files and the restarted worker's
    done = await asyncio.to_thread(
        subprocess.run, [str(Path(sys.executable).with_name("warcio")), "check", "-v",
                         *map(str, files)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr  # no truncated or corrupt record
    records: Counter[str] = Counter()
    for path in files:
        with path.open("rb") as fh:
            for r in ArchiveIterator(fh):
                if r.rec_type == "response":
                    records[r.rec_headers.get_header("WARC-Target-URI")] += 1
    committed = {(ref["file"], ref["offset"]) for _, ref in refs}
    assert len(committed) == len(refs)
    orphans = sum(records.values()) - len(refs)
    print(f"\nDS-4: {site.refetches()} re-fetches, {orphans} orphan records of {site.n} pages")
    # An orphan is a record of a visit never committed: a page the killed worker wrote whose
    # commit never happened, fetched and written again by another.
    assert set(records) == set(saved) and 0 <= orphans <= site.refetches()
    # The tar archives themselves (the killed worker's has no end blocks): every entry whole,
    # the committed ones once each, any other an orphan of a re-fetch.
    listed: Counter[str] = Counter()
    for path in sorted((root / f"job-{job}" / "tar").glob("*.tar.gz")):
        with tarfile.open(path, "r:gz") as t:
            for m in t:
                f = t.extractfile(m)
                assert f is not None and f.read() == site.sent[int(m.name)]
                listed[m.name] += 1
    assert set(listed) == {str(i) for i in range(site.n)}
    assert sum(listed.values()) - site.n <= site.refetches()
    print(f"DS-4: {sum(listed.values()) - site.n} orphan tar entries")
