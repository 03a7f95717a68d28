"""Tasks (``task``, ``task_partial``; issue 12): the task API's queue and results.

A task is one call of an allow-listed function, named by its config key (``name``), on the
workers of a fetcher kind. Its life:

- ``create`` (``POST /tasks``): one insert, ``queued``; a known idempotency key answers the
  task it named instead.
- ``claim_unpublished`` / ``unclaim``: the foreman's task feeder publishes due rows
  (``published_on`` is the outbox) and gives back those NATS did not store.
- ``start``: a worker took its message: ``running``, ``attempts`` + 1 (the fence of this
  attempt); past the maximum the task fails as abandoned instead.
- ``finish``: the outcome, fenced by the attempt (a stale attempt, redelivered elsewhere and
  finished there, changes nothing), with its follow-ups inserted in the same statement
  (``ON CONFLICT (idem_key) DO NOTHING``: a re-run enqueues no duplicate; a key that names
  another call raises ``KeyConflict``). Follow-up keys are scoped to their tree
  (``child_key``). ``retry_later``:
  back to ``queued``, due later, unpublished.
- ``add_partial``: a partial result, upserted on ``(task_id, seq)``, fenced by the attempt.
- ``requeue_stale``: the watchdog's: a published message that was lost (missing from its
  stream, not merely waiting in line), or a running task whose deliveries ran out, is
  unpublished to be published again.

Tasks run at least once: a task may start again after a worker died mid-run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

STATES = ("queued", "running", "succeeded", "failed")
TREE_RESULTS = 10_000  # results listed in a root's tree at most
PARTIALS = 10_000      # partial results listed at most


@dataclass(frozen=True, slots=True)
class TaskRun:
    """A task a worker is to run now: ``attempt`` is its fence for ``finish``."""
    id: int
    name: str
    kind: str
    args: dict[str, Any]
    attempt: int
    root_id: int
    parent_id: int | None
    idem_key: str | None


@dataclass(frozen=True, slots=True)
class Child:
    """A follow-up a task enqueued, inserted when it finishes."""
    name: str
    kind: str
    args: dict[str, Any]
    key: str  # its idempotency key: "<parent>/<n>", or the user's own scoped: child_key()


class KeyConflict(Exception):
    """A follow-up's key names another call (name, kind or arguments differ) in its tree."""


def child_key(root: int, key: str) -> str:
    """The stored idempotency key of a follow-up enqueued with its own ``key`` in the tree of
    ``root``: ``<root>:<key>``. Scoped to the tree, so no other tree and no client's key
    (``POST /tasks`` refuses keys shaped ``<digits>/...`` or ``<digits>:...``) can take it;
    disjoint from the default keys ``<parent>/<n>``."""
    return f"{root}:{key}"


@dataclass(frozen=True, slots=True)
class TaskInfo:
    id: int
    name: str
    kind: str
    args: dict[str, Any]
    state: str
    attempts: int
    result: Any
    error: dict[str, Any] | None
    parent_id: int | None
    root_id: int
    idem_key: str | None
    worker: str | None
    created_on: datetime
    started_on: datetime | None
    finished_on: datetime | None
    children: list[int]
    partials: list[Any]


@dataclass(frozen=True, slots=True)
class Tree:
    """The tasks of a root's tree (the root included), counted by state, and the results of
    the succeeded ones by id (at most ``TREE_RESULTS``)."""
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    results: list[tuple[int, Any]]

    @property
    def state(self) -> str:
        """running while any task is open; then failed if any failed, else succeeded."""
        if self.queued or self.running:
            return "running"
        return "failed" if self.failed else "succeeded"


def storable_problem(value: Any, max_depth: int | None = None) -> str | None:
    """Why PostgreSQL's jsonb would refuse the JSON of ``value`` (None: it would not): a NUL
    character or a lone surrogate in a string, a number out of range (NaN, an infinity), or,
    with ``max_depth``, nesting deeper than that. Checked before a write, so a value it
    refuses is the caller's error, never taken for PostgreSQL being away."""
    return _problem(value, 0, max_depth)


def _problem(value: Any, depth: int, max_depth: int | None) -> str | None:
    if isinstance(value, str):
        if "\x00" in value:
            return "a string holds a NUL character"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "a string holds a lone surrogate (not UTF-8)"
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "a number out of range"
    if max_depth is not None and depth >= max_depth and isinstance(value, (dict, list)):
        return f"nested deeper than {max_depth} levels"
    if isinstance(value, dict):
        for k, v in value.items():
            if (problem := _problem(k, depth, max_depth)
                    or _problem(v, depth + 1, max_depth)) is not None:
                return problem
    elif isinstance(value, (list, tuple)):
        for v in value:
            if (problem := _problem(v, depth + 1, max_depth)) is not None:
                return problem
    return None


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


