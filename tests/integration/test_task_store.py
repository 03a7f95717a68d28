"""The task store on a real PostgreSQL (``shared.db.tasks``): what makes tasks at least once and
never doubled. An idempotency key names one task; an attempt is fenced (a stale attempt cannot
finish, nor retry); a re-run's follow-ups and partials replace, never add; a tree is counted by
state; lost messages and dead runs are unpublished by the watchdog's query (served kinds only);
a task past its deliveries is abandoned."""

from __future__ import annotations

import json
import uuid

import asyncpg

from shared.config import Settings
from shared.db import tasks, workers
from shared.db.pool import open_pool
from shared.db.tasks import Child

W = "host:1:http"


async def published(db: asyncpg.Connection, id: int) -> bool:
    return bool(await db.fetchval("SELECT published_on IS NOT NULL FROM task WHERE id = $1", id))


async def age(db: asyncpg.Connection, id: int, column: str, seconds: float) -> None:
    await db.execute(f"UPDATE task SET {column} = now() - make_interval(secs => $2) "
                     "WHERE id = $1", id, seconds)


async def test_a_key_names_one_task(db: asyncpg.Connection) -> None:
    a, created_a = await tasks.create(db, "add", "http", {"a": 1}, "k1")
    b, created_b = await tasks.create(db, "add", "http", {"a": 2}, "k1")
    c, created_c = await tasks.create(db, "add", "http", {"a": 1}, None)
    d, created_d = await tasks.create(db, "add", "http", {"a": 1}, None)
    assert (a, created_a, created_b) == (b, True, False)
    assert created_c and created_d and len({a, c, d}) == 3
    info = await tasks.get(db, a)
    assert info is not None
    assert (info.args, info.root_id, info.parent_id, info.state) == ({"a": 1}, a, None, "queued")
    assert await tasks.get(db, 999_999) is None


async def test_claim_publishes_each_due_task_once_and_unclaim_gives_it_back(
        db: asyncpg.Connection) -> None:
    a, _ = await tasks.create(db, "add", "http", {}, None)
    b, _ = await tasks.create(db, "add", "browser", {}, None)
    async with db.transaction():
        assert await tasks.claim_unpublished(db, 10) == [(a, "http"), (b, "browser")]
    async with db.transaction():
        assert await tasks.claim_unpublished(db, 10) == []
    await tasks.unclaim(db, [b])
    async with db.transaction():
        assert await tasks.claim_unpublished(db, 10) == [(b, "browser")]


async def test_a_stale_attempt_cannot_finish(db: asyncpg.Connection) -> None:
    id, _ = await tasks.create(db, "add", "http", {"a": 1, "b": 2}, None)
    first = await tasks.start(db, id, W, 5)
    second = await tasks.start(db, id, "other:2:http", 5)  # redelivered: the first one died?
    assert first is not None and second is not None
    assert (first.attempt, second.attempt, second.args) == (1, 2, {"a": 1, "b": 2})
    assert not await tasks.finish(db, id, first.attempt, "succeeded", 3, None, [])
    assert not await tasks.retry_later(db, id, first.attempt, 5)
    assert await tasks.finish(db, id, second.attempt, "succeeded", 3, None, [])
    assert not await tasks.finish(db, id, second.attempt, "failed", None,
                                  {"type": "X", "message": "", "traceback": ""}, [])
    assert await tasks.start(db, id, W, 5) is None  # a duplicate message: nothing to run
    info = await tasks.get(db, id)
    assert info is not None
    assert (info.state, info.result, info.error, info.attempts, info.worker) == (
        "succeeded", 3, None, 2, "other:2:http")
    assert info.finished_on is not None and info.started_on is not None


async def test_a_duplicate_message_leaves_a_running_task_alone(db: asyncpg.Connection) -> None:
    id, _ = await tasks.create(db, "add", "http", {}, None)
    assert await tasks.start(db, id, W, 5, redelivery=False) is not None
    assert await tasks.start(db, id, "other:2:http", 5, redelivery=False) is None
    info = await tasks.get(db, id)
    assert info is not None and (info.state, info.attempts, info.worker) == ("running", 1, W)
    again = await tasks.start(db, id, "other:2:http", 5, redelivery=True)  # its worker died
    assert again is not None and again.attempt == 2


