"""The task runner: a worker serving fetcher kind K runs K's tasks (``POST /tasks``) from its
task queue (``bus.task_subject``), ``taskConcurrency`` at once.

For each message: ``tasks.start`` (running, attempt + 1; nothing to run: ack) → resolve the
allow-listed function → call it with its ``args`` and, by parameter name, ``ctx``
(``TaskContext``), ``loader``, ``init`` (``worker.taskfuncs``) and ``sessions``
(``worker.sessions.SessionStore``), the message kept alive with ``in_progress`` meanwhile →
one transaction: ``tasks.finish`` fenced by the attempt, with the follow-ups it enqueued →
then the ack. So a worker killed mid-task leaves its message unacked:
it is delivered again after AckWait and the task runs again (at least once; its
``ctx.idempotency_key`` is the same each time, its follow-ups' keys too, so none is doubled).

An exception fails the task (``{type, message, traceback}``; not retried, the runner goes on);
``RetryLater(delay)`` queues it again, due in ``delay`` seconds; a result that is not JSON
fails it with ``TypeError``; past ``taskTimeout`` it fails with ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Awaitable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from shared import bus, metrics
from shared.bus import Settle, Verdict
from shared.config import Settings
from shared.db import tasks
from shared.db.pool import RETRYABLE, in_transaction
from shared.messages import BadMessage, TaskMessage
from worker.fetchers import Fetcher, HopGate
from worker.loader import Loader
from worker.sessions import SessionStore
from worker.taskfuncs import call, inject, resolve
from worker.tasks import RetryLater

log = logging.getLogger(__name__)


class Health(Protocol):
    def record(self, kind: str, failed: bool, seconds: float) -> None: ...


class TaskRefused(Exception):
    """A task names a function this worker's config does not allow-list."""


@dataclass
class TaskContext:
    """What a running task knows and can do: its ids, attempt and idempotency key (the
    client's, else ``task-<id>``: the same on every attempt), the worker's init values, the
    loader, ``enqueue`` (follow-ups, committed with the result) and ``partial``."""
    task_id: int
    root_id: int
    parent_id: int | None
    name: str
    kind: str
    attempt: int
    idempotency_key: str
    init: Mapping[str, Any]
    loader: Any
    _settings: Settings = field(repr=False)
    _pool: asyncpg.Pool = field(repr=False)
    children: list[tasks.Child] = field(default_factory=list, repr=False)
    _partials: int = field(default=0, repr=False)
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop,
                                             repr=False)
    _loop_thread: int = field(default_factory=threading.get_ident, repr=False)

    def enqueue(self, name: str, args: Mapping[str, Any] | None = None, *,
                kind: str | None = None, key: str | None = None) -> str:
        """Enqueue follow-up task ``name`` (allow-listed) under this one, on ``kind`` (default:
        this task's). It is inserted when this task succeeds, with idempotency key ``key``
        (default ``<this task's id>/<n>``, n counting this attempt's enqueues from 1), so a
        re-run enqueues no duplicate. Returns the key. ValueError for a name not allow-listed,
        a kind not configured or arguments that are not a JSON object."""
        if name not in self._settings.tasks:
            raise ValueError(f"unknown task {name!r} (allowed: "
                             f"{', '.join(sorted(self._settings.tasks)) or 'none'})")
        kind = self.kind if kind is None else kind
        if kind not in self._settings.fetcher_kinds:
            raise ValueError(f"unknown kind {kind!r} (fetcherKinds: "
                             f"{', '.join(self._settings.fetcher_kinds)})")
        args = dict(args or {})
        try:
            json.dumps(args, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"arguments of {name!r} are not JSON: {e}") from None
        key = f"{self.task_id}/{len(self.children) + 1}" if key is None else str(key)
        self.children.append(tasks.Child(name, kind, args, key))
        return key

    def partial(self, value: Any) -> Awaitable[None]:
        """Record a partial result now (shown under the root with ``GET /tasks``); a re-run
        writes the same sequence numbers again, replacing them. ``await ctx.partial(v)`` in
        an async function; in a sync one (its own thread) ``ctx.partial(v)`` writes before it
        returns."""
        self._partials += 1
        seq = self._partials
        write = in_transaction(self._pool, lambda conn: tasks.add_partial(
            conn, self.task_id, self.root_id, seq, value))
        if threading.get_ident() == self._loop_thread:
            return write
        asyncio.run_coroutine_threadsafe(write, self._loop).result()
        return _Written()


class _Written:
    """What ``partial`` gives a sync caller: the write is already done (awaiting it is a
    no-op, and leaving it is no unawaited coroutine)."""

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield


def describe_error(e: BaseException) -> dict[str, Any]:
    """An exception as a task's error: its qualified type, message and traceback."""
    t = type(e)
    name = t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    return {"type": name, "message": str(e).replace("\x00", "\\x00"),
            "traceback": "".join(traceback.format_exception(e)).replace("\x00", "\\x00")}


