"""shared.bus against a real nats-server with JetStream: settling messages, the limit on
deliveries, warnings during outages, and streams and consumers created again when the server
comes back without its store."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy

from harvester_ops.embedded import EmbeddedNats
from shared import bus
from shared.bus import Settle, Verdict
from shared.config import Settings, stream_name
from shared.messages import VisitMessage

T = TypeVar("T")


async def _depth(js: JetStreamContext, topic: str, expected: int) -> int:
    """The stream's depth once it reaches ``expected`` (acks are asynchronous), or after 5 s."""
    for _ in range(50):
        depth = await bus.stream_depth(js, topic)
        if depth == expected:
            break
        await asyncio.sleep(0.1)
    return depth


async def _eventually(op: Callable[[], Awaitable[T]], ok: Callable[[T], bool],
                      timeout: float = 30.0) -> T:
    """``op()``'s first answer that is ``ok``; fails with the last answer after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        answer = await op()
        if ok(answer) or time.monotonic() > deadline:
            assert ok(answer), f"still {answer!r} after {timeout}s"
            return answer
        await asyncio.sleep(0.05)


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "shared.bus" and r.levelno == logging.WARNING and text in r.getMessage()]


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


async def test_the_delivery_limit_is_the_one_of_the_messages_own_consumer(
        nats_server: EmbeddedNats) -> None:
    """Two streams with a consumer of the same name but different limits in one process (as
    when a test runs several stacks): each message is judged by its own consumer's limit."""
    strict = Settings(nats_url=nats_server.url, url_topic="strict.url", work_topic="strict.work",
                      max_deliver=2, retries=0)
    lax = Settings(nats_url=nats_server.url, url_topic="lax.url", work_topic="lax.work",
                   max_deliver=5, retries=0)
    async with bus.connect(nats_server.url, "test-bus") as nc:
        js = nc.jetstream()
        for s in (strict, lax):
            await bus.ensure_streams(js, s)
        sub = await bus.pull_subscription(js, strict, strict.work_topic, bus.WORKER_CONSUMER)
        await bus.pull_subscription(js, lax, lax.work_topic, bus.WORKER_CONSUMER)
        assert await bus.publish_visits(js, strict.work_topic, [(1, 2)]) == []
        for delivery in (1, 2):
            (msg,) = await bus.pull(sub, 1, 5)
            assert msg.metadata.num_delivered == delivery
            await bus.settle(msg, Settle(Verdict.RETRY))
        assert await _depth(js, strict.work_topic, 0) == 0, "nak'ed past its consumer's limit"


async def test_refused_publishes_are_warned_about_once_per_interval(
        nats_server: EmbeddedNats, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus, "_WARNINGS", defaultdict(bus._Throttle))  # none held back yet
    caplog.set_level(logging.WARNING, logger="shared.bus")
    topic = "nostream.work"  # no stream listens: every publish is refused
    async with bus.connect(nats_server.url, "test-bus") as nc:
        js = nc.jetstream()
        for _ in range(5):
            assert await bus.publish_visits(js, topic, [(1, 2)]) == [(1, 2)]
        (first,) = _warnings(caplog, "not stored")
        assert f"1 of 1 messages not stored on {topic}" in first
        monkeypatch.setattr(bus, "WARN_INTERVAL", 0.0)  # the interval has passed
        assert await bus.publish_visits(js, topic, [(1, 2)]) == [(1, 2)]
        (_, second) = _warnings(caplog, "not stored")
        assert "4 more like it" in second