async def create(conn: asyncpg.Connection, name: str, kind: str, args: dict[str, Any],
                 key: str | None, owner: str | None = None) -> tuple[int, bool]:
    """A new root task, queued (or, for a ``key`` this owner used already, the task it named):
    its id and whether it was created now. ``owner``: the API token's name (None without
    authentication), whose keys are its own; its follow-ups belong to it through their root."""
    row = await conn.fetchrow("""
        INSERT INTO task (id, root_id, name, kind, args, idem_key, owner)
        SELECT n, n, $1, $2, $3::jsonb, $4, $5 FROM nextval('task_id_seq') n
        ON CONFLICT (idem_key, coalesce(owner, '')) WHERE idem_key IS NOT NULL DO NOTHING
        RETURNING id""", name, kind, _json(args), key, owner)
    if row is not None:
        return int(row["id"]), True
    # The key is taken by this owner (committed: ON CONFLICT waited for any insert in flight).
    return int(await conn.fetchval("""
        SELECT id FROM task WHERE idem_key = $1 AND coalesce(owner, '') = coalesce($2, '')""",
        key, owner)), False


async def claim_unpublished(conn: asyncpg.Connection, limit: int,
                            skip: Sequence[str] = ()) -> list[tuple[int, str]]:
    """Up to ``limit`` due queued tasks not published yet, of any kind but ``skip`` (those
    whose queue is full), marked published now: ``(id, kind)`` each, for the caller to
    publish (and ``unclaim`` the ones not stored). Rows another feeder is claiming are
    skipped."""
    rows = await conn.fetch("""
        WITH c AS (
            SELECT id FROM task
            WHERE published_on IS NULL AND state = 'queued' AND due <= now()
                AND kind <> ALL($2::text[])
            ORDER BY due LIMIT $1
            FOR UPDATE SKIP LOCKED)
        UPDATE task t SET published_on = now() FROM c WHERE t.id = c.id
        RETURNING t.id, t.kind""", limit, list(skip))
    return sorted((int(r["id"]), r["kind"]) for r in rows)


async def unclaim(conn: asyncpg.Connection, ids: Sequence[int]) -> None:
    """Tasks whose messages were not stored: published again by the next round."""
    if ids:
        await conn.execute("""
            UPDATE task SET published_on = NULL WHERE id = ANY($1::bigint[]) AND state = 'queued'""",
            list(ids))


async def start(conn: asyncpg.Connection, id: int, worker: str, max_attempts: int, *,
                redelivery: bool = True) -> TaskRun | None:
    """Start an attempt of task ``id`` on ``worker`` (``host:pid:kind``): running, attempts +
    1. None if there is nothing to run: the task is unknown or finished (a duplicate message),
    or this attempt would be past ``max_attempts``, in which case the task fails now with
    ``TaskAbandoned``.

    A running task is started again only by a ``redelivery`` (its worker died or gave the
    message back): a message delivered for the first time while its task runs is a duplicate
    (published twice), and the run in progress is left alone."""
    row = await conn.fetchrow("""
        UPDATE task SET attempts = attempts + 1, worker = $2, started_on = now(),
            state = CASE WHEN attempts < $3 THEN 'running' ELSE 'failed' END,
            finished_on = CASE WHEN attempts < $3 THEN NULL ELSE now() END,
            error = CASE WHEN attempts < $3 THEN NULL ELSE jsonb_build_object(
                'type', 'TaskAbandoned',
                'message', format('gave up after %s deliveries', attempts),
                'traceback', '') END
        WHERE id = $1 AND (state = 'queued' OR (state = 'running' AND $4))
        RETURNING id, name, kind, args::text, attempts, root_id, parent_id, idem_key, state""",
        id, worker, max_attempts, redelivery)
    if row is None or row["state"] != "running":
        return None
    return TaskRun(int(row["id"]), row["name"], row["kind"], json.loads(row["args"]),
                   int(row["attempts"]), int(row["root_id"]), row["parent_id"], row["idem_key"])


