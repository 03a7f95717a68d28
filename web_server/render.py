"""JSON as the original Harvester wrote it: Go's MarshalIndent (2 spaces, sorted map keys,
``<``, ``>`` and ``&`` escaped), with a trailing newline; times as the API writes them
(``utc``); and request bodies read the one way every route reads them (``read_text``,
``json_object``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, overload

from aiohttp import web

from shared.errors import BadRequest, PayloadTooLarge, RequestTimeout
from shared.streams import read_capped
from web_server.deps import SETTINGS

_GO_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                             "\u2028": "\\u2028", "\u2029": "\\u2029"})


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False).translate(_GO_ESCAPES) + "\n"


def string(s: str) -> str:
    return json.dumps(s, ensure_ascii=False).translate(_GO_ESCAPES)


def json_response(data: Any, status: int = 200,
                  headers: Mapping[str, str] | None = None) -> web.Response:
    # As the original: "application/json" with no charset parameter (the body is UTF-8).
    return web.Response(body=dumps(data).encode(), status=status, headers=headers,
                        content_type="application/json")


@overload
def utc(t: datetime) -> str: ...
@overload
def utc(t: None) -> None: ...
def utc(t: datetime | None) -> str | None:
    """A time as the API writes it: UTC, ISO 8601 with microseconds and ``Z``; None stays None."""
    return None if t is None else t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def refuse_too_large(request: web.Request, limit: int) -> None:
    """413 now for a body whose Content-Length says it is larger than ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"Request body larger than {limit} bytes")


def body_timeout(request: web.Request) -> float:
    """``httpBodyTimeout``: the seconds a request body may take to arrive (then 408)."""
    return request.app[SETTINGS].http_body_timeout


async def read_text(request: web.Request, limit: int) -> str:
    """The request body as text: 413 past ``limit`` bytes (by Content-Length, or as read),
    408 when it has not all arrived within ``httpBodyTimeout``, 400 when it is not UTF-8."""
    refuse_too_large(request, limit)
    seconds = body_timeout(request)
    try:
        async with asyncio.timeout(seconds):
            raw = await read_capped(request.content, limit)
    except TimeoutError:
        raise RequestTimeout(seconds) from None
    if raw is None:
        raise PayloadTooLarge(f"Request body larger than {limit} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("Request body is not UTF-8 text") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_object(body: str, fields: Sequence[str], example: str,
                show: Callable[[str], str] = repr) -> dict[str, Any]:
    """A body that must be a JSON object of some of ``fields``, or BadRequest: not JSON (NaN
    and Infinity are not), not an object, or a field not in ``fields`` (named by ``show``).
    ``example``, the object's shape, ends the first two messages."""
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise BadRequest(f"Invalid JSON body (expected {example})") from None
    if not isinstance(data, dict):
        raise BadRequest(f"Invalid body: expected a JSON object {example}")
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise BadRequest(f"Invalid body: unknown field {show(unknown[0])} "
                         f"(use {', '.join(fields)})")
    return data