async def test_a_failed_ack_is_a_warning(nats_server: EmbeddedNats,
                                         caplog: pytest.LogCaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus, "_WARNINGS", defaultdict(bus._Throttle))
    caplog.set_level(logging.WARNING, logger="shared.bus")
    settings = Settings(nats_url=nats_server.url, url_topic="failedack.url",
                        work_topic="failedack.work")
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await bus.ensure_streams(js, settings)
    sub = await bus.pull_subscription(js, settings, settings.work_topic, bus.WORKER_CONSUMER)
    assert await bus.publish_visits(js, settings.work_topic, [(1, 2)]) == []
    (msg,) = await bus.pull(sub, 1, 5)
    await nc.close()
    await bus.settle(msg, Settle(Verdict.ACK))  # never raises
    assert _warnings(caplog, "could not ack")


def lose_store(server: EmbeddedNats) -> None:
    """Stop the server and start it again at the same port on an empty store directory."""
    server.stop()
    shutil.rmtree(server.data_dir)
    server.start()


async def test_publishing_recreates_the_streams_nats_lost(
        own_nats: EmbeddedNats, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="shared.bus")
    settings = Settings(nats_url=own_nats.url, url_topic="lost.url", work_topic="lost.work",
                        work_queue_limit=100, max_deliver=7)
    topic = settings.work_topic
    async with bus.connect(own_nats.url, "test-bus") as nc:
        js = nc.jetstream()
        await bus.ensure_streams(js, settings)
        sub = await bus.pull_subscription(js, settings, topic, bus.WORKER_CONSUMER)
        assert await bus.publish_visits(js, topic, [(1, 1)]) == []
        await asyncio.to_thread(lose_store, own_nats)
        await _eventually(lambda: bus.publish_visits(js, topic, [(1, 2)]), lambda r: r == [])
        # The stream and the consumer as ensure_streams and pull_subscription made them.
        stream = await js.stream_info(stream_name(topic))
        assert stream.config.retention == RetentionPolicy.WORK_QUEUE
        assert stream.config.max_msgs == 100 + 50 + 1000
        consumer = await js.consumer_info(stream_name(topic), bus.WORKER_CONSUMER)
        assert consumer.config.max_deliver == 7
        msgs = await _eventually(lambda: bus.pull(sub, 10, 1.0), bool)
        assert [VisitMessage.decode(m.data).key for m in msgs] == [(1, 2)]
        await bus.settle(msgs[0], Settle(Verdict.ACK))
        assert await _depth(js, topic, 0) == 0
    assert _warnings(caplog, "created again")


async def test_pulling_and_depth_recreate_what_nats_lost(own_nats: EmbeddedNats) -> None:
    settings = Settings(nats_url=own_nats.url, url_topic="lostpull.url",
                        work_topic="lostpull.work")
    async with bus.connect(own_nats.url, "test-bus") as nc:
        js = nc.jetstream()
        await bus.ensure_streams(js, settings)
        sub = await bus.pull_subscription(js, settings, settings.url_topic, bus.FOREMAN_CONSUMER)
        await asyncio.to_thread(lose_store, own_nats)
        # The foreman's depth check and pull loop, before anything is published again.
        assert await _eventually(lambda: _or_error(bus.stream_depth(js, settings.url_topic)),
                                 lambda d: d == 0) == 0
        await _eventually(lambda: _consumer_exists(js, settings.url_topic), bool)
        assert await bus.pull(sub, 10, 0.2) == []
        assert await bus.publish_visits(js, settings.url_topic, [(3, 4)]) == []
        msgs = await _eventually(lambda: bus.pull(sub, 10, 1.0), bool)
        assert [VisitMessage.decode(m.data).key for m in msgs] == [(3, 4)]


async def test_a_pull_alone_recreates_its_consumer(own_nats: EmbeddedNats) -> None:
    """Another process (the web server) created the stream again, without our consumer."""
    settings = Settings(nats_url=own_nats.url, url_topic="lostcons.url",
                        work_topic="lostcons.work")
    async with bus.connect(own_nats.url, "test-bus") as nc:
        js = nc.jetstream()
        await bus.ensure_streams(js, settings)
        sub = await bus.pull_subscription(js, settings, settings.url_topic, bus.FOREMAN_CONSUMER)
        await asyncio.to_thread(lose_store, own_nats)
        other = await nats.connect(own_nats.url)
        try:
            await bus.ensure_streams(other.jetstream(), settings)
            assert await bus.publish_visits(other.jetstream(), settings.url_topic, [(5, 6)]) == []
        finally:
            await other.close()
        msgs = await _eventually(lambda: bus.pull(sub, 10, 1.0), bool)
        assert [VisitMessage.decode(m.data).key for m in msgs] == [(5, 6)]


