"""NATS JetStream: connection with retries, stream and consumer set-up, publishing, pulling,
and the one place that turns a processing outcome into ack / nak / term.

Both queues are work-queue streams (a message is removed once acked) with one durable pull
consumer each, shared by every foreman (URL queue) or every worker (work queue). AckWait is the
lease on a message; a message not acked in time, or nak'ed, is delivered again.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from shared.backoff import retrying
from shared.config import Settings, stream_name
from shared.messages import BadMessage, VisitMessage

log = logging.getLogger(__name__)

FOREMAN_CONSUMER = "foreman"
WORKER_CONSUMER = "worker"
PUBLISH_CHUNK = 512

# Errors of a NATS server that is restarting, unreachable or not ready (JetStream answers 503
# for a while after a restart): wait and try again.
TRANSIENT = (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError, ConnectionError, OSError)


@asynccontextmanager
async def connect(url: str, name: str, retry_for: float | None = None) -> AsyncIterator[NATS]:
    """Connect (retrying with backoff while the server is unreachable); flush and close on exit."""
    nc = await retrying(
        lambda: nats.connect(servers=[url], name=name, connect_timeout=2,
                             max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                             allow_reconnect=True, error_cb=_log_error,
                             disconnected_cb=_disconnected, reconnected_cb=_reconnected),
        f"NATS at {url}", (nats.errors.NoServersError, *TRANSIENT), retry_for)
    try:
        yield nc
    finally:
        # Not drain(): nats-py's drain waits on pull subscriptions' internal queues forever.
        # Every publish was already awaited; flush sends the acks still buffered, then close.
        try:
            await nc.flush(timeout=5)
        except Exception as e:  # noqa: BLE001 - closing must not mask the real exit reason
            log.debug("NATS flush on close failed: %s", e)
        await nc.close()


async def _log_error(e: Exception) -> None:
    log.debug("NATS: %s", e)


async def _disconnected() -> None:
    log.info("NATS disconnected")


async def _reconnected() -> None:
    log.info("NATS reconnected")


async def ensure_streams(js: JetStreamContext, settings: Settings) -> None:
    """Create (or bring up to date) the URL and work streams: file storage, work-queue retention."""
    # Hard caps a little above the limits the feeder and the foremen keep to: a publish beyond
    # them is refused (discard new) and retried by its publisher, never silently dropped.
    for topic, limit in ((settings.url_topic, settings.url_queue_limit),
                         (settings.work_topic, settings.work_queue_limit)):
        cfg = StreamConfig(name=stream_name(topic), subjects=[topic],
                           retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
                           max_msgs=limit + limit // 2 + 1000, discard=DiscardPolicy.NEW,
                           duplicate_window=120.0)
        await _retry(lambda cfg=cfg: _add_or_update_stream(js, cfg))


async def _add_or_update_stream(js: JetStreamContext, cfg: StreamConfig) -> None:
    try:
        await js.add_stream(config=cfg)
    except nats.js.errors.BadRequestError:
        await js.update_stream(config=cfg)


async def _retry(op):  # type: ignore[no-untyped-def]
    """JetStream set-up calls, retried while the server comes up (about 5 minutes at most)."""
    return await retrying(op, "JetStream", TRANSIENT, retry_for=280.0)


async def pull_subscription(js: JetStreamContext, settings: Settings, topic: str,
                            durable: str) -> JetStreamContext.PullSubscription:
    """Bind to the tier's shared durable pull consumer, creating it if needed."""
    cfg = ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT,
                         deliver_policy=DeliverPolicy.ALL, ack_wait=settings.ack_wait,
                         max_deliver=settings.max_deliver, max_ack_pending=20_000,
                         filter_subject=topic)
    stream = stream_name(topic)

    async def sub() -> JetStreamContext.PullSubscription:
        try:
            await js.add_consumer(stream, config=cfg)
        except nats.js.errors.BadRequestError:
            pass  # exists with another config (e.g. a different ack_wait): keep it
        info = await js.consumer_info(stream, durable)
        if info.config.max_deliver and info.config.max_deliver > 0:
            _MAX_DELIVER[durable] = info.config.max_deliver
        return await js.pull_subscribe_bind(durable=durable, stream=stream)

    return await _retry(sub)


# Deliveries allowed per message, by durable consumer (as the server has it), for ``settle``.
_MAX_DELIVER: dict[str, int] = {}


async def pull(sub: JetStreamContext.PullSubscription, batch: int, timeout: float) -> list[Msg]:
    """Up to ``batch`` messages, waiting at most ``timeout``; [] when none came or NATS is away
    (then after a pause, so a caller's loop does not spin)."""
    try:
        return await sub.fetch(batch=batch, timeout=timeout)
    except (TimeoutError, nats.errors.TimeoutError):  # nats-py raises either when idle
        return []
    except TRANSIENT as e:
        log.warning("pull failed (%s: %s); retrying", type(e).__name__, e)
        await asyncio.sleep(0.5)
        return []


