"""Fixtures of the chaos tests: the generated site and a NATS cluster of the test's own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from harvester_ops.embedded import EmbeddedNatsCluster
from tests.chaos.procs import GraphSite

CLUSTER_NODES = 3


@pytest.fixture
async def site() -> AsyncIterator[GraphSite]:
    s = await GraphSite().start()
    yield s
    await s.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[EmbeddedNatsCluster]:
    """Three clustered NATS servers of the test's own (request it before the tiers: it stops
    after them)."""
    with EmbeddedNatsCluster(tmp_path / "natscluster", CLUSTER_NODES) as cluster:
        yield cluster
