"""A three-node NATS cluster (issue 18): the streams are stored on three nodes (R3), the tiers
connect with every node's URL, and killing the stream leader loses no stored message."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import nats.errors
import nats.js.errors
import pytest
from nats.js import JetStreamContext

from harvester_ops.embedded import EmbeddedNatsCluster
from shared import bus
from shared.config import Settings, stream_name
from shared.errors import ConfigError
from shared.messages import VisitMessage


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNatsCluster]:
    with EmbeddedNatsCluster(tmp_path_factory.mktemp("natscluster"), 3) as c:
        yield c


def test_natsurl_takes_a_list_of_servers() -> None:
    assert bus.nats_servers("nats://a:1, nats://b:2,nats://c:3") == [
        "nats://a:1", "nats://b:2", "nats://c:3"]
    assert bus.nats_servers("nats://a:1") == ["nats://a:1"]
    with pytest.raises(ConfigError):
        bus.nats_servers(" , ")


async def new_leader(js: JetStreamContext, name: str, old: str, wait: float = 60) -> str | None:
    """The stream's leader once it is another node than ``old`` (None if not within ``wait``
    seconds); a JetStream request may time out while the cluster fails over: asked again."""
    deadline = asyncio.get_running_loop().time() + wait
    while asyncio.get_running_loop().time() < deadline:
        try:
            info = await js.stream_info(name)
        except (nats.errors.TimeoutError, nats.js.errors.APIError):
            await asyncio.sleep(0.5)
            continue
        if info.cluster is not None and info.cluster.leader not in (None, old):
            return info.cluster.leader
        await asyncio.sleep(0.5)
    return None


async def test_streams_are_r3_and_a_leaders_death_loses_nothing(
        cluster: EmbeddedNatsCluster) -> None:
    settings = Settings(nats_url=cluster.url, nats_replicas=3, url_topic="r3.url",
                        work_topic="r3.work")
    keys = [(1, i) for i in range(200)]
    async with bus.connect(settings.nats_url, "test-cluster", retry_for=60) as nc:
        js = nc.jetstream()
        await bus.ensure_streams(js, settings)
        name = stream_name(settings.work_topic)
        info = await js.stream_info(name)
        assert info.config.num_replicas == 3
        assert info.cluster is not None and info.cluster.leader
        assert len(info.cluster.replicas or []) == 2  # the two followers
        sub = await bus.pull_subscription(js, settings, settings.work_topic, bus.WORKER_CONSUMER)
        assert await bus.publish_visits(js, settings.work_topic, keys) == []
        leader = info.cluster.leader
        await asyncio.to_thread(cluster.node(leader).kill)
        try:
            got: list[tuple[int, int]] = []
            for _ in range(120):  # a new leader is elected within seconds
                try:
                    msgs = await bus.pull(sub, 100, 1.0)
                except Exception:  # noqa: BLE001 - no leader for a moment: pull again
                    await asyncio.sleep(0.5)
                    continue
                for m in msgs:
                    v = VisitMessage.decode(m.data)
                    got.append((v.job, v.url))
                    await m.ack_sync()
                if len(set(got)) == len(keys):
                    break
            assert sorted(set(got)) == keys
            assert await new_leader(js, name, leader)
        finally:
            await asyncio.to_thread(cluster.node(leader).start)