async def test_a_rerun_inserts_no_duplicate_child(db: asyncpg.Connection) -> None:
    root, _ = await tasks.create(db, "search", "http", {"page": 1}, "client-key")
    kids = [Child("search", "http", {"page": 2}, f"{root}/1"),
            Child("add", "browser", {"a": 1}, "mine")]
    run = await tasks.start(db, root, W, 5)
    assert run is not None and run.idem_key == "client-key"
    # The worker finished, committed, and died before its ack: the task runs again, and its
    # second attempt enqueues the same follow-ups.
    assert await tasks.finish(db, root, run.attempt, "succeeded", {"n": 1}, None, kids)
    await db.execute("UPDATE task SET state = 'running', attempts = 2 WHERE id = $1", root)
    assert await tasks.finish(db, root, 2, "succeeded", {"n": 1}, None, kids)
    info = await tasks.get(db, root)
    assert info is not None and len(info.children) == 2
    rows = await db.fetch("SELECT name, kind, args::text, idem_key, parent_id, root_id, state "
                          "FROM task WHERE parent_id = $1 ORDER BY id", root)
    assert [tuple(r) for r in rows] == [
        ("search", "http", '{"page": 2}', f"{root}/1", root, root, "queued"),
        ("add", "browser", '{"a": 1}', "mine", root, root, "queued")]
    grandchild_parent = info.children[0]
    run2 = await tasks.start(db, grandchild_parent, W, 5)
    assert run2 is not None and (run2.root_id, run2.parent_id) == (root, root)
    assert await tasks.finish(db, grandchild_parent, 1, "succeeded", None, None,
                              [Child("add", "http", {}, f"{grandchild_parent}/1")])
    assert await db.fetchval("SELECT root_id FROM task WHERE idem_key = $1",
                             f"{grandchild_parent}/1") == root


async def test_a_failed_attempt_records_the_error_and_no_children(db: asyncpg.Connection) -> None:
    id, _ = await tasks.create(db, "boom", "http", {}, None)
    run = await tasks.start(db, id, W, 5)
    assert run is not None
    error = {"type": "ValueError", "message": "boom", "traceback": "Traceback ...\n"}
    assert await tasks.finish(db, id, run.attempt, "failed", None, error, [])
    info = await tasks.get(db, id)
    assert info is not None and (info.state, info.error, info.children) == ("failed", error, [])


async def test_partials_upsert_and_show_under_the_root(db: asyncpg.Connection) -> None:
    root, _ = await tasks.create(db, "search", "http", {}, None)
    await tasks.start(db, root, W, 5)
    await tasks.add_partial(db, root, root, 1, {"hits": ["a"]}, 1)
    await tasks.add_partial(db, root, root, 2, {"hits": ["b"]}, 1)
    await tasks.start(db, root, W, 5)  # the worker died: a re-run
    await tasks.add_partial(db, root, root, 1, {"hits": ["a2"]}, 2)  # its first partial
    await tasks.finish(db, root, 2, "succeeded", None, None, [Child("search", "http", {}, "c")])
    child = await db.fetchval("SELECT id FROM task WHERE idem_key = 'c'")
    await tasks.start(db, child, W, 5)
    await tasks.add_partial(db, child, root, 1, {"hits": ["c"]}, 1)
    root_info, child_info = await tasks.get(db, root), await tasks.get(db, child)
    assert root_info is not None and child_info is not None
    assert root_info.partials == [{"hits": ["a2"]}, {"hits": ["b"]}, {"hits": ["c"]}]
    assert child_info.partials == [{"hits": ["c"]}]


