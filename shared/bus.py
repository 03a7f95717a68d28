"""NATS JetStream: connection with retries, stream and consumer set-up, publishing, pulling,
and the one place that turns a processing outcome into ack / nak / term.

The queues are work-queue streams (a message is removed once acked) with one durable pull
consumer each, shared by every foreman (URL queue) or every worker serving a fetcher kind (that
kind's work queue: ``work_subject``, ``worker_consumer``; and that kind's task queue:
``task_subject``, ``task_consumer``, never shared with visits). AckWait is the
lease on a message; a message not acked in time, or nak'ed, is delivered again, up to the
consumer's MaxDeliver deliveries in all (see ``settle``).

The streams and consumers a process set up are remembered (``_Topology``): when the server answers
that one is missing, as a NATS server restarted on an empty store does, the publish, pull or depth
query that found out creates it again (``restore``). Trouble that lasts (refused publishes, failed
acks, pulls, connection errors) is logged at WARNING, one line per ``WARN_INTERVAL`` and kind
with a count of the lines held back, so an outage does not flood the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import importlib.util
import json
import logging
import math
import ssl
import time
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import NO_RESPONDERS_STATUS
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    Header,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from shared.backoff import retrying
from shared.config import Settings, stream_name
from shared.errors import ConfigError
from shared.messages import BadMessage, TaskMessage, VisitMessage
from shared.secrets import redact_url

log = logging.getLogger(__name__)
T = TypeVar("T")

FOREMAN_CONSUMER = "foreman"
WORKER_CONSUMER = "worker"  # the http workers' durable; worker-<kind> for the others
HTTP = "http"  # the fetcher kind of every job that names none
PUBLISH_CHUNK = 512
PUBLISH_TIMEOUT = 5.0  # seconds a publish waits for JetStream to store its message

# Errors of a NATS server that is restarting, unreachable or not ready (JetStream answers 503
# for a while after a restart): wait and try again.
TRANSIENT = (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError, ConnectionError,
             OSError)

# A publish refused for these reasons: the connection cannot send the chunk's other messages
# either (a refusal for the message itself, its size, fails that message alone).
_UNUSABLE = (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError,
             nats.errors.ConnectionDrainingError, nats.errors.ConnectionReconnectingError)

# What a pull from a consumer the server does not have gets: a 503 "no responders" status
# (nats-py raises ServiceUnavailableError; the others for safety). A publish no stream listens
# to raises NoStreamResponseError; a stream query, NotFoundError.
NO_CONSUMER = (nats.js.errors.ServiceUnavailableError, nats.js.errors.NotFoundError,
               nats.errors.NoRespondersError)

WARN_INTERVAL = 10.0  # seconds between two warnings of one kind (the others are counted)
RESTORE_INTERVAL = 1.0  # seconds between two checks of one stream for what the server lost


class _Throttle:
    """One kind of warning, logged at most once per ``WARN_INTERVAL`` with how many were held
    back since the last one."""

    def __init__(self) -> None:
        self.last = -math.inf
        self.held = 0

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self.last < WARN_INTERVAL:
            self.held += 1
            return
        if self.held:
            msg, args = msg + " (%d more like it since the last)", (*args, self.held)
        log.warning(msg, *args)
        self.last, self.held = now, 0


_WARNINGS: defaultdict[str, _Throttle] = defaultdict(_Throttle)


def _warn(kind: str, msg: str, *args: object) -> None:
    _WARNINGS[kind].warning(msg, *args)


def warn(kind: str, msg: str, *args: object) -> None:
    """A warning about queue trouble that may last: one line per ``WARN_INTERVAL`` and kind."""
    _warn(kind, msg, *args)


@dataclass
class _Topology:
    """The streams and durable consumers this process set up, with the config it set them up
    with (tiers that run in one process, as in tests, share it: a stream's config is the same
    for all), the delivery limit each consumer has on the server, and the stream each pull
    subscription reads."""

    streams: dict[str, StreamConfig] = field(default_factory=dict)
    consumers: defaultdict[str, dict[str, ConsumerConfig]] = field(
        default_factory=lambda: defaultdict(dict))
    max_deliver: dict[tuple[str, str], int] = field(default_factory=dict)  # (stream, durable)
    bound: weakref.WeakKeyDictionary[JetStreamContext.PullSubscription,
                                     tuple[JetStreamContext, str]] = field(
        default_factory=weakref.WeakKeyDictionary)
    checked: dict[str, float] = field(default_factory=dict)  # stream -> last restore check

    def note_max_deliver(self, stream: str, durable: str, limit: int | None) -> None:
        if limit and limit > 0:
            self.max_deliver[(stream, durable)] = limit
        else:  # unlimited
            self.max_deliver.pop((stream, durable), None)


_topology = _Topology()


@dataclass(frozen=True)
class NatsOptions:
    """How a tier authenticates to NATS and secures the connection: a user and password, a
    token, a credentials file (JWT + nkey seed) or an nkey seed file, and TLS (a CA file, a
    client certificate and key). The defaults are none of them: the server's own choice (an
    open server on a trusted network; a ``tls://`` URL still verifies it against the system's
    CAs). ``from_settings``: the ``nats*`` settings."""

    user: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    creds_file: Path | None = None
    nkey_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # The context of the TLS files, built once by from_settings (None: built per connect_args).
    tls_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> NatsOptions:
        """The options of ``settings`` (``natsUser``, ``natsPasswordFile``, ``natsTokenFile``,
        ``natsCredsFile``, ``natsNkeyFile``, ``natsTLS*File``); ConfigError when a credentials
        or nkey file is named and the ``nkeys`` package (``harvester[nats-auth]``) is missing,
        or a TLS file cannot be loaded. Each option is the setting ``nats_<its name>``."""
        options = cls(**{f.name: getattr(settings, "nats_" + f.name)
                         for f in dataclasses.fields(cls) if f.name != "tls_context"})
        for key, path in (("natsCredsFile", options.creds_file),
                          ("natsNkeyFile", options.nkey_file)):
            if path is not None and importlib.util.find_spec("nkeys") is None:
                raise ConfigError(key, "needs the nkeys package: pip install "
                                  "'harvester[nats-auth]'")
        # Built now: a bad TLS file is a config error at start, not a retry for ever; and the
        # files are read once, not on every connect.
        return dataclasses.replace(options, tls_context=options.tls())

    def tls(self) -> ssl.SSLContext | None:
        """The TLS context: the system's CAs or ``tls_ca_file``'s, with the client certificate
        when one is named; None when no TLS file is named."""
        if not (self.tls_ca_file or self.tls_cert_file or self.tls_key_file):
            return None
        try:
            context = ssl.create_default_context(
                cafile=str(self.tls_ca_file) if self.tls_ca_file else None)
            if self.tls_cert_file:
                context.load_cert_chain(str(self.tls_cert_file),
                                        str(self.tls_key_file) if self.tls_key_file else None)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError("natsTLS", f"cannot load the TLS files: {type(e).__name__}: "
                              f"{e.strerror or e}") from None
        return context

    def connect_args(self) -> dict[str, Any]:
        """``nats.connect``'s keyword arguments for these options (only those set)."""
        args: dict[str, Any] = {}
        if self.user:
            args["user"] = self.user
        if self.password:
            args["password"] = self.password
        if self.token:
            args["token"] = self.token
        if self.creds_file:
            args["user_credentials"] = str(self.creds_file)
        if self.nkey_file:
            args["nkeys_seed"] = str(self.nkey_file)
        context = self.tls() if self.tls_context is None else self.tls_context
        if context is not None:
            args["tls"] = context
        return args


