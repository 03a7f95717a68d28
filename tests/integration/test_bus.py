"""shared.bus against a real nats-server with JetStream: settling messages."""

from __future__ import annotations

import asyncio

from shared import bus
from shared.bus import Settle, Verdict
from shared.config import Settings
from shared.embedded import EmbeddedNats


async def _depth(js, topic: str, expected: int) -> int:  # type: ignore[no-untyped-def]
    """The stream's depth once it reaches ``expected`` (acks are asynchronous), or after 5 s."""
    for _ in range(50):
        depth = await bus.stream_depth(js, topic)
        if depth == expected:
            break
        await asyncio.sleep(0.1)
    return depth


async def test_a_retry_on_the_last_delivery_terminates_the_message(
        nats_server: EmbeddedNats) -> None:
    settings = Settings(nats_url=nats_server.url, url_topic="lastdelivery.url",
                        work_topic="lastdelivery.work", max_deliver=2, retries=0)
    topic = settings.work_topic
    async with bus.connect(nats_server.url, "test-bus") as nc:
        js = nc.jetstream()
        await bus.ensure_streams(js, settings)
        sub = await bus.pull_subscription(js, settings, topic, "lastdelivery-work")
        assert await bus.publish_visits(js, topic, [(1, 2)]) == []
        (first,) = await bus.pull(sub, 1, 5)
        assert first.metadata.num_delivered == 1
        await bus.settle(first, Settle(Verdict.RETRY))  # nak: delivered again
        (second,) = await bus.pull(sub, 1, 5)
        assert second.metadata.num_delivered == 2
        assert await _depth(js, topic, 1) == 1
        await bus.settle(second, Settle(Verdict.RETRY))  # the last delivery: terminated
        assert await _depth(js, topic, 0) == 0
        assert await bus.pull(sub, 1, 0.5) == []