async def test_the_tree_counts_its_tasks_by_state(db: asyncpg.Connection) -> None:
    root, _ = await tasks.create(db, "search", "http", {}, None)
    other, _ = await tasks.create(db, "search", "http", {}, None)
    await tasks.start(db, root, W, 5)
    await tasks.finish(db, root, 1, "succeeded", {"page": 1}, None,
                       [Child("search", "http", {}, "a"), Child("search", "http", {}, "b")])
    tree = await tasks.tree(db, root)
    assert (tree.total, tree.queued, tree.running, tree.succeeded, tree.failed, tree.state) == (
        3, 2, 0, 1, 0, "running")
    a, b = [r["id"] for r in await db.fetch(
        "SELECT id FROM task WHERE idem_key IN ('a', 'b') ORDER BY id")]
    await tasks.start(db, a, W, 5)
    await tasks.start(db, b, W, 5)
    assert (await tasks.tree(db, root)).running == 2
    await tasks.finish(db, b, 1, "failed", None, {"type": "E", "message": "", "traceback": ""}, [])
    await tasks.finish(db, a, 1, "succeeded", {"page": 2}, None, [])
    tree = await tasks.tree(db, root)
    assert (tree.total, tree.succeeded, tree.failed, tree.state) == (3, 2, 1, "failed")
    assert tree.results == [(root, {"page": 1}), (a, {"page": 2})]
    assert (await tasks.tree(db, other)).total == 1


async def test_requeue_stale_unpublishes_lost_and_dead_tasks_of_served_kinds(
        db: asyncpg.Connection) -> None:
    fresh, _ = await tasks.create(db, "add", "http", {}, None)
    lost, _ = await tasks.create(db, "add", "http", {}, None)
    unserved, _ = await tasks.create(db, "add", "browser", {}, None)
    dead, _ = await tasks.create(db, "add", "http", {}, None)
    slow, _ = await tasks.create(db, "add", "http", {}, None)
    never, _ = await tasks.create(db, "add", "http", {}, None)
    async with db.transaction():
        await tasks.claim_unpublished(db, 5)  # all but ``never``: claimed, but is it?
    await db.execute("UPDATE task SET published_on = NULL WHERE id = $1", never)
    for id in (lost, unserved, dead, slow):
        await age(db, id, "published_on", 100)
    for id in (dead, slow):
        await tasks.start(db, id, W, 5)
    await age(db, dead, "started_on", 100)
    await age(db, slow, "started_on", 30)
    assert await tasks.requeue_stale(db, 50, 20, ["http"], 100) == 2
    assert [await published(db, i) for i in (fresh, lost, unserved, dead, slow, never)] == [
        True, False, True, False, True, False]
    states = dict(await db.fetch("SELECT id, state FROM task"))
    assert (states[dead], states[slow], states[lost]) == ("queued", "running", "queued")
    async with db.transaction():  # published again by the next feeder round
        assert [i for i, _ in await tasks.claim_unpublished(db, 10)] == [lost, dead, never]


async def test_a_task_past_its_deliveries_is_abandoned(db: asyncpg.Connection) -> None:
    id, _ = await tasks.create(db, "slow", "http", {}, None)
    assert await tasks.start(db, id, W, 2) is not None
    assert await tasks.start(db, id, W, 2) is not None
    assert await tasks.start(db, id, W, 2) is None
    info = await tasks.get(db, id)
    assert info is not None
    assert (info.state, info.attempts, info.error) == ("failed", 3, {
        "type": "TaskAbandoned", "message": "gave up after 2 deliveries", "traceback": ""})
    assert info.finished_on is not None
    assert await tasks.start(db, id, W, 2) is None  # stays failed


async def test_retry_later_queues_it_again_unpublished_and_due_later(
        db: asyncpg.Connection) -> None:
    id, _ = await tasks.create(db, "flaky", "http", {}, None)
    async with db.transaction():
        await tasks.claim_unpublished(db, 10)
    run = await tasks.start(db, id, W, 5)
    assert run is not None
    assert await tasks.retry_later(db, id, run.attempt, 60)
    row = await db.fetchrow("SELECT state, published_on, due > now() + interval '50 seconds' "
                            "AS later FROM task WHERE id = $1", id)
    assert (row["state"], row["published_on"], row["later"]) == ("queued", None, True)
    async with db.transaction():
        assert await tasks.claim_unpublished(db, 10) == []  # not due yet