def nats_servers(url: str) -> list[str]:
    """The server URLs of ``natsURL``: one, or a cluster's nodes comma-separated (the client
    connects to one and fails over to the others, and learns the rest from the cluster)."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    if not servers:
        raise ConfigError("natsURL", "names no server")
    return servers


@asynccontextmanager
async def connect(url: str, name: str, retry_for: float | None = None, *,
                  options: NatsOptions | None = None) -> AsyncIterator[NATS]:
    """Connect (retrying with backoff while the server is unreachable) with ``options`` (none:
    as the URL says); flush and close on exit. The URL is logged without its credentials."""
    extra = (options or NatsOptions()).connect_args()
    nc = await retrying(
        lambda: nats.connect(servers=nats_servers(url), name=name, connect_timeout=2,
                             max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                             allow_reconnect=True, error_cb=_log_error,
                             disconnected_cb=_disconnected, reconnected_cb=_reconnected,
                             **extra),
        f"NATS at {redact_url(url)}", (nats.errors.NoServersError, *TRANSIENT), retry_for)
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
    _warn("nats", "NATS: %s", e)


async def _disconnected() -> None:
    log.info("NATS disconnected")


async def _reconnected() -> None:
    log.info("NATS reconnected")


def work_subject(settings: Settings, kind: str) -> str:
    """The subject (and, through ``stream_name``, the stream) of a fetcher kind's work queue:
    ``work_topic`` for http, as before kinds existed, so a rolling upgrade loses no queued
    message; ``work_topic.<kind>`` for the others."""
    return settings.work_topic if kind == HTTP else f"{settings.work_topic}.{kind}"


def worker_consumer(kind: str) -> str:
    """The durable consumer shared by every worker serving ``kind``."""
    return WORKER_CONSUMER if kind == HTTP else f"{WORKER_CONSUMER}-{kind}"


async def ensure_streams(js: JetStreamContext, settings: Settings,
                         kinds: Iterable[str] | None = None) -> None:
    """Create (or bring up to date) the URL stream and the work stream of each fetcher kind
    (``kinds``, default ``settings.fetcher_kinds``: a worker passes the kinds it serves), all
    file storage and work-queue retention. Each kind has its own stream, hence its own cap and
    depth: a backlog of one kind never refuses another kind's publishes. Their configs are
    kept, so ``restore`` can create them again should the server lose them."""
    kinds = settings.fetcher_kinds if kinds is None else kinds
    topics = [(settings.url_topic, settings.url_queue_limit)]
    topics += [(work_subject(settings, k), settings.work_queue_limit) for k in dict.fromkeys(kinds)]
    for topic, limit in topics:
        await _ensure_queue_stream(js, topic, limit, settings.nats_replicas)


async def _ensure_queue_stream(js: JetStreamContext, topic: str, limit: int,
                               replicas: int = 1) -> None:
    """Create (or bring up to date) the work-queue stream of ``topic``, file storage, its hard
    cap a little above ``limit`` (the limit its publishers keep to: a publish beyond the cap
    is refused, discard new, and retried by its publisher, never silently dropped), stored on
    ``replicas`` nodes of a cluster (``natsReplicas``; its consumers take the stream's); its
    config kept for ``restore``."""
    name = stream_name(topic)
    cfg = StreamConfig(name=name, subjects=[topic],
                       retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
                       max_msgs=limit + limit // 2 + 1000, discard=DiscardPolicy.NEW,
                       duplicate_window=120.0, num_replicas=replicas)
    _topology.streams[name] = cfg
    await _retry(functools.partial(_add_or_update_stream, js, cfg))


def task_subject(settings: Settings, kind: str) -> str:
    """The subject (and, through ``stream_name``, the stream) of a fetcher kind's task queue:
    ``<taskTopic>.<kind>``. Tasks and visits never share a stream."""
    return f"{settings.task_topic}.{kind}"


def task_consumer(kind: str) -> str:
    """The durable consumer shared by every worker running ``kind``'s tasks."""
    return f"tasks-{kind}"


async def ensure_task_streams(js: JetStreamContext, settings: Settings,
                              kinds: Iterable[str] | None = None) -> None:
    """Create (or bring up to date) the task stream of each fetcher kind (``kinds``, default
    ``settings.fetcher_kinds``), as ``ensure_streams`` does the work streams."""
    kinds = settings.fetcher_kinds if kinds is None else kinds
    for kind in dict.fromkeys(kinds):
        await _ensure_queue_stream(js, task_subject(settings, kind), settings.work_queue_limit,
                                   settings.nats_replicas)


async def publish_tasks(js: JetStreamContext, subject: str, ids: Sequence[int]) -> list[int]:
    """Publish task messages, as ``publish_visits`` does visit messages: the ids NOT stored
    (for the caller to ``unclaim``)."""
    return await _publish_all(js, subject, ids, lambda t: TaskMessage(task=t).encode(),
                              "task messages")


async def _add_or_update_stream(js: JetStreamContext, cfg: StreamConfig) -> None:
    try:
        await js.add_stream(config=cfg)
    except nats.js.errors.BadRequestError:
        await js.update_stream(config=cfg)


async def _retry(op: Callable[[], Awaitable[T]]) -> T:
    """JetStream set-up calls, retried while the server comes up (about 5 minutes at most)."""
    return await retrying(op, "JetStream", TRANSIENT, retry_for=280.0)


async def pull_subscription(js: JetStreamContext, settings: Settings, topic: str,
                            durable: str) -> JetStreamContext.PullSubscription:
    """Bind to the tier's shared durable pull consumer, creating it if needed (and again should
    the server lose it: ``restore``)."""
    cfg = ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT,
                         deliver_policy=DeliverPolicy.ALL, ack_wait=settings.ack_wait,
                         max_deliver=settings.max_deliver, max_ack_pending=20_000,
                         filter_subject=topic)
    stream = stream_name(topic)
    _topology.consumers[stream][durable] = cfg

    async def sub() -> JetStreamContext.PullSubscription:
        try:
            await js.add_consumer(stream, config=cfg)
        except nats.js.errors.BadRequestError:
            pass  # exists with another config (e.g. a different ack_wait): keep it
        info = await js.consumer_info(stream, durable)
        _topology.note_max_deliver(stream, durable, info.config.max_deliver)
        return await js.pull_subscribe_bind(durable=durable, stream=stream)

    bound = await _retry(sub)
    _topology.bound[bound] = (js, stream)
    return bound