async def _or_error(op: Awaitable[T]) -> T | Exception:
    try:
        return await op
    except bus.TRANSIENT as e:
        return e


async def _consumer_exists(js: JetStreamContext, topic: str) -> bool:
    try:
        await js.consumer_info(stream_name(topic), bus.FOREMAN_CONSUMER)
    except bus.TRANSIENT:
        return False
    return True


def test_http_keeps_todays_subject_and_consumer_other_kinds_get_their_own() -> None:
    settings = Settings(work_topic="kinds.work")
    assert bus.work_subject(settings, "http") == "kinds.work"
    assert bus.work_subject(settings, "browser") == "kinds.work.browser"
    assert bus.worker_consumer("http") == bus.WORKER_CONSUMER == "worker"
    assert bus.worker_consumer("browser") == "worker-browser"


async def test_each_fetcher_kind_has_its_own_stream(nats_server: EmbeddedNats) -> None:
    """http keeps today's stream (a rolling upgrade loses no queued message); each other kind
    has a stream of its own with its own cap, so one kind's backlog never refuses another's."""
    settings = Settings(nats_url=nats_server.url, url_topic="perkind.url",
                        work_topic="perkind.work", fetcher_kinds=("http", "static"),
                        work_queue_limit=10)
    async with bus.connect(nats_server.url, "test-bus") as nc:
        js = nc.jetstream()
        await bus.ensure_streams(js, settings)
        http, static = (bus.work_subject(settings, k) for k in ("http", "static"))
        assert (await js.stream_info(stream_name(http))).config.subjects == ["perkind.work"]
        assert stream_name(http) == "HARVESTER_PERKIND_WORK"
        info = await js.stream_info(stream_name(static))
        assert info.config.name == "HARVESTER_PERKIND_WORK_STATIC"
        assert info.config.subjects == ["perkind.work.static"]
        assert info.config.retention == RetentionPolicy.WORK_QUEUE
        cap = info.config.max_msgs
        assert await bus.publish_visits(js, static, [(1, u) for u in range(cap)]) == []
        assert await bus.publish_visits(js, static, [(1, cap)]) == [(1, cap)], "static is full"
        assert await bus.publish_visits(js, http, [(2, 1)]) == [], "http is not"
        assert (await bus.stream_depth(js, http), await bus.stream_depth(js, static)) == (1, cap)
        sub = await bus.pull_subscription(js, settings, static, bus.worker_consumer("static"))
        (msg,) = await bus.pull(sub, 1, 5)
        assert VisitMessage.decode(msg.data).key == (1, 0)
        assert msg.metadata.consumer == "worker-static"


async def test_a_worker_sets_up_only_the_kinds_it_serves(nats_server: EmbeddedNats) -> None:
    settings = Settings(nats_url=nats_server.url, url_topic="served.url",
                        work_topic="served.work", fetcher_kinds=("http", "static", "browser"))
    async with bus.connect(nats_server.url, "test-bus") as nc:
        js = nc.jetstream()
        await bus.ensure_streams(js, settings, ["static"])
        assert await _exists(js, "HARVESTER_SERVED_WORK_STATIC")
        assert await _exists(js, "HARVESTER_SERVED_URL")
        assert not await _exists(js, "HARVESTER_SERVED_WORK")
        assert not await _exists(js, "HARVESTER_SERVED_WORK_BROWSER")


