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
``RetryLater(delay)`` queues it again, due in ``delay`` seconds; a result that is not JSON,
or that PostgreSQL cannot store (a NUL character, a lone surrogate), fails it with
``TypeError`` at once; past ``taskTimeout`` it fails with ``TimeoutError``; a follow-up
whose key names another call in its tree fails it with ``KeyConflict`` (nothing enqueued).

A sync function runs in a daemon thread of its own (``taskfuncs.in_thread``), never in the
loop's default executor. Past ``taskTimeout`` it is recorded failed at once, but the thread
cannot be stopped: its slot stays taken until the thread returns, so no more than
``taskConcurrency`` task threads ever run; being daemon threads, stuck ones never hold the
worker at exit (``drain`` gives up on them after its timeout).

A message whose task cannot be started or recorded (PostgreSQL away) comes back after
``redelivery_delay``: 0.5 s, doubling per delivery up to AckWait, so ``maxDeliver``
deliveries outlast an outage of minutes.

Task outcomes are not the worker's health (``worker.health``): a task that raises or runs
long is the user's code, and never makes a worker exit as degraded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import traceback
from collections.abc import Awaitable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

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
from worker.taskfuncs import StillRunning, call, inject, resolve
from worker.tasks import RetryLater

log = logging.getLogger(__name__)


