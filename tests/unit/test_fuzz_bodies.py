"""Fuzzing the web server's body parsers: whatever bytes a client sends as the body of
``POST /jobs`` (newline list or JSON spec), ``PUT /sessions/...`` or ``POST /tasks``, the answer
is the parsed value or a ``ClientError`` (a 4xx, its message as the API sends it), never
another exception (a 500). The bytes go through the same steps as a request's: UTF-8 (else
``read_text``'s 400), then ``render.json_object`` and the route's parser."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.config import Settings
from shared.errors import BadRequest, ClientError
from shared.jobspec import validate_spec
from web_server import sessions, tasks
from web_server.render import json_object
from web_server.routes import _looks_like_json, newline_spec, parse_job_body

SETTINGS = Settings(tasks={"t": "json:dumps"}, webhook_secret="a-webhook-secret")
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def as_text(raw: bytes) -> str:
    """``read_text``'s step: a body that is not UTF-8 is a 400."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("Request body is not UTF-8 text") from None


def job_body(text: str) -> Any:
    """``POST /jobs``: a JSON spec or a newline list, as ``routes._json_spec`` tells them."""
    if _looks_like_json(text):
        return validate_spec(text, SETTINGS)
    return newline_spec({}, text, SETTINGS)


PARSERS: dict[str, Callable[[str], Any]] = {
    "json_object": lambda t: json_object(t, ("a", "b"), '{"a": ...}'),
    "session": sessions.parse_session,
    "task": lambda t: tasks.parse_task_body(t, None, SETTINGS),
    "task with key": lambda t: tasks.parse_task_body(t, "k-1", SETTINGS),
    "job": job_body,
    "job lines": parse_job_body,
}

FIELD_NAMES = sorted({*sessions.FIELDS, *tasks.FIELDS, "a", "b", "urls", "cookies", "name",
                      "value", "domain", "path"})
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
           | st.sampled_from(["http://h.example/", "https://h.example:8080", "t", "k-1", "a=b",
                              "\r\n", "\x00", "x" * 5000, "http", "github"]))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), inner, max_size=4),
    max_leaves=15)
SHORT = st.text(max_size=10) | st.sampled_from(["sid", "abc123", "a b", "\x7f", "x" * 9000])
SHAPES = (
    st.fixed_dictionaries({}, optional={
        "cookies": st.dictionaries(SHORT, SHORT | SCALARS, max_size=3) | VALUES,
        "headers": st.dictionaries(SHORT, SHORT | SCALARS, max_size=3) | VALUES,
        "userAgent": SHORT | SCALARS, "host": st.sampled_from(
            ["https://h.example", "http://h:8080", "h.example", "https://h/x", "ftp://h"]) | SCALARS,
        "maxUses": st.integers(-5, 2**40) | SCALARS})
    | st.fixed_dictionaries({"task": st.sampled_from(["t", "u"]) | SCALARS}, optional={
        "args": st.dictionaries(st.text(max_size=5), VALUES, max_size=3) | VALUES,
        "kind": st.sampled_from(["http", "browser"]) | SCALARS,
        "key": st.sampled_from(["k-1", "k-2", ""]) | SCALARS}))
BODIES = (st.binary(max_size=300)
          | SHAPES.map(lambda v: json.dumps(v).encode())
          | VALUES.map(lambda v: json.dumps(v).encode())
          | VALUES.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8"))
          | st.lists(st.sampled_from(["http://h.example/a", "h.example", "ftp://x/", " ", "",
                                      "http://u:p@h/", "http://h/" + "a" * 3000, "\ufeff",
                                      "{", "[1,", "NaN", "1e999"]), max_size=5)
          .map(lambda ls: "\n".join(ls).encode()))


def answer(parser: Callable[[str], Any], raw: bytes) -> object:
    try:
        return parser(as_text(raw))
    except ClientError as e:
        assert 400 <= e.status < 500 and e.message
        return e


@FUZZ
@given(BODIES)
def test_no_body_makes_a_parser_fail_other_than_with_a_4xx(raw: bytes) -> None:
    for parser in PARSERS.values():
        answer(parser, raw)


def test_deep_and_huge_bodies_are_4xx() -> None:
    for raw in (b"[" * 200_000, b'{"a":' * 50_000, b'{"cookies": ' + b"[" * 100_000,
                b'"' + b"\\u" * 10_000 + b'"', b"1" * 100_000, b"\xef\xbb\xbf{}"):
        for parser in PARSERS.values():
            answer(parser, raw)
