"""The functions tasks run: allow-listed in config (``tasks: {name: target}``), resolved here,
and called with their arguments and what they ask for by parameter name.

- ``resolve(target)``: ``"pkg.mod:fn"`` (imported) or ``"/path/file.py:fn"`` (loaded from the
  file), cached per process. A bad target raises ``ImportError`` or ``AttributeError``: the
  task fails with it, and the worker lives on.
- ``call(fn, kwargs, timeout)``: a coroutine function is awaited under ``timeout``; a plain
  function runs in a thread (``asyncio.to_thread``), also under ``timeout`` — a thread cannot
  be stopped, so a sync function past its timeout is left to finish on its own. With
  ``own_thread`` (the task runner's) it runs in a daemon thread of its own instead, never the
  loop's default executor (which outputs' writes need), and past its timeout ``StillRunning``
  carries the future of that thread, for the caller to hold the task's slot until it ends;
  a daemon thread never holds the process at exit.
- ``inject(fn, args, available)``: the call's keyword arguments: ``args``, plus each of
  ``available`` (``ctx``, ``loader``, ``init``, ``page`` ...) that ``fn`` has a parameter of
  that name for.
- ``PageTask``: a job spec's ``task`` (``{"name", "args"}``), run on every page the job
  fetches (a ``worker.tasks.Task``). The function gets ``page`` (``PageView``), ``ctx``
  (``PageContext``), ``loader``, ``init`` by parameter name and the spec's ``args`` as keyword
  arguments. What it returns becomes the page's items: None nothing, a dict one item, a list
  one item per element, anything else ``{"value": v}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import importlib
import importlib.util
import inspect
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from shared.config import Settings
from shared.model import Extraction, FetchedPage, Yield
from worker.tasks import Context, RetryLater

_resolved: dict[str, Callable[..., Any]] = {}


def resolve(target: str) -> Callable[..., Any]:
    """The function ``target`` names: ``"pkg.mod:fn"`` or ``"/path/file.py:fn"`` (a file is
    loaded as a module of its own, once). ImportError for a module or file that cannot be
    loaded, AttributeError for a name it lacks or that is not callable."""
    fn = _resolved.get(target)
    if fn is not None:
        return fn
    where, sep, name = target.rpartition(":")
    if not sep or not where or not name:
        raise ImportError(f"task target {target!r} is not 'module:function' or 'file.py:function'")
    module = _load_file(where) if where.endswith(".py") else importlib.import_module(where)
    obj: Any = module
    for part in name.split("."):
        obj = getattr(obj, part)  # AttributeError: module 'x' has no attribute 'y'
    if not callable(obj):
        raise AttributeError(f"{target!r} is not callable")  # noqa: TRY004 - resolution
    _resolved[target] = obj
    return obj  # type: ignore[no-any-return]


def _load_file(path: str) -> Any:
    mod_name = "harvester_task_" + hashlib.sha1(path.encode()).hexdigest()[:16]
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load task file {path!r}", path=path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except FileNotFoundError as e:
        raise ImportError(f"no task file {path!r}", path=path) from e
    sys.modules[mod_name] = module
    return module


def inject(fn: Callable[..., Any], args: Mapping[str, Any],
           available: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` as keyword arguments, plus each ``available`` value ``fn`` has a parameter of
    that name for (an argument of the same name is a TypeError: those names are reserved)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: arguments only
        params = {}  # type: ignore[assignment]
    kwargs = dict(args)
    for name, value in available.items():
        if name in params and params[name].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                    inspect.Parameter.KEYWORD_ONLY):
            if name in kwargs:
                raise TypeError(f"argument {name!r} is reserved: the task gets it from the worker")
            kwargs[name] = value
    return kwargs


def is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None))  # noqa: B004 - an object whose __call__ is async


class StillRunning(TimeoutError):
    """A sync function ran past its timeout; ``thread`` is done when its thread returns."""

    def __init__(self, timeout: float, thread: asyncio.Future[Any]) -> None:
        super().__init__(f"still running after {timeout:g}s")
        self.thread = thread


def in_thread(fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> asyncio.Future[Any]:
    """Run ``fn(**kwargs)`` in a daemon thread of its own (with this context's variables):
    the future of its outcome. A daemon thread, so one stuck forever never keeps the process
    from exiting; the caller bounds how many run at once."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(value: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def body() -> None:
        value: Any = None
        error: BaseException | None = None
        try:
            value = context.run(fn, **kwargs)
        except Exception as e:  # noqa: BLE001 - handed to the awaiting task
            error = e
        except BaseException as e:  # noqa: BLE001 - SystemExit in a task fails the task only
            error = RuntimeError(f"{type(e).__name__}: {e}")
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=body, name=f"task {getattr(fn, '__name__', 'fn')}",
                     daemon=True).start()
    return future