async def test_any_task_body_is_stored_or_refused_with_a_400(db: asyncpg.Connection) -> None:
    """What ``POST /tasks`` accepts PostgreSQL stores: no body a parser lets through can make
    the insert fail (a 500). Arguments from hypothesis: NUL characters, lone surrogates,
    NaN and infinities, deep nesting, huge numbers."""
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hsettings
    from hypothesis import strategies as st

    from shared.config import Settings
    from shared.errors import BadRequest
    from web_server.tasks import parse_task_body

    scalars = (st.none() | st.booleans() | st.integers() | st.integers(-10**40, 10**40)
               | st.floats() | st.text() | st.sampled_from(["\x00", "\ud800", "a\udfffb"]))
    values = st.recursive(scalars, lambda c: st.lists(c, max_size=3)
                          | st.dictionaries(st.text(max_size=3) | st.just("\x00"), c, max_size=3),
                          max_leaves=20)
    bodies: list[str] = []

    @hsettings(max_examples=200, database=None, derandomize=True,
               suppress_health_check=list(HealthCheck))
    @given(st.dictionaries(st.text(max_size=3), values, max_size=4) | values,
           st.text(max_size=5) | st.none())
    def collect(args: object, key: str | None) -> None:
        body: dict[str, object] = {"task": "add", "args": args}
        if key is not None:
            body["key"] = key
        bodies.append(json.dumps(body))

    collect()
    nested: dict[str, object] = {"a": 1}
    for _ in range(70):
        nested = {"a": nested}
    bodies += [json.dumps({"task": "add", "args": nested}), '{"task": "add", "args": {"a": 1e999}}',
               '{"task": "add", "args": {"a": ' + "[" * 5000 + "]" * 5000 + "}}",
               '{"task": "add", "args": {"a": 1' + "0" * 5000 + "}}"]
    config = Settings(tasks={"add": "tests.tasks_fixture:add"})
    stored = refused = 0
    for body in bodies:
        try:
            name, kind, args, key = parse_task_body(body, None, config)
        except BadRequest:
            refused += 1
            continue
        await tasks.create(db, name, kind, args, key)
        stored += 1
    assert stored >= 20 and refused >= 10  # both paths taken (the mix varies a little)


async def test_a_partial_is_written_only_by_the_running_attempt(db: asyncpg.Connection) -> None:
    id, _ = await tasks.create(db, "search", "http", {}, None)
    assert not await tasks.add_partial(db, id, id, 1, "queued", 1)  # not running yet
    first = await tasks.start(db, id, W, 5)
    assert first is not None and await tasks.add_partial(db, id, id, 1, "first", first.attempt)
    second = await tasks.start(db, id, "other:2:http", 5)  # redelivered: the first is stale
    assert second is not None
    assert await tasks.add_partial(db, id, id, 1, "second", second.attempt)
    # The stale attempt (or its thread, past its timeout) writes on: nothing changes.
    assert not await tasks.add_partial(db, id, id, 1, "stale", first.attempt)
    assert not await tasks.add_partial(db, id, id, 2, "stale", first.attempt)
    await tasks.finish(db, id, second.attempt, "succeeded", None, None, [])
    assert not await tasks.add_partial(db, id, id, 3, "late", second.attempt)
    info = await tasks.get(db, id)
    assert info is not None and info.partials == ["second"]


async def test_a_follow_up_key_is_its_trees_and_a_clash_fails_the_task(
        db: asyncpg.Connection) -> None:
    a, _ = await tasks.create(db, "search", "http", {}, None)
    b, _ = await tasks.create(db, "search", "http", {}, None)
    ka, kb = tasks.child_key(a, "shared"), tasks.child_key(b, "shared")
    assert ka != kb
    # Two trees use the same key of their own: each gets its follow-up.
    for root, key in ((a, ka), (b, kb)):
        run = await tasks.start(db, root, W, 5)
        assert run is not None
        assert await tasks.finish(db, root, 1, "succeeded", None, None,
                                  [Child("add", "http", {"x": root}, key)])
    rows = await db.fetch("SELECT parent_id, args->>'x' AS x FROM task WHERE idem_key = ANY($1) "
                          "ORDER BY parent_id", [ka, kb])
    assert [(r["parent_id"], r["x"]) for r in rows] == [(a, str(a)), (b, str(b))]
    # Within a tree the same key names one follow-up: the same call again is that one ...
    child = await db.fetchval("SELECT id FROM task WHERE idem_key = $1", ka)
    run = await tasks.start(db, child, W, 5)
    assert run is not None and run.root_id == a
    assert await tasks.finish(db, child, 1, "succeeded", None, None,
                              [Child("add", "http", {"x": a}, ka)])
    assert await db.fetchval("SELECT count(*) FROM task WHERE root_id = $1", a) == 2
    # ... another call under it is a clash: the task cannot succeed, nothing is inserted.
    c, _ = await tasks.create(db, "search", "http", {}, None)
    run = await tasks.start(db, c, W, 5)
    assert run is not None
    clash = [Child("add", "http", {"x": 1}, tasks.child_key(c, "k")),
             Child("add", "http", {"x": 2}, tasks.child_key(c, "k"))]
    try:
        async with db.transaction():
            await tasks.finish(db, c, 1, "succeeded", None, None, clash)
    except tasks.KeyConflict as e:
        assert tasks.child_key(c, "k") in str(e)
    else:
        raise AssertionError("a clashing follow-up key was accepted")
    info = await tasks.get(db, c)
    assert info is not None and (info.state, info.children) == ("running", [])
    # A client's key cannot be shaped like a follow-up's (POST refuses it: a 400).
    from shared.config import Settings
    from shared.errors import BadRequest
    from web_server.tasks import parse_task_body
    config = Settings(tasks={"add": "tests.tasks_fixture:add"})
    for key in (ka, f"{a}/1"):
        try:
            parse_task_body(json.dumps({"task": "add", "key": key}), None, config)
        except BadRequest:
            continue
        raise AssertionError(f"POST accepted the follow-up key {key!r}")