async def finish(conn: asyncpg.Connection, id: int, attempt: int, state: str, result: Any,
                 error: dict[str, Any] | None, children: Sequence[Child]) -> bool:
    """Record the outcome of attempt ``attempt`` (``succeeded`` with ``result``, or
    ``failed`` with ``error`` ``{type, message, traceback}``) and insert its follow-ups,
    skipping any whose key exists with the same call (a re-run's); ``KeyConflict`` when a key
    names another call (roll back, and fail the task). False, and nothing changed, when the
    attempt is stale: the task is no longer running this attempt."""
    assert state in ("succeeded", "failed")
    n = await conn.fetchval("""
        WITH f AS (
            UPDATE task SET state = $3, result = $4::jsonb, error = $5::jsonb,
                            finished_on = now()
            WHERE id = $1 AND state = 'running' AND attempts = $2
            RETURNING id, root_id),
        c AS (
            INSERT INTO task (name, kind, args, idem_key, parent_id, root_id)
            SELECT x.name, x.kind, x.args::jsonb, x.key, f.id, f.root_id
            FROM f, unnest($6::text[], $7::text[], $8::text[], $9::text[])
                    WITH ORDINALITY AS x(name, kind, args, key, n)
            ORDER BY x.n
            ON CONFLICT (idem_key, coalesce(owner, '')) WHERE idem_key IS NOT NULL DO NOTHING)
        SELECT count(*) FROM f""",
        id, attempt, state, None if result is None else _json(result),
        None if error is None else _json(error),
        [c.name for c in children], [c.kind for c in children],
        [_json(c.args) for c in children], [c.key for c in children])
    if n and children:
        # A key already taken (a re-run's own follow-ups, or the same call enqueued by another
        # task of the tree) is that follow-up; one taken by another call would drop this
        # one silently: refuse (the caller's transaction rolls back).
        clash = await conn.fetch("""
            SELECT DISTINCT x.key FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
                AS x(name, kind, args, key)
            JOIN task t ON t.idem_key = x.key AND t.owner IS NULL
            WHERE (t.name, t.kind, t.args) IS DISTINCT FROM (x.name, x.kind, x.args::jsonb)
            ORDER BY x.key""",
            [c.name for c in children], [c.kind for c in children],
            [_json(c.args) for c in children], [c.key for c in children])
        if clash:
            raise KeyConflict("follow-up key already names another task: "
                              + ", ".join(r["key"] for r in clash))
    return bool(n)


async def retry_later(conn: asyncpg.Connection, id: int, attempt: int, delay: float) -> bool:
    """The function asked to be run again in ``delay`` seconds: queued, due then, unpublished
    (the feeder publishes it when due). Fenced like ``finish``."""
    return bool(1 == await conn.fetchval("""
        WITH r AS (
            UPDATE task SET state = 'queued', published_on = NULL,
                            due = now() + make_interval(secs => $3)
            WHERE id = $1 AND state = 'running' AND attempts = $2 RETURNING id)
        SELECT count(*) FROM r""", id, attempt, float(delay)))


async def add_partial(conn: asyncpg.Connection, id: int, root: int, seq: int,
                      value: Any, attempt: int) -> bool:
    """Partial result number ``seq`` of attempt ``attempt`` of task ``id`` (a re-run writes the
    same numbers again: it replaces them). Fenced like ``finish``: False, and nothing written,
    unless the task is running this attempt (a stale attempt, or a thread still running past
    its timeout, cannot overwrite the current attempt's partials)."""
    return bool(await conn.fetchval("""
        WITH w AS (
            INSERT INTO task_partial (task_id, seq, root_id, value)
            SELECT $1, $2, $3, $4::jsonb FROM task
            WHERE id = $1 AND state = 'running' AND attempts = $5
            FOR SHARE
            ON CONFLICT (task_id, seq) DO UPDATE SET value = EXCLUDED.value
            RETURNING 1)
        SELECT count(*) FROM w""", id, seq, root, _json(value), attempt))


async def task_owner(conn: asyncpg.Connection, id: int) -> tuple[bool, str | None]:
    """Whether task ``id`` is there and its tree's owner (its root's ``owner``)."""
    row = await conn.fetchrow("""
        SELECT r.owner FROM task t JOIN task r ON r.id = t.root_id WHERE t.id = $1""", id)
    return (False, None) if row is None else (True, row["owner"])