async def publish_visits(js: JetStreamContext, topic: str,
                         keys: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Publish visit messages, each stored by JetStream before this returns.

    Returns the keys that were NOT stored (stream full, NATS unreachable), for the caller to
    keep and try again; never raises for a publish failure.
    """
    failed: list[tuple[int, int]] = []
    for i in range(0, len(keys), PUBLISH_CHUNK):
        chunk = keys[i:i + PUBLISH_CHUNK]
        acks = await asyncio.gather(*(
            js.publish(topic, VisitMessage(job=j, url=u).encode(), timeout=5) for j, u in chunk),
            return_exceptions=True)
        for key, ack in zip(chunk, acks):
            if isinstance(ack, BaseException):
                if not isinstance(ack, (*TRANSIENT, nats.js.errors.Error, nats.errors.Error)):
                    raise ack
                failed.append(key)
    if failed:
        log.debug("%d of %d messages not stored on %s", len(failed), len(keys), topic)
    return failed


async def stream_depth(js: JetStreamContext, topic: str) -> int:
    """Messages in a work-queue stream: published and not yet acked."""
    info = await js.stream_info(stream_name(topic))
    return int(info.state.messages)


async def supervise(tasks: Sequence[asyncio.Task[None]], stop: asyncio.Event) -> None:
    """Wait for ``stop``; if a long-running task of the tier ends first, that is a bug or a
    dead dependency: stop the others and raise, so the process exits non-zero and its
    supervisor (systemd, k8s, harvester up) starts a fresh one instead of a silent zombie."""
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if stopping in done:
        return
    stopping.cancel()
    stop.set()
    failed = next(iter(done))
    exc = failed.exception() if not failed.cancelled() else None
    raise RuntimeError(f"task {failed.get_name()} ended unexpectedly") from exc


async def group_visits(msgs: Sequence[Msg]) -> dict[tuple[int, int], list[Msg]]:
    """Messages by the visit they name (a batch may hold duplicates); an undecodable message is
    terminated here, logged once."""
    by_key: dict[tuple[int, int], list[Msg]] = defaultdict(list)
    for m in msgs:
        try:
            by_key[VisitMessage.decode(m.data).key].append(m)
        except BadMessage as e:
            log.error("%s", e)
            await settle(m, Settle(Verdict.TERM))
    return by_key


class Verdict(enum.Enum):
    ACK = "ack"      # effects committed (or there were none to make): done
    RETRY = "retry"  # not done; deliver again after a delay
    TERM = "term"    # can never be processed: drop it, it was logged


@dataclass(frozen=True, slots=True)
class Settle:
    verdict: Verdict
    delay: float = 0.0


async def settle_all(groups: Iterable[Sequence[Msg]], outcome: Settle) -> None:
    """``settle`` every message of these groups (each the messages of one visit) alike."""
    for msgs in groups:
        for m in msgs:
            await settle(m, outcome)


async def settle(msg: Msg, outcome: Settle) -> None:
    """The one place a processing outcome becomes ack / nak / term. Never raises.

    A retry on a message's last allowed delivery terminates it instead: JetStream would never
    deliver it again, yet keep it in the work-queue stream, where it would count against the
    queue's limit for good. Its visit is still pending in PostgreSQL, and the watchdog
    publishes it again (as a new message) after ``staleAfter``.
    """
    try:
        if outcome.verdict is Verdict.ACK:
            await msg.ack()
        elif outcome.verdict is Verdict.RETRY and _last_delivery(msg):
            log.warning("message %s: last delivery not processed; the watchdog will publish "
                        "its visit again", msg.data[:80])
            await msg.term()
        elif outcome.verdict is Verdict.RETRY:
            await msg.nak(delay=outcome.delay or None)
        else:
            await msg.term()
    except Exception as e:  # noqa: BLE001 - the message comes back after AckWait anyway
        log.debug("could not settle message (%s): it will be redelivered", e)


def _last_delivery(msg: Msg) -> bool:
    try:
        meta = msg.metadata
    except (nats.errors.Error, ValueError, AttributeError):  # not a JetStream message
        return False
    limit = _MAX_DELIVER.get(meta.consumer or "")
    return limit is not None and meta.num_delivered is not None and meta.num_delivered >= limit


def retry_delay(attempt: int, base: float = 1.0, cap: float = 60.0) -> float:
    """Exponential backoff with jitter: about base, 2*base, 4*base ... capped."""
    return min(cap, base * 2 ** max(0, attempt - 1)) * random.uniform(0.5, 1.5)
