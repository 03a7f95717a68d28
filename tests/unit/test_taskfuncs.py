"""Task functions (``worker.taskfuncs``): targets resolve from a module or a ``.py`` file (or
fail with ImportError/AttributeError), arguments are injected by parameter name and never
overridden by the request, sync functions run in a thread and async ones are awaited, both
under a timeout, and a per-page task's return value becomes items."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from shared.config import Settings
from shared.model import Extraction, FetchedPage, Yield
from worker.taskfuncs import PageTask, PageTaskError, call, inject, items, resolve
from worker.tasks import Context, RetryLater

FIXTURE = Path(__file__).parents[1] / "tasks_fixture.py"


def test_targets_resolve_from_modules_and_files() -> None:
    from tests import tasks_fixture
    assert resolve("tests.tasks_fixture:add") is tasks_fixture.add
    by_file = resolve(f"{FIXTURE}:add")
    assert by_file(a=2, b=3) == 5 and by_file is resolve(f"{FIXTURE}:add")
    with pytest.raises(ModuleNotFoundError):
        resolve("tests.no_such_module:add")
    with pytest.raises(AttributeError):
        resolve("tests.tasks_fixture:nope")
    with pytest.raises(ImportError):
        resolve("/no/such/file.py:add")
    with pytest.raises(ImportError):
        resolve("no_colon")
    with pytest.raises(AttributeError):
        resolve("tests.tasks_fixture:FIXTURE_CONSTANT")


FIXTURE_CONSTANT = 1


def test_injection_by_parameter_name() -> None:
    def f(a: int, ctx: Any, loader: Any = None) -> None: ...

    available = {"ctx": "C", "loader": "L", "init": "I"}
    assert inject(f, {"a": 1}, available) == {"a": 1, "ctx": "C", "loader": "L"}

    def g(a: int, **kw: Any) -> None: ...

    assert inject(g, {"a": 1, "b": 2}, available) == {"a": 1, "b": 2}
    with pytest.raises(TypeError, match="reserved"):
        inject(f, {"a": 1, "ctx": "forged"}, available)


async def test_sync_in_a_thread_async_awaited_both_under_a_timeout() -> None:
    loop_thread = threading.get_ident()

    def where() -> int:
        return threading.get_ident()

    async def awhere() -> int:
        return threading.get_ident()

    assert await call(where, {}, 5) != loop_thread
    assert await call(awhere, {}, 5) == loop_thread

    async def hang() -> None:
        await asyncio.sleep(60)

    with pytest.raises(TimeoutError):
        await call(hang, {}, 0.05)
    with pytest.raises(TimeoutError):
        await call(threading.Event().wait, {"timeout": 1}, 0.05)


def test_return_values_become_items() -> None:
    assert items(None) == ()
    assert items({"a": 1}) == (Yield("item", {"a": 1}),)
    assert items([{"a": 1}, 2]) == (Yield("item", {"a": 1}), Yield("item", {"value": 2}))
    assert items("x") == (Yield("item", {"value": "x"}),)


async def test_page_task_runs_the_function_on_the_page() -> None:
    settings = Settings(tasks={"title": "tests.tasks_fixture:page_title",
                               "boom": "tests.tasks_fixture:boom",
                               "later": "tests.unit.test_taskfuncs:later"})
    ctx = Context(1, 2, "http://a.example/", 1)
    page = FetchedPage(2, 200, "text/html", None, True, body=b"<title> Hi </title>")
    ex = Extraction((("http://a.example/b", "text/html"),), (), 3)
    out = await PageTask(settings, "title", {})(ctx, page, ex)
    assert out == Extraction(ex.links, (Yield("item", {"title": "Hi", "links": 1}),), 3)
    with pytest.raises(PageTaskError, match="^task boom failed: ValueError: boom"):
        await PageTask(settings, "boom", {})(ctx, page, ex)
    with pytest.raises(RetryLater):
        await PageTask(settings, "later", {"delay": 3})(ctx, page, ex)
    with pytest.raises(PageTaskError, match="not allow-listed"):
        await PageTask(settings, "gone", {})(ctx, page, ex)


def later(delay: float) -> None:
    raise RetryLater(delay)


async def test_a_follow_up_postgres_cannot_store_is_refused_when_enqueued() -> None:
    """Arguments jsonb would refuse fail the enqueuing task at once (a ValueError saying why),
    never its write."""
    from worker.taskrun import TaskContext
    settings = Settings(tasks={"add": "tests.tasks_fixture:add"})
    ctx = TaskContext(1, 1, None, "add", "http", 1, "task-1", {}, None, settings,
                      None)  # type: ignore[arg-type]
    assert ctx.enqueue("add", {"a": "x", "b": [1.5, None]}) == "1/1"
    for args, problem in [({"a": "x\x00"}, "a string holds a NUL character"),
                          ({"a": ["\udc00"]}, "a string holds a lone surrogate (not UTF-8)")]:
        with pytest.raises(ValueError, match="^" + re.escape(
                f"arguments of 'add' are not storable: {problem}")):
            ctx.enqueue("add", args)
    with pytest.raises(ValueError, match="^arguments of 'add' are not JSON"):
        ctx.enqueue("add", {"a": float("nan")})
    assert len(ctx.children) == 1