async def get(conn: asyncpg.Connection, id: int) -> TaskInfo | None:
    """Task ``id``, with its follow-ups' ids and its partial results (a root's: those of its
    whole tree, by task and sequence)."""
    row = await conn.fetchrow("""
        SELECT t.*, t.args::text AS args_text, t.result::text AS result_text,
               t.error::text AS error_text,
               ARRAY(SELECT c.id FROM task c WHERE c.parent_id = t.id ORDER BY c.id) AS children,
               ARRAY(SELECT p.value::text FROM task_partial p
                     WHERE p.task_id = t.id OR p.root_id = t.id
                     ORDER BY p.task_id, p.seq LIMIT $2) AS partials
        FROM task t WHERE t.id = $1""", id, PARTIALS)
    if row is None:
        return None
    return TaskInfo(
        id=int(row["id"]), name=row["name"], kind=row["kind"], args=json.loads(row["args_text"]),
        state=row["state"], attempts=int(row["attempts"]), result=_loads(row["result_text"]),
        error=_loads(row["error_text"]), parent_id=row["parent_id"], root_id=int(row["root_id"]),
        idem_key=row["idem_key"], worker=row["worker"], created_on=row["created_on"],
        started_on=row["started_on"], finished_on=row["finished_on"],
        children=[int(c) for c in row["children"]],
        partials=[json.loads(p) for p in row["partials"]])


async def tree(conn: asyncpg.Connection, root: int) -> Tree:
    """The tasks of ``root``'s tree by state, and the succeeded ones' results by id."""
    counts = await conn.fetchrow("""
        SELECT count(*) AS total,
               count(*) FILTER (WHERE state = 'queued') AS queued,
               count(*) FILTER (WHERE state = 'running') AS running,
               count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
               count(*) FILTER (WHERE state = 'failed') AS failed
        FROM task WHERE root_id = $1""", root)
    rows = await conn.fetch("""
        SELECT id, result::text AS result FROM task
        WHERE root_id = $1 AND state = 'succeeded' ORDER BY id LIMIT $2""", root, TREE_RESULTS)
    return Tree(int(counts["total"]), int(counts["queued"]), int(counts["running"]),
                int(counts["succeeded"]), int(counts["failed"]),
                [(int(r["id"]), _loads(r["result"])) for r in rows])


async def requeue_stale(conn: asyncpg.Connection, stale_after: float, timeout: float,
                        served: Sequence[str], limit: int,
                        depths: Mapping[str, int] | None = None) -> int:
    """Unpublish (to be published again) up to ``limit`` tasks of the ``served`` kinds (those
    with a live worker) whose message is taken for lost. How many.

    - Running and started more than ``timeout + stale_after`` ago: its worker died and its
      deliveries ran out.
    - Queued and published more than ``stale_after`` ago, only as many per kind as messages
      are missing from its queue: ``depths`` holds how many messages each kind's task stream
      holds (published and not acked); the tasks that need one are those queued and
      published, or running (a running task's message stays until its ack). A message merely
      waiting in line behind a backlog is not missing, so it is not published again; when
      messages are missing the oldest published are taken. Without ``depths`` (the stream
      cannot be read), every stale queued task is taken."""
    kinds = list(served)
    held = [int((depths or {}).get(k, 0)) for k in kinds]
    return int(await conn.fetchval("""
        WITH need AS (
            SELECT kind, count(*) AS n FROM task
            WHERE kind = ANY($3::text[]) AND published_on IS NOT NULL
                AND state IN ('queued', 'running')
            GROUP BY kind),
        missing AS (
            SELECT x.kind, greatest(0, coalesce(need.n, 0) - x.held) AS n
            FROM unnest($3::text[], $5::bigint[]) AS x(kind, held)
            LEFT JOIN need ON need.kind = x.kind),
        lost AS (
            SELECT q.id FROM missing, LATERAL (
                SELECT id FROM task
                WHERE kind = missing.kind AND state = 'queued' AND published_on IS NOT NULL
                    AND published_on < now() - make_interval(secs => $1)
                ORDER BY published_on LIMIT missing.n
                FOR UPDATE SKIP LOCKED) q),
        dead AS (
            SELECT id FROM task
            WHERE kind = ANY($3::text[]) AND state = 'running' AND published_on IS NOT NULL
                AND started_on < now() - make_interval(secs => $1 + $2)
            LIMIT $4
            FOR UPDATE SKIP LOCKED),
        s AS (SELECT id FROM lost UNION SELECT id FROM dead LIMIT $4),
        u AS (
            UPDATE task t SET published_on = NULL, state = 'queued'
            FROM s WHERE t.id = s.id RETURNING t.id)
        SELECT count(*) FROM u""", float(stale_after), float(timeout), kinds, limit, held))
