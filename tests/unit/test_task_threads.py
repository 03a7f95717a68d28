"""Sync task functions in threads of their own (``worker.taskfuncs.call(own_thread=True)``):
results and errors come back, context variables go along, a function past its timeout raises
``StillRunning`` with the future of its thread (done when it returns), a ``SystemExit`` in a
task is that task's error, and none of it uses the loop's default executor."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from worker.taskfuncs import StillRunning, call

who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


def add(a: int, b: int) -> int:
    return a + b


def boom() -> None:
    raise ValueError("boom")


def leave() -> None:
    raise SystemExit(3)


def name() -> str:
    return f"{who.get()} in {threading.current_thread().name}"


async def test_results_errors_and_context_come_back() -> None:
    assert await call(add, {"a": 1, "b": 2}, 5, own_thread=True) == 3
    with pytest.raises(ValueError, match="boom"):
        await call(boom, {}, 5, own_thread=True)
    with pytest.raises(RuntimeError, match="SystemExit: 3"):
        await call(leave, {}, 5, own_thread=True)
    who.set("ctx")
    assert await call(name, {}, 5, own_thread=True) == "ctx in task name"


async def test_past_its_timeout_the_thread_runs_on_and_its_future_tells_when_it_ends() -> None:
    release = threading.Event()

    def stuck() -> str:
        release.wait(30)
        return "late"

    with pytest.raises(StillRunning) as caught:
        await call(stuck, {}, 0.05, own_thread=True)
    thread = caught.value.thread
    assert isinstance(caught.value, TimeoutError) and not thread.done()
    release.set()
    await asyncio.wait_for(asyncio.wait({thread}), 10)
    assert thread.result() == "late"


async def test_no_thread_of_the_default_executor_is_used() -> None:
    loop = asyncio.get_running_loop()
    before = getattr(loop, "_default_executor", None)
    await call(add, {"a": 1, "b": 1}, 5, own_thread=True)
    assert getattr(loop, "_default_executor", None) is before
