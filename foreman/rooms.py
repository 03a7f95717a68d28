"""The room on the work queues, per fetcher kind, for a foreman's feeder and pull loops: each
kind's stream read at most every ``MAX_AGE`` seconds (``stream_info``: depth and ``last_seq``),
what either publishes meanwhile counted on top (so two reads apart they never overfill it),
against ``work_queue_limit``."""

from __future__ import annotations

import math
import time

import nats.js.errors
from nats.js import JetStreamContext

from shared import bus, metrics
from shared.config import Settings, stream_name

MAX_AGE = 0.05  # seconds a read of a work stream serves


class KindRooms:
    """The work queues' depths, one entry per fetcher kind: (read when, depth, last_seq)."""

    def __init__(self, settings: Settings, js: JetStreamContext) -> None:
        self.settings = settings
        self.js = js
        self._state: dict[str, tuple[float, int, int]] = {}

    async def read(self, kind: str, max_age: float = MAX_AGE) -> tuple[int, int]:
        """The kind's work queue: its depth (plus what was sent to it since the read) and its
        ``last_seq`` (messages ever published to it), read when the last read is older than
        ``max_age``; a stream the server lost is restored. Raises ``bus.TRANSIENT`` while it
        cannot be read."""
        topic = bus.work_subject(self.settings, kind)
        now = time.monotonic()
        checked, depth, last_seq = self._state.get(kind, (-math.inf, 0, 0))
        if now - checked >= max_age:
            depth, last_seq = await stream_state(self.js, topic)
            self._state[kind] = (now, depth, last_seq)
            metrics.QUEUE_MESSAGES.labels(topic).set(depth)
        return depth, last_seq

    async def waiting(self, kind: str) -> int:
        """Visits on the kind's work queue not yet delivered to any worker (its consumer's
        ``num_pending``: the queue in front of a visit published now, the visits the workers
        hold not counted); 0 while it cannot be read (no worker bound the consumer yet)."""
        try:
            info = await self.js.consumer_info(
                stream_name(bus.work_subject(self.settings, kind)), bus.worker_consumer(kind))
        except bus.TRANSIENT:
            return 0
        return int(info.num_pending or 0)

    async def room(self, kind: str) -> int:
        """How many more visits the kind's work queue takes now; 0 while it cannot be read
        (warned of; tried again after ``MAX_AGE``)."""
        try:
            depth, _ = await self.read(kind)
        except bus.TRANSIENT as e:
            topic = bus.work_subject(self.settings, kind)
            bus.warn(f"depth {topic}", "work queue %s unreachable (%s: %s); its visits wait",
                     topic, type(e).__name__, e)
            last_seq = self._state.get(kind, (0.0, 0, 0))[2]
            self._state[kind] = (time.monotonic(), self.settings.work_queue_limit, last_seq)
            return 0
        return max(0, self.settings.work_queue_limit - depth)

    async def take(self, kind: str, wanted: int) -> int:
        """How many of ``wanted`` visits the kind's work queue takes now, counted as sent."""
        n = min(wanted, await self.room(kind))
        self.sent(kind, n)
        return n

    def sent(self, kind: str, n: int) -> None:
        """Count ``n`` visits published to the kind's queue until the next read."""
        if n and kind in self._state:
            checked, depth, last_seq = self._state[kind]
            self._state[kind] = (checked, depth + n, last_seq)


async def stream_state(js: JetStreamContext, topic: str) -> tuple[int, int]:
    """A queue stream's depth (``bus.stream_depth``) and its ``last_seq`` (the messages ever
    published to it) from one stream_info, the stream restored if the server lost it."""
    stream = stream_name(topic)
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        if not await bus.restore(js, stream):
            raise
        info = await js.stream_info(stream)
    return int(info.state.messages), int(info.state.last_seq)
