"""The task API (issue 12): ``POST /tasks`` queues a call of an allow-listed function,
``GET /tasks/{taskId}`` tells its state, result or error, its follow-ups and partial results,
and on a root the whole tree's.

Only the operator's config names code (``tasks: {name: target}``); a request names a key of it,
and anything else is a 400. The row is the outbox: the foreman's task feeder publishes it to
the task queue of its fetcher kind; a worker serving that kind runs it (at least once).
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from shared.config import Settings
from shared.db import tasks
from shared.errors import BadRequest, NotFound
from web_server.auth import principal
from web_server.deps import DEPS, SETTINGS
from web_server.render import json_object, json_response, read_text, utc

FIELDS = ("task", "args", "kind", "key")
KEY_HEADER = "Idempotency-Key"
MAX_KEY = 200         # characters of an idempotency key
MAX_DEPTH = 64        # nesting of the arguments
_DECIMAL = re.compile(r"[0-9]+")
_FOLLOW_UP_KEY = re.compile(r"[0-9]+[/:].*", re.DOTALL)  # follow-ups': <parent>/<n>, <root>:<k>
_INT64_MAX = 2**63 - 1


def parse_task_body(body: str, header_key: str | None, settings: Settings
                    ) -> tuple[str, str, dict[str, Any], str | None]:
    """``(name, kind, args, key)`` of a ``POST /tasks`` body, or BadRequest saying what is
    wrong with it."""
    data = json_object(body, FIELDS, '{"task": "<name>", "args": {...}}')
    name = data.get("task")
    allowed = ", ".join(sorted(settings.tasks)) or "none configured"
    if not isinstance(name, str):
        raise BadRequest(f"Invalid task: a task name is required (allowed: {allowed})")
    if name not in settings.tasks:
        raise BadRequest(f"Invalid task: unknown task {_show(name)} (allowed: {allowed})")
    kind = data.get("kind", "http")
    if not isinstance(kind, str) or kind not in settings.fetcher_kinds:
        raise BadRequest(f"Invalid kind: {_show(kind)} "
                         f"(fetcherKinds: {', '.join(settings.fetcher_kinds)})")
    args = data.get("args", {})
    if not isinstance(args, dict):
        raise BadRequest("Invalid args: a JSON object of the function's keyword arguments")
    if (problem := tasks.storable_problem(args, MAX_DEPTH)) is not None:
        raise BadRequest(f"Invalid args: {problem}")
    key = data.get("key")
    if key is not None and not isinstance(key, str):
        raise BadRequest("Invalid key: a string")
    if key is not None and header_key is not None and key != header_key:
        raise BadRequest(f"Invalid key: the body's key and the {KEY_HEADER} header differ")
    key = key if key is not None else header_key
    if key is not None:
        if not 0 < len(key) <= MAX_KEY or tasks.storable_problem(key) is not None:
            raise BadRequest(f"Invalid key: 1 to {MAX_KEY} characters of text")
        if _FOLLOW_UP_KEY.fullmatch(key):
            raise BadRequest(f"Invalid key: {key} (keys like <id>/<n> or <id>:<key> are the "
                             "follow-ups' own)")
    return name, kind, args, key


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 80 else text[:77] + "..."


async def create_task(request: web.Request) -> web.Response:
    """``POST /tasks``: ``{"task", "args"={}, "kind"="http", "key"?}`` (or the key in an
    ``Idempotency-Key`` header) → ``{"taskId"}``; a known key answers the task it named."""
    settings = request.app[SETTINGS]
    body = await read_text(request, settings.max_request_bytes)
    name, kind, args, key = parse_task_body(body, request.headers.get(KEY_HEADER), settings)
    async with request.app[DEPS].acquire() as conn:
        task_id, _ = await tasks.create(conn, name, kind, args, key, principal(request).owner)
    return json_response({"taskId": task_id})


def parse_task_id(request: web.Request) -> int:
    raw = request.match_info["task_id"]
    if _DECIMAL.fullmatch(raw) is None or int(raw) > _INT64_MAX:
        raise BadRequest(f"Invalid taskId: {raw}")
    return int(raw)


async def get_task(request: web.Request) -> web.Response:
    """``GET /tasks/{taskId}``: the task, its follow-ups and partial results; on a root, the
    tree of its follow-ups aggregated (``tree``)."""
    task_id = parse_task_id(request)
    async with request.app[DEPS].acquire() as conn:
        info = await tasks.get(conn, task_id)
        tree = None if info is None or info.parent_id is not None else await tasks.tree(
            conn, task_id)
    if info is None:
        raise NotFound(f"No task {task_id}")
    answer: dict[str, Any] = {
        "taskId": info.id, "task": info.name, "kind": info.kind, "args": info.args,
        "key": info.idem_key, "state": info.state, "attempts": info.attempts,
        "result": info.result, "error": info.error, "parentId": info.parent_id,
        "rootId": info.root_id, "worker": info.worker, "createdOn": utc(info.created_on),
        "startedOn": utc(info.started_on), "finishedOn": utc(info.finished_on),
        "children": info.children, "partial": info.partials}
    if tree is not None:
        answer["tree"] = {
            "state": tree.state, "total": tree.total, "queued": tree.queued,
            "running": tree.running, "succeeded": tree.succeeded, "failed": tree.failed,
            "results": [{"taskId": i, "result": r} for i, r in tree.results]}
    return json_response(answer)


def add_routes(app: web.Application, base: str) -> None:
    app.router.add_post(base + "/tasks", create_task)
    app.router.add_get(base + "/tasks/{task_id}", get_task, allow_head=False)