async def restore(js: JetStreamContext, stream: str) -> bool:
    """Create ``stream`` and this process's consumers on it again if the server no longer has
    them (a NATS server restarted on an empty store); True if anything was created.

    The one place that recovers from a lost store: a publish with no stream to answer it, a pull
    from a missing consumer and a depth query of a missing stream all come here. Checks one
    stream at most once per ``RESTORE_INTERVAL``; never raises (a server not ready yet is
    checked again by the next failure). The messages the store held are lost with it: their
    visits are still pending in PostgreSQL, and the watchdog publishes them again.
    """
    cfg = _topology.streams.get(stream)
    now = time.monotonic()
    if cfg is None or now - _topology.checked.get(stream, -math.inf) < RESTORE_INTERVAL:
        return False
    _topology.checked[stream] = now
    created: list[str] = []
    try:
        if not await _exists(js.stream_info(stream)):
            await _add_or_update_stream(js, cfg)
            created.append(f"stream {stream}")
        for durable, consumer in _topology.consumers.get(stream, {}).items():
            try:  # another process may have created it again, with its own limit
                info = await js.consumer_info(stream, durable)
            except nats.js.errors.NotFoundError:
                info = await js.add_consumer(stream, config=consumer)
                created.append(f"consumer {durable} of {stream}")
            _topology.note_max_deliver(stream, durable, info.config.max_deliver)
    except TRANSIENT as e:
        _warn("restore", "cannot check JetStream stream %s (%s: %s)", stream, type(e).__name__, e)
    if created:
        log.warning("JetStream had lost %s (NATS restarted without its store?): created again",
                    " and ".join(created))
    return bool(created)