class TaskRunner:
    """Runs the tasks of one fetcher kind in this worker process."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, gate: HopGate, fetcher: Fetcher,
                 kind: str, init: Mapping[str, Any] | None = None, *,
                 health: Health | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self.kind = kind
        self.init = dict(init or {})
        self.health = health
        self.loader = Loader(settings, gate, fetcher)
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{kind}"
        self.slots = asyncio.Semaphore(settings.task_concurrency)
        self.running: set[asyncio.Task[None]] = set()
        self.beat = settings.ack_wait / 3

    async def serve(self, sub: JetStreamContext.PullSubscription, stop: asyncio.Event) -> None:
        """Pull and run tasks, ``taskConcurrency`` at once, until ``stop``."""
        while not stop.is_set():
            await self.slots.acquire()
            free = 1
            while free < self.settings.task_concurrency and not self.slots.locked():
                await self.slots.acquire()
                free += 1
            used = 0
            try:
                msgs = await bus.pull(sub, free, 1.0)
                for m in msgs:
                    try:
                        task_id = TaskMessage.decode(m.data).task
                    except BadMessage as e:
                        log.error("%s", e)
                        await bus.settle(m, Settle(Verdict.TERM))
                        continue
                    used += 1
                    t = asyncio.create_task(self._run(task_id, m), name=f"task {task_id}")
                    self.running.add(t)
                    t.add_done_callback(self._done)
            finally:
                for _ in range(free - used):
                    self.slots.release()

    def _done(self, t: asyncio.Task[None]) -> None:
        self.running.discard(t)
        self.slots.release()

    async def drain(self, timeout: float) -> None:
        """Let the running tasks finish within ``timeout``; cancel the rest (unacked: their
        messages are delivered again, to this or another worker)."""
        if self.running:
            _, pending = await asyncio.wait(set(self.running), timeout=timeout)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)

    async def _run(self, task_id: int, msg: Msg) -> None:
        try:
            async with self.pool.acquire() as conn:
                run = await tasks.start(conn, task_id, self.worker,
                                        self.settings.task_max_attempts,
                                        redelivery=_redelivered(msg))
        except (*RETRYABLE, asyncpg.PostgresError, OSError) as e:
            log.warning("cannot start task %d (%s); it will be redelivered", task_id, e)
            await bus.settle(msg, Settle(Verdict.RETRY, 1.0))
            return
        if run is None:  # finished already (a duplicate), unknown, or abandoned now
            await bus.settle(msg, Settle(Verdict.ACK))
            return
        ctx = TaskContext(run.id, run.root_id, run.parent_id, run.name, run.kind, run.attempt,
                          run.idem_key or f"task-{run.id}", self.init, self.loader,
                          self.settings, self.pool)
        started = time.monotonic()
        async with _keep_alive(msg, self.beat):
            outcome = await self._call(run, ctx)
        state = outcome[0]
        if self.health is not None:
            self.health.record(self.kind, state == "failed", time.monotonic() - started)
        try:
            if state == "retry":
                delay = outcome[1]
                await in_transaction(self.pool, lambda conn: tasks.retry_later(
                    conn, run.id, run.attempt, delay))
            else:
                result, error = outcome[1], outcome[2]
                children = ctx.children if state == "succeeded" else []
                done = await in_transaction(self.pool, lambda conn: tasks.finish(
                    conn, run.id, run.attempt, state, result, error, children))
                if not done:
                    log.info("task %d attempt %d finished after another took over: outcome "
                             "dropped", run.id, run.attempt)
        except (*RETRYABLE, asyncpg.PostgresError, OSError) as e:
            log.warning("cannot record task %d (%s); it will be redelivered and run again",
                        run.id, e)
            await bus.settle(msg, Settle(Verdict.RETRY, 1.0))
            return
        metrics.TASKS_FINISHED.labels(self.kind, state).inc()
        log.info("task %d (%s) attempt %d: %s", run.id, run.name, run.attempt, state)
        await bus.settle(msg, Settle(Verdict.ACK))

    async def _call(self, run: tasks.TaskRun, ctx: TaskContext) -> tuple[Any, ...]:
        """``("succeeded", result, None)``, ``("failed", None, error)`` or ``("retry",
        delay)``."""
        try:
            target = self.settings.tasks.get(run.name)
            if target is None:
                raise TaskRefused(f"task {run.name!r} is not allow-listed in this worker's config")
            fn = resolve(target)
            kwargs = inject(fn, run.args, {"ctx": ctx, "loader": self.loader,
                                           "init": self.init, "sessions": SessionStore(self.pool)})
            try:
                result = await call(fn, kwargs, self.settings.task_timeout)
            except TimeoutError as e:
                raise TimeoutError(f"task ran past taskTimeout "
                                   f"({self.settings.task_timeout:g}s)") from e
            try:
                json.dumps(result, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise TypeError(f"the task's result is not JSON: {e}") from None
        except RetryLater as e:
            return ("retry", e.delay)
        except Exception as e:  # noqa: BLE001 - the task's own error: recorded, runner goes on
            log.info("task %d (%s) failed: %s: %s", run.id, run.name, type(e).__name__, e)
            return ("failed", None, describe_error(e))
        return ("succeeded", result, None)


def _redelivered(msg: Msg) -> bool:
    """Whether JetStream delivered this message before (True when it cannot say)."""
    try:
        return (msg.metadata.num_delivered or 1) > 1
    except Exception:  # noqa: BLE001 - not a JetStream message: take it for a redelivery
        return True


class _keep_alive:
    """``in_progress`` every ``interval`` seconds while a task runs: its lease never ends."""

    def __init__(self, msg: Msg, interval: float) -> None:
        self.msg, self.interval = msg, interval
        self.task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            with contextlib.suppress(Exception):  # a missed beat only risks a redelivery
                await self.msg.in_progress()

    async def __aenter__(self) -> None:
        self.task = asyncio.create_task(self._beat())

    async def __aexit__(self, *exc: object) -> None:
        if self.task:
            self.task.cancel()
