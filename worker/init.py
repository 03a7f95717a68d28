"""Worker init functions (``init`` in config): each entry (``pkg.mod:fn`` or
``/path/file.py:fn``) is called once per worker process, before NATS, PostgreSQL and any visit
or task; its return value reaches every task (``ctx.init[entry]``) and per-page task. One that
raises leaves the process unhealthy: it takes no work (``worker.crawl``)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config import Settings
from worker.commit import describe

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InitResult:
    """The init functions' return values by entry, or why one failed (``error``: the entry and
    its exception, one line; the values of the entries before it are kept)."""
    values: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def healthy(self) -> bool:
        return self.error is None


def load(target: str) -> Callable[..., Any]:
    """The function ``target`` names: ``dotted.module:fn`` or ``/path/file.py:fn``."""
    where, sep, name = target.rpartition(":")
    if not sep or not where or not name:
        raise ValueError(f"{target!r} is not module:function")
    if where.endswith(".py"):
        path = Path(where)
        mod_name = f"harvester_init_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(mod_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {where}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules[mod_name] = module
    else:
        module = importlib.import_module(where)
    fn = getattr(module, name)
    if not callable(fn):
        raise TypeError(f"{target} is not callable")
    return fn  # type: ignore[no-any-return]


async def run_inits(settings: Settings) -> InitResult:
    """Call each ``settings.init`` entry in order (with ``settings=`` if it takes that
    parameter; a coroutine is awaited). The first that raises stops the rest: it is logged
    once with its traceback, and its one-line reason is the result's ``error``."""
    values: dict[str, Any] = {}
    for entry in settings.init:
        try:
            fn = load(entry)
            kwargs = {"settings": settings} if _takes(fn, "settings") else {}
            value = fn(**kwargs)
            if inspect.isawaitable(value):
                value = await value
        except Exception as e:
            log.exception("init %s failed; this worker takes no work", entry)
            return InitResult(values, f"init failed: {entry}: {describe(e)}")
        values[entry] = value
        log.info("init %s done", entry)
    return InitResult(values)


def _takes(fn: Callable[..., Any], name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False