async def _exists(info: Awaitable[object]) -> bool:
    try:
        await info
    except nats.js.errors.NotFoundError:
        return False
    return True


async def take_free(slots: asyncio.Semaphore, most: int) -> int:
    """Wait for one of ``slots``, then take the others free now, up to ``most`` in all: how
    many were taken (the batch to ``pull``; the caller releases those it does not use).
    Cancelled, it holds none."""
    await slots.acquire()
    taken = 1
    try:
        while taken < most and not slots.locked():
            await slots.acquire()  # free: returns at once
            taken += 1
    except BaseException:
        for _ in range(taken):
            slots.release()
        raise
    return taken


async def pull(sub: JetStreamContext.PullSubscription, batch: int, timeout: float) -> list[Msg]:
    """Up to ``batch`` messages, waiting at most ``timeout``; [] when none came or NATS is away
    (then after a pause, so a caller's loop does not spin)."""
    try:
        return await sub.fetch(batch=batch, timeout=timeout)
    except (TimeoutError, nats.errors.TimeoutError):  # nats-py raises either when idle
        return []
    except TRANSIENT as e:
        _warn("pull", "pull failed (%s: %s); retrying", type(e).__name__, e)
        bound = _topology.bound.get(sub)
        if isinstance(e, NO_CONSUMER) and bound:
            await restore(*bound)
        await asyncio.sleep(0.5)
        return []


