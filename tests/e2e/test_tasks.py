"""The task API end to end (CC-1, CC-2, CC-3): a whole stack in-process, tasks from
``tests/tasks_fixture.py`` allow-listed in the config.

- Functions run and answer: a sync one, an async one through the loader, one that raises (its
  type and traceback; the worker goes on), a result that is not JSON, targets that do not
  resolve, a ``.py`` path target; the same key is the same task, run once; anything not
  allow-listed, a bad kind, bad args are 400s.
- Pagination with follow-ups: ``max_pages=3`` fetches exactly 3 pages of 5, aggregated under
  the root (its tree, its partial results).
- A browser task waits for a browser worker, then runs there.
- A job spec's ``task`` runs on every page; its values are the pages' items.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from shared.config import Settings
from tests.browser_site import CHROMIUM, require_chromium
from tests.e2e.stack import Stack
from tests.e2e.test_openapi_responses import check
from tests.servers import serve
from worker.crawl import run as run_worker

pytestmark = pytest.mark.e2e

FIXTURE = Path(__file__).parents[1] / "tasks_fixture.py"
TASKS = {name: f"tests.tasks_fixture:{name}" for name in (
    "add", "fetch_title", "boom", "search", "slow", "nap", "page_title", "whoami", "not_json",
    "tally")}
TASKS |= {"no_module": "tests.no_such_module:add", "no_function": "tests.tasks_fixture:nope",
          "add_file": f"{FIXTURE}:add"}
PAGES = 5  # of the search site and of the page site


class TaskSite:
    """``/search?q=&page=n``: JSON hits (n of ``PAGES``); ``/p/<n>``: a page titled ``Page n``
    linking to the next one. Hits counted per path and query."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.base = ""
        self.runner: web.AppRunner | None = None

    async def start(self) -> TaskSite:
        self.runner, self.base = await serve(self.handle)
        return self

    async def handle(self, request: web.Request) -> web.Response:
        self.hits[request.path_qs] += 1
        if request.path == "/search":
            page = int(request.query["page"])
            q = request.query["q"]
            hits = [f"{q}-{page}-{i}" for i in range(2)]
            return web.json_response({"hits": hits, "next": page < PAGES})
        if request.path == "/js":  # the title a browser sees is the script's
            return web.Response(text="<html><head><title>Static</title></head><body><script>"
                                "document.title = 'Scripted'</script></body></html>",
                                content_type="text/html")
        m = re.fullmatch(r"/p/([0-9]+)", request.path)
        if m:
            n = int(m.group(1))
            link = f'<a href="/p/{n + 1}">next</a>' if n + 1 < PAGES else ""
            return web.Response(text=f"<html><head><title>Page {n}</title></head>"
                                f"<body>{link}</body></html>", content_type="text/html")
        return web.Response(status=404)

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()


@pytest.fixture
async def task_site() -> AsyncIterator[TaskSite]:
    s = await TaskSite().start()
    yield s
    await s.stop()


def task_settings(settings: Settings, **more: Any) -> Settings:
    return settings.model_copy(update={"tasks": TASKS, **more})


async def post_task(stack: Stack, body: Any, **headers: str) -> tuple[int, Any]:
    status, answer = await stack.post_json(body, "/tasks", **headers)
    check("/tasks", "post", status, answer)
    return status, answer


async def run_task(stack: Stack, name: str, **args: Any) -> int:
    status, body = await post_task(stack, {"task": name, "args": args})
    assert status == 200, body
    return int(body["taskId"])