def redelivery_delay(delivered: int, ack_wait: float) -> float:
    """Seconds before a message that could not be processed (its ``delivered``-th delivery)
    comes back: 0.5 s doubling per delivery, at most ``ack_wait``."""
    return float(min(ack_wait, 0.5 * 2 ** min(max(delivered, 1) - 1, 30)))


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
        re-run enqueues no duplicate. An own ``key`` is scoped to this task's tree (stored
        ``<root id>:<key>``): it names one follow-up in the tree, whichever task enqueues it,
        and no other tree's; the same key for another call fails this task with
        ``KeyConflict``. Returns the stored key. ValueError for a name not allow-listed, a
        kind not configured or arguments that are not a JSON object PostgreSQL can store."""
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
        if (problem := tasks.storable_problem(args)) is not None:
            raise ValueError(f"arguments of {name!r} are not storable: {problem}")
        key = (f"{self.task_id}/{len(self.children) + 1}" if key is None
               else tasks.child_key(self.root_id, str(key)))
        self.children.append(tasks.Child(name, kind, args, key))
        return key

    def partial(self, value: Any) -> Awaitable[None]:
        """Record a partial result now (shown under the root with ``GET /tasks``); a re-run
        writes the same sequence numbers again, replacing them. Only while this attempt is
        the task's current one: a superseded attempt (or a thread past its timeout) writes
        nothing. ``await ctx.partial(v)`` in an async function; in a sync one (its own thread)
        ``ctx.partial(v)`` writes before it returns."""
        self._partials += 1
        seq = self._partials
        write = self._write_partial(seq, value)
        if threading.get_ident() == self._loop_thread:
            return write
        asyncio.run_coroutine_threadsafe(write, self._loop).result()
        return _Written()

    async def _write_partial(self, seq: int, value: Any) -> None:
        written = await in_transaction(self._pool, lambda conn: tasks.add_partial(
            conn, self.task_id, self.root_id, seq, value, self.attempt))
        if not written:
            log.info("task %d attempt %d: partial %d dropped (the attempt is over)",
                     self.task_id, self.attempt, seq)


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
                 kind: str, init: Mapping[str, Any] | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self.kind = kind
        self.init = dict(init or {})
        self.loader = Loader(settings, gate, fetcher)
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{kind}"
        self.slots = asyncio.Semaphore(settings.task_concurrency)
        self.running: set[asyncio.Task[None]] = set()
        self.beat = settings.ack_wait / 3

    async def serve(self, sub: JetStreamContext.PullSubscription, stop: asyncio.Event) -> None:
        """Pull and run tasks, ``taskConcurrency`` at once, until ``stop``."""
        while not stop.is_set():
            free = await bus.take_free(self.slots, self.settings.task_concurrency)
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
            delay = redelivery_delay(_deliveries(msg), self.settings.ack_wait)
            log.warning("cannot start task %d (%s); it will be redelivered in %gs", task_id, e,
                        delay)
            await bus.settle(msg, Settle(Verdict.RETRY, delay))
            return
        if run is None:  # finished already (a duplicate), unknown, or abandoned now
            await bus.settle(msg, Settle(Verdict.ACK))
            return
        ctx = TaskContext(run.id, run.root_id, run.parent_id, run.name, run.kind, run.attempt,
                          run.idem_key or f"task-{run.id}", self.init, self.loader,
                          self.settings, self.pool)
        thread: asyncio.Future[Any] | None = None
        try:
            async with bus.KeepAlive([msg], self.beat):
                outcome, thread = await self._call(run, ctx)
            await self._record(run, ctx, msg, outcome)
        finally:
            if thread is not None and not thread.done():
                # The task is recorded; its thread cannot be stopped: keep its slot taken
                # until it returns, so task threads never exceed taskConcurrency.
                log.warning("task %d (%s): its thread runs on past taskTimeout; its slot "
                            "waits for it", run.id, run.name)
                await asyncio.wait({thread})

    async def _record(self, run: tasks.TaskRun, ctx: TaskContext, msg: Msg,
                      outcome: tuple[Any, ...]) -> None:
        """Commit ``outcome`` (fenced by the attempt), then ack; a nak, to be delivered again
        later, when PostgreSQL cannot be reached."""
        state = outcome[0]
        try:
            if state == "retry":
                delay = outcome[1]
                await in_transaction(self.pool, lambda conn: tasks.retry_later(
                    conn, run.id, run.attempt, delay))
            else:
                result, error = outcome[1], outcome[2]
                children = ctx.children if state == "succeeded" else []
                try:
                    done = await in_transaction(self.pool, lambda conn: tasks.finish(
                        conn, run.id, run.attempt, state, result, error, children))
                except tasks.KeyConflict as e:
                    log.info("task %d (%s) failed: %s", run.id, run.name, e)
                    state, error = "failed", describe_error(e)
                    done = await in_transaction(self.pool, lambda conn: tasks.finish(
                        conn, run.id, run.attempt, "failed", None, error, []))
                if not done:
                    log.info("task %d attempt %d finished after another took over: outcome "
                             "dropped", run.id, run.attempt)
        except (*RETRYABLE, asyncpg.PostgresError, OSError) as e:
            delay = redelivery_delay(_deliveries(msg), self.settings.ack_wait)
            log.warning("cannot record task %d (%s); it will be redelivered in %gs and run "
                        "again", run.id, e, delay)
            await bus.settle(msg, Settle(Verdict.RETRY, delay))
            return
        metrics.TASKS_FINISHED.labels(self.kind, state).inc()
        log.info("task %d (%s) attempt %d: %s", run.id, run.name, run.attempt, state)
        await bus.settle(msg, Settle(Verdict.ACK))

    async def _call(self, run: tasks.TaskRun, ctx: TaskContext
                    ) -> tuple[tuple[Any, ...], asyncio.Future[Any] | None]:
        """``("succeeded", result, None)``, ``("failed", None, error)`` or ``("retry",
        delay)``; and the thread of a sync function still running past its timeout."""
        try:
            target = self.settings.tasks.get(run.name)
            if target is None:
                raise TaskRefused(f"task {run.name!r} is not allow-listed in this worker's config")
            fn = resolve(target)
            kwargs = inject(fn, run.args, {"ctx": ctx, "loader": self.loader,
                                           "init": self.init, "sessions": SessionStore(self.pool)})
            try:
                result = await call(fn, kwargs, self.settings.task_timeout, own_thread=True)
            except StillRunning as e:
                return (("failed", None, describe_error(TimeoutError(
                    f"task ran past taskTimeout ({self.settings.task_timeout:g}s); its thread "
                    "was left to finish"))), e.thread)
            except TimeoutError as e:
                raise TimeoutError(f"task ran past taskTimeout "
                                   f"({self.settings.task_timeout:g}s)") from e
            try:
                json.dumps(result, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise TypeError(f"the task's result is not JSON: {e}") from None
            if (problem := tasks.storable_problem(result)) is not None:
                raise TypeError(f"the task's result is not storable: {problem}")
        except RetryLater as e:
            return ("retry", e.delay), None
        except Exception as e:  # noqa: BLE001 - the task's own error: recorded, runner goes on
            log.info("task %d (%s) failed: %s: %s", run.id, run.name, type(e).__name__, e)
            return ("failed", None, describe_error(e)), None
        return ("succeeded", result, None), None


def _deliveries(msg: Msg) -> int:
    """How often JetStream delivered this message (1 when it cannot say)."""
    try:
        return int(msg.metadata.num_delivered or 1)
    except Exception:  # noqa: BLE001 - not a JetStream message
        return 1


def _redelivered(msg: Msg) -> bool:
    """Whether JetStream delivered this message before (True when it cannot say)."""
    try:
        return (msg.metadata.num_delivered or 1) > 1
    except Exception:  # noqa: BLE001 - not a JetStream message: take it for a redelivery
        return True