async def call(fn: Callable[..., Any], kwargs: Mapping[str, Any], timeout: float, *,
               own_thread: bool = False) -> Any:
    """Call ``fn(**kwargs)``: awaited if it is a coroutine function, else in a thread; a
    TimeoutError after ``timeout`` seconds (a thread is left to finish). ``own_thread``: the
    thread is ``in_thread``'s, and the TimeoutError a ``StillRunning`` with its future."""
    if is_async(fn):
        return await asyncio.wait_for(fn(**kwargs), timeout)
    if own_thread:
        thread = in_thread(fn, kwargs)
        try:
            done, _ = await asyncio.wait({thread}, timeout=timeout)
        except asyncio.CancelledError:
            thread.add_done_callback(_retrieve)
            raise
        if not done:
            thread.add_done_callback(_retrieve)
            raise StillRunning(timeout, thread)
        result = thread.result()
    else:
        result = await asyncio.wait_for(asyncio.to_thread(fn, **kwargs), timeout)
    if inspect.isawaitable(result):  # a plain function that returned a coroutine
        result = await asyncio.wait_for(result, timeout)
    return result


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark an abandoned thread's error as seen (the task was recorded without it)."""
    if not future.cancelled():
        future.exception()


@dataclass(frozen=True, slots=True)
class PageView:
    """The page a per-page task runs on."""
    url: str
    final_url: str
    status: int | None
    mime: str | None
    body: bytes | None = field(repr=False)
    charset: str | None
    links: tuple[str, ...]

    @property
    def text(self) -> str:
        return (self.body or b"").decode(self.charset or "utf-8", "replace")


@dataclass(frozen=True, slots=True)
class PageContext:
    """The visit a per-page task runs for."""
    job_id: int
    url: str
    attempt: int
    init: Mapping[str, Any]
    loader: Any


class PageTaskError(Exception):
    """A per-page task raised: the visit fails with ``task <name> failed: <Type>: <msg>``."""


def items(value: Any) -> tuple[Yield, ...]:
    """A per-page task's return value as the page's items."""
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    return tuple(Yield("item", v if isinstance(v, dict) else {"value": v}) for v in values)


class PageTask:
    """A job spec's ``task``: the allow-listed function ``name`` on every page of the job
    (``worker.tasks.Task``). ``RetryLater`` has the visit made again later; any other
    exception fails the visit with the task's name and the error."""

    def __init__(self, settings: Settings, name: str, args: Mapping[str, Any],
                 init: Mapping[str, Any] | None = None, loader: Any = None) -> None:
        self.name = name
        self.settings = settings
        self.args = dict(args)
        self.init = dict(init or {})
        self.loader = loader
        self.timeout = settings.task_timeout

    async def __call__(self, ctx: Context, page: FetchedPage, ex: Extraction) -> Extraction:
        view = PageView(ctx.url, page.final_url or ctx.url, page.status, page.mime, page.body,
                        page.charset, tuple(u for u, _ in ex.links))
        pctx = PageContext(ctx.job_id, ctx.url, ctx.attempt, self.init, self.loader)
        try:
            target = self.settings.tasks.get(self.name)
            if target is None:
                raise LookupError(f"task {self.name!r} is not allow-listed in this worker's config")
            fn = resolve(target)
            kwargs = inject(fn, self.args, {"page": view, "ctx": pctx, "loader": self.loader,
                                            "init": self.init})
            value = await call(fn, kwargs, self.timeout)
        except RetryLater:
            raise
        except Exception as e:
            raise PageTaskError(f"task {self.name} failed: {type(e).__name__}: {e}") from e
        return replace(ex, yields=(*ex.yields, *items(value)))