async def publish_visits(js: JetStreamContext, topic: str,
                         keys: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Publish visit messages, each stored by JetStream before this returns.

    Returns the keys that were NOT stored (stream full, NATS unreachable), for the caller to
    keep and try again; never raises for a publish failure. A stream the server lost is created
    again (``restore``) and the refused keys published once more.
    """
    return await _publish_all(js, topic, keys, lambda k: VisitMessage(job=k[0], url=k[1]).encode(),
                              "messages")


async def _publish_all(js: JetStreamContext, subject: str, items: Sequence[T],
                       encode: Callable[[T], bytes], what: str) -> list[T]:
    """Publish ``items`` (``encode`` makes each one's message), each stored by JetStream before
    this returns: the items NOT stored, warned of (``what`` names them); a stream the server
    lost is created again and the refused items published once more."""
    failed, error = await _publish(js, subject, items, encode)
    if isinstance(error, nats.js.errors.NoStreamResponseError) and await restore(
            js, stream_name(subject)):
        failed, error = await _publish(js, subject, failed, encode)
    if failed:
        _warn(f"publish {subject}", "%d of %d %s not stored on %s (%s: %s); they will be "
              "published again", len(failed), len(items), what, subject, type(error).__name__,
              error)
    return failed


async def _publish(js: JetStreamContext, subject: str, items: Sequence[T],
                   encode: Callable[[T], bytes]) -> tuple[list[T], BaseException | None]:
    """The items not stored, and the first error."""
    failed: list[T] = []
    error: BaseException | None = None
    acks = _Acks.of(js)
    for i in range(0, len(items), PUBLISH_CHUNK):
        chunk = items[i:i + PUBLISH_CHUNK]
        answers = await acks.publish(subject, [encode(item) for item in chunk], PUBLISH_TIMEOUT)
        for item, answer in zip(chunk, answers, strict=True):
            if answer is not None:  # (each a TRANSIENT error: kept, published again later)
                failed.append(item)
                error = error or answer
    return failed, error


class _Acks:
    """JetStream's answers to the publishes of one connection, each stored message's ack (or
    error) sent to a reply subject under one inbox this connection subscribes to once: a
    publish is a message out and one in, where ``JetStreamContext.publish`` makes each a
    request of its own (a subscription future, a timer, a ``PubAck``): about 11 against 32
    µs of CPU a message, in the feeder, which publishes every visit. (nats-py's
    ``publish_async`` is the same idea, at ~20 µs, and its reply handler raises instead of
    failing the publish when JetStream answers an error.)"""

    def __init__(self, nc: NATS) -> None:
        # weak: _ACKS holds this by its connection, which must stay free to be collected
        self._nc = weakref.ref(nc)
        self.inbox = nc.new_inbox() + "."
        self.waiting: dict[str, asyncio.Future[None]] = {}
        self.subscribed = False
        self._subscribing = asyncio.Lock()  # the first publishers subscribe once between them
        self.sent = 0

    @classmethod
    def of(cls, js: JetStreamContext) -> _Acks:
        """The connection's (nats-py keeps a context's client in ``_nc``: no public accessor)."""
        nc: NATS = js._nc
        acks = _ACKS.get(nc)
        if acks is None:
            acks = _ACKS[nc] = cls(nc)
        return acks

    @property
    def nc(self) -> NATS:
        nc = self._nc()
        if nc is None:  # (a caller holds the context, which holds the connection)
            raise nats.errors.ConnectionClosedError
        return nc

    async def publish(self, subject: str, payloads: Sequence[bytes],
                      timeout: float) -> list[BaseException | None]:
        """Publish each payload, then wait up to ``timeout`` (from the last one sent) for
        every answer: per payload, None (stored) or why not (JetStream's error;
        ``NoStreamResponseError``: no stream listens; ``TimeoutError``: no answer in time,
        perhaps stored all the same; the client's refusal to send it)."""
        try:
            async with self._subscribing:
                if not self.subscribed:  # (nats-py subscribes again after a reconnect)
                    await self.nc.subscribe(self.inbox + "*", cb=self._answer)
                    self.subscribed = True
        except TRANSIENT as e:
            return [e] * len(payloads)
        loop = asyncio.get_running_loop()
        answers: list[BaseException | None] = [None] * len(payloads)
        sent: dict[str, int] = {}  # token -> index
        try:
            for n, payload in enumerate(payloads):
                self.sent += 1
                token = str(self.sent)
                self.waiting[token] = loop.create_future()
                sent[token] = n
                try:
                    await self.nc.publish(subject, payload, reply=self.inbox + token)
                except TRANSIENT as e:
                    self.waiting.pop(token).cancel()
                    del sent[token]
                    if not isinstance(e, _UNUSABLE):  # this message's fault (its size)
                        answers[n] = e
                        continue
                    answers[n:] = [e] * (len(payloads) - n)  # nor will the others go
                    break
            futures = {self.waiting[t]: n for t, n in sent.items()}
            if futures:
                await asyncio.wait(futures, timeout=timeout)
            for answered, n in futures.items():
                if not answered.done():
                    answers[n] = TimeoutError(f"no answer from JetStream in {timeout} s")
                else:
                    answers[n] = answered.exception()
        finally:
            for token in sent:  # answered, or given up: a late answer finds nothing
                if (left := self.waiting.pop(token, None)) is not None:
                    left.cancel()
        return answers

    async def _answer(self, msg: Msg) -> None:
        future = self.waiting.get(msg.subject[len(self.inbox):])
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get(Header.STATUS) == NO_RESPONDERS_STATUS:
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            answer = json.loads(msg.data)
        except ValueError:
            answer = None
        if isinstance(answer, dict) and "error" in answer:
            try:
                nats.js.errors.APIError.from_error(answer["error"])  # raises its kind of error
            except nats.js.errors.APIError as e:
                future.set_exception(e)
            except Exception:  # noqa: BLE001 - an error not in JetStream's form
                future.set_exception(nats.js.errors.Error(f"error {answer['error']!r}"))
        elif isinstance(answer, dict) and "seq" in answer:  # stored: its sequence number
            future.set_result(None)
        else:
            future.set_exception(nats.js.errors.Error(f"unreadable answer {msg.data[:200]!r}"))


_ACKS: weakref.WeakKeyDictionary[NATS, _Acks] = weakref.WeakKeyDictionary()


async def stream_depth(js: JetStreamContext, topic: str) -> int:
    """Messages in a work-queue stream: published and not yet acked."""
    stream = stream_name(topic)
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        if not await restore(js, stream):
            raise
        info = await js.stream_info(stream)
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
    """The one place a processing outcome becomes ack / nak / term. Never raises: a message
    that could not be settled is delivered again after AckWait (logged as a warning).

    A retry on a message's last allowed delivery (the MaxDeliver of the message's own consumer,
    as the server has it, read when this process bound to the consumer) terminates it instead:
    JetStream would never deliver it again, yet keep it in the work-queue stream, where it would
    count against the queue's limit for good. Its visit is still pending in PostgreSQL, and the
    watchdog publishes it again (as a new message) after ``staleAfter``.
    """
    try:
        if outcome.verdict is Verdict.ACK:
            await msg.ack()
        elif outcome.verdict is Verdict.RETRY and _last_delivery(msg):
            _warn("last delivery", "message %s: last delivery not processed, terminated; the "
                  "watchdog will publish its visit again", msg.data[:80])
            await msg.term()
        elif outcome.verdict is Verdict.RETRY:
            await msg.nak(delay=outcome.delay or None)
        else:
            await msg.term()
    except Exception as e:  # noqa: BLE001 - the message comes back after AckWait anyway
        _warn("settle", "could not %s a message (%s: %s); it will be redelivered",
              "nak" if outcome.verdict is Verdict.RETRY else outcome.verdict.value,
              type(e).__name__, e)


def _last_delivery(msg: Msg) -> bool:
    try:
        meta = msg.metadata
    except (nats.errors.Error, ValueError, AttributeError):  # not a JetStream message
        return False
    limit = _topology.max_deliver.get((meta.stream or "", meta.consumer or ""))
    return limit is not None and meta.num_delivered is not None and meta.num_delivered >= limit


class KeepAlive:
    """Tell JetStream a long step is still alive, so its messages' leases do not expire: every
    ``interval`` seconds, ``in_progress`` for each of ``msgs`` (a worker's visit steps, a task
    run). A timer, not a task: almost every step (a page's fetch, its parse, its commit) ends
    long before its first beat, and a timer is armed and cancelled at a fraction of what a
    task costs to create and cancel (two a page). At most one beat is in flight; leaving the
    step cancels it."""

    def __init__(self, msgs: list[Msg], interval: float) -> None:
        self.msgs, self.interval = msgs, interval
        self._timer: asyncio.TimerHandle | None = None
        self._beat: asyncio.Task[None] | None = None

    def _due(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._due)  # first
        if self._beat is None or self._beat.done():
            self._beat = asyncio.ensure_future(self._tell())

    async def _tell(self) -> None:
        for m in self.msgs:
            with contextlib.suppress(Exception):  # a missed beat only risks a redelivery
                await m.in_progress()

    async def __aenter__(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._due)

    async def __aexit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._beat is not None:
            self._beat.cancel()