async def get_task(stack: Stack, task_id: int) -> dict[str, Any]:
    status, body, _ = await stack.request("GET", f"/tasks/{task_id}")
    check("/tasks/{taskId}", "get", status, body)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def wait_task(stack: Stack, task_id: int, timeout: float = 20) -> dict[str, Any]:
    """The task once it finished (and, on a root, its whole tree)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = await get_task(stack, task_id)
        if t["state"] in ("succeeded", "failed") and t.get("tree", {}).get("state") != "running":
            return t
        await asyncio.sleep(0.05)
    raise AssertionError(f"task {task_id} not finished after {timeout}s: {t}")


async def test_functions_run_and_every_bad_request_is_a_400(settings: Settings,
                                                            task_site: TaskSite) -> None:
    stack = await Stack(task_settings(settings)).start()
    try:
        add = await run_task(stack, "add", a=1, b=2)
        title = await run_task(stack, "fetch_title", url=task_site.base + "/p/1")
        boom = await run_task(stack, "boom")
        after = await run_task(stack, "add", a=40, b=2)  # the worker goes on after a failure
        no_module = await run_task(stack, "no_module", a=1, b=2)
        no_function = await run_task(stack, "no_function")
        by_file = await run_task(stack, "add_file", a=2, b=5)
        not_json = await run_task(stack, "not_json")
        bad_args = await run_task(stack, "add", a=1, c=2)
        tally = await run_task(stack, "tally", n=3)

        done = await wait_task(stack, add)
        assert (done["state"], done["result"], done["error"], done["attempts"]) == (
            "succeeded", 3, None, 1)
        assert (done["task"], done["kind"], done["args"], done["rootId"], done["parentId"]) == (
            "add", "http", {"a": 1, "b": 2}, add, None)
        assert done["worker"].endswith(":http") and done["tree"]["results"] == [
            {"taskId": add, "result": 3}]
        assert (await wait_task(stack, title))["result"] == "Page 1"
        assert task_site.hits["/p/1"] == 1
        failed = await wait_task(stack, boom)
        assert failed["state"] == "failed" and failed["result"] is None
        assert (failed["error"]["type"], failed["error"]["message"]) == (
            "ValueError", "boom: the task failed on purpose")
        assert "Traceback" in failed["error"]["traceback"]
        assert 'tasks_fixture.py", line' in failed["error"]["traceback"]
        assert failed["tree"]["state"] == "failed"
        assert (await wait_task(stack, after))["result"] == 42
        assert (await wait_task(stack, no_module))["error"]["type"] == "ModuleNotFoundError"
        assert (await wait_task(stack, no_function))["error"]["type"] == "AttributeError"
        assert (await wait_task(stack, by_file))["result"] == 7
        assert (await wait_task(stack, not_json))["error"]["type"] == "TypeError"
        assert (await wait_task(stack, bad_args))["error"]["type"] == "TypeError"
        counted = await wait_task(stack, tally)  # partial results from a sync function
        assert (counted["result"], counted["partial"]) == (3, [{"i": 0}, {"i": 1}, {"i": 2}])

        # One key, one task, run once: the second POST answers the first task.
        status, first = await post_task(stack, {"task": "add", "args": {"a": 5, "b": 5},
                                                "key": "order-17"})
        assert status == 200
        once = await wait_task(stack, first["taskId"])
        status, again = await post_task(stack, {"task": "add", "args": {"a": 5, "b": 5}},
                                        **{"Idempotency-Key": "order-17"})
        assert (status, again) == (200, first)
        assert await get_task(stack, first["taskId"]) == once
        assert once["key"] == "order-17" and once["attempts"] == 1

        for body, message in [
                ({"task": "os_system", "args": {}}, "Invalid task: unknown task \"os_system\""),
                ({"task": "os:system"}, "Invalid task: unknown task"),
                ({"args": {}}, "Invalid task: a task name is required"),
                ({"task": "add", "kind": "ftp"}, "Invalid kind: \"ftp\""),
                ({"task": "add", "args": [1, 2]}, "Invalid args: a JSON object"),
                ({"task": "add", "args": {"a": "x\u0000"}}, "Invalid args: a string holds a NUL"),
                ({"task": "add", "code": "import os"}, "Invalid body: unknown field 'code'"),
                ({"task": "add", "key": "1/1"}, "Invalid key: 1/1"),
                ([1], "Invalid body: expected a JSON object")]:
            status, answer = await post_task(stack, body)
            assert (status, answer["code"]) == (400, "BadRequest"), body
            assert answer["message"].startswith(message), answer
        assert "allowed: add, add_file" in (await post_task(stack, {"task": "x"}))[1]["message"]
        status, answer = await post_task(stack, {"task": "add", "key": "a"},
                                         **{"Idempotency-Key": "b"})
        assert status == 400 and "differ" in answer["message"]
        for path, status in (("/tasks/999999", 404), ("/tasks/x", 400), ("/tasks/-1", 400)):
            code, answer, _ = await stack.request("GET", path)
            check("/tasks/{taskId}", "get", code, answer)
            assert code == status, answer
    finally:
        await stack.stop()


async def test_a_result_or_follow_up_postgres_cannot_store_fails_the_task_at_once(
        settings: Settings, tmp_path: Path) -> None:
    """JSON that jsonb refuses (a NUL character, a lone surrogate) in a result or in a
    follow-up's arguments fails the task on its first attempt, saying why; it is not taken for
    PostgreSQL being away, run again and again, then abandoned."""
    funcs = tmp_path / "unstorable.py"
    funcs.write_text("def nul():\n    return {'a': 'x\\x00'}\n"
                     "def surrogate():\n    return ['\\ud800']\n"
                     "def nul_follow_up(ctx):\n"
                     "    ctx.enqueue('add', {'a': '\\x00', 'b': 0})\n    return 1\n")
    unstorable = {n: f"{funcs}:{n}" for n in ("nul", "surrogate", "nul_follow_up")}
    stack = await Stack(task_settings(settings, tasks=TASKS | unstorable,
                                      task_max_attempts=2)).start()
    try:
        stored = "{} not storable: a string holds {}"
        for name, error in [
                ("nul", ("TypeError", stored.format("the task's result is", "a NUL character"))),
                ("surrogate", ("TypeError", stored.format("the task's result is",
                                                          "a lone surrogate (not UTF-8)"))),
                ("nul_follow_up", ("ValueError", stored.format("arguments of 'add' are",
                                                               "a NUL character")))]:
            done = await wait_task(stack, await run_task(stack, name))
            assert (done["state"], done["attempts"], done["children"]) == ("failed", 1, []), done
            assert (done["error"]["type"], done["error"]["message"]) == error
        assert (await wait_task(stack, await run_task(stack, "add", a=1, b=2)))["result"] == 3
    finally:
        await stack.stop()


async def test_follow_ups_paginate_and_aggregate_under_the_root(settings: Settings,
                                                                task_site: TaskSite) -> None:
    stack = await Stack(task_settings(settings)).start()
    try:
        root = await run_task(stack, "search", base=task_site.base, q="cat", max_pages=3)
        done = await wait_task(stack, root)
        searched = sorted(k for k in task_site.hits if k.startswith("/search"))
        assert searched == [f"/search?q=cat&page={n}" for n in (1, 2, 3)]
        assert set(task_site.hits.values()) == {1}
        tree = done["tree"]
        assert (tree["state"], tree["total"], tree["succeeded"], tree["failed"]) == (
            "succeeded", 3, 3, 0)
        assert [r["result"]["page"] for r in tree["results"]] == [1, 2, 3]
        assert done["partial"] == [{"page": n, "hits": [f"cat-{n}-0", f"cat-{n}-1"]}
                                   for n in (1, 2, 3)]
        (child,) = done["children"]
        second = await get_task(stack, child)
        assert (second["parentId"], second["rootId"], second["key"]) == (root, root, f"{root}/1")
        assert "tree" not in second and len(second["children"]) == 1
        assert second["partial"] == [{"page": 2, "hits": ["cat-2-0", "cat-2-1"]}]
    finally:
        await stack.stop()


async def test_a_job_runs_its_task_on_every_page(settings: Settings,
                                                 task_site: TaskSite) -> None:
    stack = await Stack(task_settings(settings)).start()
    try:
        spec = {"urls": [task_site.base + "/p/0"], "depth": PAGES, "task": "page_title"}
        status, body = await stack.post_json(spec)
        assert status == 200, body
        job = int(body["jobId"])
        await stack.wait_complete(job, timeout=20)
        status, items, _ = await stack.request("GET", f"/items/{job}", format="json")
        assert status == 200
        assert sorted((i["url"], i["title"], i["links"]) for i in items) == [
            (f"{task_site.base}/p/{n}", f"Page {n}", 1 if n + 1 < PAGES else 0)
            for n in range(PAGES)]
        failing = {"urls": [task_site.base + "/p/0"], "depth": 0, "task": "boom",
                   "forceCrawl": True}
        status, body = await stack.post_json(failing)
        assert status == 200, body
        await stack.wait_complete(int(body["jobId"]), timeout=20)
        failures = await stack.result(int(body["jobId"]), status="failed")
        assert failures[task_site.base + "/p/0"]["reason"].endswith(  # type: ignore[call-overload]
            "task boom failed: ValueError: boom: the task failed on purpose")
        spec["task"] = {"name": "rm_rf", "args": {}}
        status, body = await stack.post_json(spec)
        assert status == 400 and "rm_rf" in body["message"], body
    finally:
        await stack.stop()


async def test_a_task_cut_short_runs_again_elsewhere(settings: Settings) -> None:
    """At least once: a worker stopped mid-task (its drain times out) leaves the message
    unacked; after AckWait another worker runs the task again, as attempt 2."""
    settings = task_settings(settings, ack_wait=1.5, shutdown_timeout=0.2)
    stack = await Stack(settings).start(workers=0)
    first_stop = asyncio.Event()
    first = asyncio.create_task(run_worker(settings, first_stop))
    try:
        nap = await run_task(stack, "nap", seconds=2)
        deadline = time.monotonic() + 20
        while (await get_task(stack, nap))["state"] != "running":
            assert time.monotonic() < deadline, "the task never started"
            await asyncio.sleep(0.05)
        first_stop.set()
        await first  # cancels the nap: no outcome, no ack
        cut = await get_task(stack, nap)
        assert (cut["state"], cut["attempts"]) == ("running", 1)
        stack.add(run_worker)
        done = await wait_task(stack, nap)
        assert (done["state"], done["result"], done["attempts"]) == ("succeeded", "rested", 2)
    finally:
        first_stop.set()
        await asyncio.gather(first, return_exceptions=True)
        await stack.stop()


async def test_a_browser_task_waits_for_a_browser_worker(settings: Settings,
                                                         task_site: TaskSite) -> None:
    """A task of kind browser is not run by an http worker; a browser worker added later runs
    it, its loader rendering the page in Chromium."""
    require_chromium()
    settings = task_settings(settings, fetcher_kinds=("http", "browser"),
                             browser_path=CHROMIUM)
    stack = await Stack(settings).start()  # one http worker
    try:
        status, body = await post_task(stack, {"task": "fetch_title", "kind": "browser",
                                               "args": {"url": task_site.base + "/js"}})
        assert status == 200, body
        browser_task = body["taskId"]
        later = await run_task(stack, "fetch_title", url=task_site.base + "/js")
        assert (await wait_task(stack, later))["result"] == "Static"  # http: no script run
        assert (await get_task(stack, browser_task))["state"] == "queued"
        browsing = settings.model_copy(update={"worker_kinds": {"browser": 1}})
        stack.add(lambda _, stop: run_worker(browsing, stop))
        done = await wait_task(stack, browser_task, timeout=30)
        assert (done["state"], done["result"], done["attempts"]) == ("succeeded", "Scripted", 1)
        assert done["worker"].endswith(":browser")
    finally:
        await stack.stop()
