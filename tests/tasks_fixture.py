"""Task functions for the tests (allow-listed by name in the tests' config ``tasks``): a sync
one, an async one that uses the loader, one that raises, one that paginates with follow-ups and
partial results, a slow one that logs its runs, a per-page task and one that returns the
worker's init values.

A page of the search site (``search_site``) is ``<base>/search?q=<q>&page=<n>``: a JSON
object with its hits and whether there is a next page."""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import Any


def add(a: int, b: int) -> int:
    return a + b


async def fetch_title(url: str, loader: Any) -> str:
    page = await loader.fetch(url)
    if page.error is not None:
        raise RuntimeError(f"{url}: {page.error}")
    m = re.search(r"<title>(.*?)</title>", page.text, re.DOTALL | re.IGNORECASE)
    return m.group(1).strip() if m else ""


def boom() -> None:
    raise ValueError("boom: the task failed on purpose")


async def search(base: str, q: str, loader: Any, ctx: Any, page: int = 1,
                 max_pages: int = 3) -> dict[str, Any]:
    """One page of results: its hits are a partial result; the next page is a follow-up task,
    up to ``max_pages``."""
    loaded = await loader.fetch(f"{base}/search?q={q}&page={page}")
    if loaded.error is not None or loaded.status != 200:
        raise RuntimeError(f"page {page}: {loaded.error or loaded.status}")
    data = loaded.json()
    await ctx.partial({"page": page, "hits": data["hits"]})
    if data["next"] and page < max_pages:
        ctx.enqueue("search", {"base": base, "q": q, "page": page + 1, "max_pages": max_pages})
    return {"page": page, "count": len(data["hits"])}


def slow(seconds: float, ctx: Any) -> str:
    """Sleeps ``seconds`` (in a thread: a sync task); logs ``start``/``finish`` lines with the
    pid, the task id and the attempt to ``$HARVESTER_TEST_TASK_LOG``."""
    _log(f"start {os.getpid()} {ctx.task_id} {ctx.attempt}")
    time.sleep(seconds)
    _log(f"finish {os.getpid()} {ctx.task_id} {ctx.attempt}")
    return ctx.idempotency_key  # type: ignore[no-any-return]


def tally(n: int, ctx: Any) -> int:
    """A sync task's partial results: each written before ``partial`` returns."""
    for i in range(n):
        ctx.partial({"i": i})
    return n


async def nap(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "rested"


def _log(line: str) -> None:
    path = os.environ.get("HARVESTER_TEST_TASK_LOG")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def page_title(page: Any) -> dict[str, Any]:
    m = re.search(r"<title>(.*?)</title>", page.text, re.DOTALL | re.IGNORECASE)
    return {"title": m.group(1).strip() if m else None, "links": len(page.links)}


def whoami(init: dict[str, Any]) -> dict[str, Any]:
    return {"pid": os.getpid(), "init": init}


def not_json() -> object:
    return {1, 2}
