"""A client of Harvester's web API over aiohttp: ``Client(server)``'s methods wrap one request
each (sync, ``asyncio.run``); ``events`` parses the server-sent events of a job's status."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import aiohttp

T = TypeVar("T")
TIMEOUT = aiohttp.ClientTimeout(total=None, connect=5, sock_read=60)


class ApiError(Exception):
    """The server answered with an error: its status and ``{"code","message"}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status


def _api_error(status: int, text: str) -> ApiError:
    """The error of an answer ``status`` >= 400 with body ``text``: its ``{"code","message"}``,
    or the text itself if it is not that (a proxy's HTML page)."""
    try:
        body = json.loads(text)
        return ApiError(status, body.get("code", ""), body.get("message", text))
    except (ValueError, AttributeError):
        return ApiError(status, "", text)


class Client:
    """``token``: an API bearer token, sent as ``Authorization: Bearer`` (None: none sent)."""

    def __init__(self, server: str, token: str | None = None) -> None:
        self.server = server.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run(coro)

    async def _request(self, method: str, path: str, data: str | None = None,
                       params: dict[str, str] | None = None, raw: bool = False) -> Any:
        async with aiohttp.ClientSession(timeout=TIMEOUT, headers=self._headers) as http, \
                http.request(method, self.server + path, data=data, params=params) as r:
            text = await r.text()
            if r.status >= 400:
                raise _api_error(r.status, text)
            return text if raw else json.loads(text)

    def submit(self, urls: list[str], depth: int | None = None, force: bool = False) -> int:
        params = {} if depth is None else {"depth": str(depth)}
        if force:
            params["forceCrawl"] = "true"
        body = self._run(self._request("POST", "/", "\n".join(urls), params))
        return int(body["jobId"])

    def status(self, job_id: int) -> dict[str, Any]:
        return dict(self._run(self._request("GET", f"/status/{job_id}")))

    def result(self, job_id: int, fmt: str = "json") -> str:
        params = {} if fmt == "json" else {"format": fmt}
        return str(self._run(self._request("GET", f"/result/{job_id}", params=params, raw=True)))

    def jobs(self, state: str | None = None) -> dict[str, Any]:
        return dict(self._run(self._request("GET", "/jobs",
                                            params={"state": state} if state else None)))

    def cancel(self, job_id: int) -> dict[str, Any]:
        return dict(self._run(self._request("DELETE", f"/jobs/{job_id}")))

    def pause(self, job_id: int) -> dict[str, Any]:
        return dict(self._run(self._request("POST", f"/jobs/{job_id}/pause")))

    def resume(self, job_id: int) -> dict[str, Any]:
        return dict(self._run(self._request("POST", f"/jobs/{job_id}/resume")))

    def workers(self) -> Any:
        return self._run(self._request("GET", "/workers"))

    async def events(self, job_id: int) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(event, data) of ``GET /status/<id>/events`` until the server ends it."""
        async with aiohttp.ClientSession(timeout=TIMEOUT, headers=self._headers) as http, \
                http.get(f"{self.server}/status/{job_id}/events") as r:
            if r.status >= 400:
                raise _api_error(r.status, await r.text())
            event, data = "message", list[str]()
            async for raw in r.content:
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if data:
                        yield event, json.loads("\n".join(data))
                    event, data = "message", []
                elif line.startswith(":"):
                    continue
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
