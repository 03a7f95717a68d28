"""Tasks: a job's own code, run once per fetched page after its extractors (``TASKS``, by name;
none built in). A task gets the visit (``Context``), the page and what was extracted, and
returns the extraction to keep (the same, or with items added); it raises ``RetryLater`` to have
the visit made again later (its attempt counted, like a failed fetch).

Adding one (recording what it saw, as ``tests/plugins.py`` does)::

    @TASKS.register("test-record")
    class Record:
        name = "test-record"

        def __init__(self, settings: Settings, options: Mapping[str, Any]) -> None:
            self.seen: list[str] = []

        async def __call__(self, ctx: Context, page: FetchedPage, ex: Extraction) -> Extraction:
            self.seen.append(ctx.url)
            return replace(ex, yields=(*ex.yields, Yield("item", {"status": page.status})))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from shared.model import Extraction, FetchedPage
from worker.registry import Registry


@dataclass(frozen=True, slots=True)
class Context:
    """The visit a task or an output works for."""
    job_id: int
    url_id: int
    url: str
    attempt: int  # 1 for the first fetch of the page in this job


class RetryLater(Exception):
    """Raised by a task: make this visit again in ``delay`` seconds (its attempt is counted;
    past the source's retries, the visit fails with ``reason``)."""

    def __init__(self, delay: float, reason: str = "the task asked to retry") -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


@runtime_checkable
class Task(Protocol):
    name: str

    async def __call__(self, ctx: Context, page: FetchedPage, ex: Extraction) -> Extraction: ...


TASKS: Registry[Task] = Registry("task")