async def _exists(js: JetStreamContext, stream: str) -> bool:
    try:
        await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def test_take_free_takes_one_slot_then_all_free_ones_up_to_most() -> None:
    slots = asyncio.Semaphore(5)
    assert await bus.take_free(slots, 3) == 3
    assert await bus.take_free(slots, 3) == 2
    waiting = asyncio.create_task(bus.take_free(slots, 3))  # none free: waits for one
    await asyncio.sleep(0.01)
    assert not waiting.done()
    waiting.cancel()  # cancelled while waiting: holds none
    with pytest.raises(asyncio.CancelledError):
        await waiting
    slots.release()
    assert await bus.take_free(slots, 3) == 1
    assert slots.locked()


async def test_a_publish_fails_only_the_messages_jetstream_did_not_store(
        nats_server: EmbeddedNats) -> None:
    """The publishes' answers (``bus._Acks``): a message whose answer does not come in time is
    not stored as far as the publisher knows (a TimeoutError, retried later; a late answer
    changes nothing), an unreadable answer or an error fails its message alone, a message no
    stream listens for gets ``NoStreamResponseError``, and nothing is left waiting."""
    settings = Settings(nats_url=nats_server.url, url_topic="acks.url", work_topic="acks.work")
    async with bus.connect(nats_server.url, "test-acks") as nc:
        js = nc.jetstream()
        await bus.ensure_streams(js, settings)
        held: list[Msg] = []

        async def answer(msg: Msg) -> None:
            if msg.data == b"late":
                held.append(msg)
            elif msg.data == b"garbled":
                await msg.respond(b"not json")
            elif msg.data == b"odd":  # JSON, but neither an ack nor an error
                await msg.respond(b"null")
            elif msg.data == b"odd error":  # an error not in JetStream's form
                await msg.respond(b'{"error": "out of cheese"}')
            elif msg.data == b"refused":
                await msg.respond(b'{"error": {"code": 400, "err_code": 10060, '
                                  b'"description": "expected stream does not match"}}')
            else:
                await msg.respond(b'{"stream": "X", "seq": 1}')

        await nc.subscribe("acks.fake", cb=answer)  # a responder that is not JetStream
        acks = bus._Acks.of(js)
        assert bus._Acks.of(nc.jetstream()) is acks  # one inbox per connection
        got = await acks.publish("acks.fake", [b"ok", b"late", b"garbled", b"refused", b"ok",
                                               b"odd", b"odd error"], 0.5)
        assert got[0] is None and got[4] is None
        assert isinstance(got[1], TimeoutError)
        assert type(got[2]) is nats.js.errors.Error and "unreadable" in str(got[2])
        assert isinstance(got[3], nats.js.errors.BadRequestError)
        assert type(got[5]) is nats.js.errors.Error and "unreadable" in str(got[5])
        assert type(got[6]) is nats.js.errors.Error and "out of cheese" in str(got[6])
        for m in held:  # answered after the publisher gave up: nothing waits for it
            await m.respond(b'{"stream": "X", "seq": 2}')
        await nc.flush()
        (nowhere,) = await acks.publish("acks.nowhere", [b"x"], 5)
        assert isinstance(nowhere, nats.js.errors.NoStreamResponseError)
        assert await acks.publish(settings.work_topic, [b"a", b"b"], 5) == [None, None]
        assert await _depth(js, settings.work_topic, 2) == 2
        assert acks.waiting == {}
        # A publisher cancelled while it waits leaves nothing waiting either.
        waiting = asyncio.create_task(acks.publish("acks.fake", [b"late", b"late"], 30))
        await _eventually(lambda: asyncio.sleep(0, len(held)), lambda n: n == 3)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert acks.waiting == {}
    # On a closed connection no message goes: each fails with the client's refusal.
    closed = await acks.publish(settings.work_topic, [b"a", b"b"], 5)
    assert [type(e) for e in closed] == [nats.errors.ConnectionClosedError] * 2
