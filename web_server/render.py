"""JSON as the original Harvester wrote it: Go's MarshalIndent (2 spaces, sorted map keys,
``<``, ``>`` and ``&`` escaped), with a trailing newline."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

_GO_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                             "\u2028": "\\u2028", "\u2029": "\\u2029"})


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False).translate(_GO_ESCAPES) + "\n"


def string(s: str) -> str:
    return json.dumps(s, ensure_ascii=False).translate(_GO_ESCAPES)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # As the original: "application/json" with no charset parameter (the body is UTF-8).
    return web.Response(body=dumps(data).encode(), status=status, headers=headers,
                        content_type="application/json")