async def test_requeue_stale_takes_only_as_many_as_messages_are_missing(
        db: asyncpg.Connection) -> None:
    old, _ = await tasks.create(db, "add", "http", {}, None)
    older, _ = await tasks.create(db, "add", "http", {}, None)
    running, _ = await tasks.create(db, "add", "http", {}, None)
    async with db.transaction():
        await tasks.claim_unpublished(db, 10)
    await age(db, old, "published_on", 100)
    await age(db, older, "published_on", 200)
    await tasks.start(db, running, W, 5)
    # Three tasks need a message; the stream holds three: all waiting in line.
    assert await tasks.requeue_stale(db, 50, 20, ["http"], 100, {"http": 3}) == 0
    assert await tasks.requeue_stale(db, 50, 20, ["http"], 100, {"http": 5}) == 0
    # One is missing: the oldest published is taken.
    assert await tasks.requeue_stale(db, 50, 20, ["http"], 100, {"http": 2}) == 1
    assert [await published(db, i) for i in (old, older, running)] == [True, False, True]


async def test_one_task_watchdog_acts_at_a_time(settings: Settings,
                                                db: asyncpg.Connection) -> None:
    """With several foremen only one watchdog unpublishes lost tasks at a time: each would
    otherwise take as many as are missing, and they would be published again once per foreman."""
    from foreman.tasks import TASK_WATCHDOG_LOCK, task_watch_once
    id, _ = await tasks.create(db, "add", "http", {}, None)
    async with db.transaction():
        await tasks.claim_unpublished(db, 10)
    await age(db, id, "published_on", 3600)
    await workers.beat(db, uuid.uuid4(), ["http"], "host", 1, "test")
    async with open_pool(settings.database_url, max_size=2) as pool:
        async with db.transaction():  # another foreman's watchdog is at work
            assert await db.fetchval("SELECT pg_try_advisory_xact_lock($1)", TASK_WATCHDOG_LOCK)
            assert await task_watch_once(settings, pool) == 0
            assert await published(db, id)
        assert await task_watch_once(settings, pool) == 1
    assert not await published(db, id)


def test_storable_problem_says_what_jsonb_would_refuse() -> None:
    """The check both the task API (arguments) and the runner (results, follow-ups' arguments)
    make before a write: what jsonb refuses is the caller's error, not PostgreSQL being away."""
    assert tasks.storable_problem({"a": [1, "x", None, 2.5, {"b": True}]}) is None
    assert tasks.storable_problem({"a": "x\x00"}) == "a string holds a NUL character"
    assert tasks.storable_problem({"\x00": 1}) == "a string holds a NUL character"
    assert tasks.storable_problem(["\ud800"]) == "a string holds a lone surrogate (not UTF-8)"
    assert tasks.storable_problem([float("nan")]) == "a number out of range"
    deep: object = 1
    for _ in range(70):
        deep = [deep]
    assert tasks.storable_problem(deep) is None  # results: no depth limit
    assert tasks.storable_problem(deep, 64) == "nested deeper than 64 levels"
