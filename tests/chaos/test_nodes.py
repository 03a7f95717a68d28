"""Several Harvester nodes on one machine (issue 18): each node is a web server, a foreman and
workers of its own (its own loopback address, its own NATS node first in its list), all sharing
a three-node NATS cluster with R3 streams and one PostgreSQL. A job posted to one node's web
server is crawled by every node; SIGKILL of every process of a node mid-crawl loses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from harvester_ops.embedded import EmbeddedNatsCluster
from shared.config import Settings
from tests.chaos.conftest import CLUSTER_NODES
from tests.chaos.procs import GraphSite, Tiers
from tests.chaos.test_chaos import Watch, run_with_fault

pytestmark = pytest.mark.chaos

NODES = CLUSTER_NODES  # a node per NATS node


def node_tiers(settings: Settings, cluster: EmbeddedNatsCluster, tmp_path: Path, i: int) -> Tiers:
    """Node ``i`` (1-based): its web server on 127.0.0.<i+1>, its tiers connecting to NATS
    node ``i`` first, and its User-Agent naming it (so the site tells who fetched what)."""
    logs = tmp_path / f"node{i}"
    logs.mkdir()
    tiers = Tiers(settings, logs, host=f"127.0.0.{i + 1}")
    urls = [n.url for n in cluster.nodes]
    tiers.env.update(HARVESTER_NATS_URL=",".join(urls[i - 1:] + urls[:i - 1]),
                     HARVESTER_NATS_REPLICAS="3", HARVESTER_USER_AGENT=f"harvester-node{i}")
    return tiers


@pytest.fixture
async def nodes(nats_cluster: EmbeddedNatsCluster, settings: Settings,
                tmp_path: Path) -> AsyncIterator[list[Tiers]]:
    mine = settings.model_copy(update={"nats_url": nats_cluster.url, "nats_replicas": 3})
    all_nodes = [node_tiers(mine, nats_cluster, tmp_path, i) for i in range(1, NODES + 1)]
    yield all_nodes
    codes = [await t.down() for t in all_nodes]
    assert all(code == 0 for c in codes for code in c.values()), f"exit codes on SIGTERM: {codes}"


async def test_a_job_posted_to_one_node_is_crawled_by_all_and_survives_a_nodes_death(
        nodes: list[Tiers], nats_cluster: EmbeddedNatsCluster, site: GraphSite,
        settings: Settings) -> None:
    first, second, *rest = nodes
    for node in (second, *rest):  # the first node is started by run_with_fault, which posts to it
        await node.up(workers=1)
    mine = settings.model_copy(update={"nats_url": nats_cluster.url, "nats_replicas": 3})

    async def kill_a_node(watch: Watch) -> None:
        await watch.reach(600)
        # every node took part: each node's workers fetched pages of the job posted to the first
        assert {f"harvester-node{i}" for i in range(1, NODES + 1)} <= set(site.agents), site.agents
        await watch.fault("SIGKILL every process of node 2")
        for name in list(second.procs):
            await asyncio.to_thread(second.kill, name)

    await run_with_fault(first, site, mine, kill_a_node)
    print(f"pages fetched per node: {dict(site.agents)}")
