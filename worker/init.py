"""Worker init functions (``init`` in config): each entry (``pkg.mod:fn`` or
``/path/file.py:fn``, resolved as tasks' are: ``worker.taskfuncs.resolve``) is called once per
worker process, before NATS, PostgreSQL and any visit or task; its return value reaches every
task (``ctx.init[entry]``) and per-page task. One that raises leaves the process unhealthy: it
takes no work (``worker.crawl``)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.config import Settings
from worker.commit import describe
from worker.taskfuncs import resolve

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


async def run_inits(settings: Settings) -> InitResult:
    """Call each ``settings.init`` entry in order (with ``settings=`` if it takes that
    parameter; a coroutine is awaited). The first that raises stops the rest: it is logged
    once with its traceback, and its one-line reason is the result's ``error``."""
    values: dict[str, Any] = {}
    for entry in settings.init:
        try:
            fn = resolve(entry)
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
