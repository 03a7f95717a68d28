"""Pure pieces of the web tier and the message model."""

from __future__ import annotations

import json

import pytest

from shared.errors import BadRequest, InvalidURL
from shared.messages import BadMessage, VisitMessage
from web_server.app import parse_addr
from web_server.render import dumps
from web_server.routes import parse_job_body


def test_json_is_go_marshal_indent() -> None:
    text = dumps({"b": [1, 2], "a": "x<y>&z", "c": {}})
    assert text == ('{\n  "b": [\n    1,\n    2\n  ],\n  "a": "x\\u003cy\\u003e\\u0026z",\n'
                    '  "c": {}\n}\n')
    assert json.loads(text)["a"] == "x<y>&z"


def test_job_body_trims_skips_and_dedupes() -> None:
    body = "http://a.example/x\r\n\n  \t\nA.EXAMPLE/x\nhttps://b.example\n"
    assert parse_job_body(body) == ["http://a.example/x", "https://b.example/"]


def test_job_body_names_the_bad_line() -> None:
    with pytest.raises(InvalidURL) as e:
        parse_job_body("http://ok.example/\n  gopher://x  \n")
    assert e.value.message == "Invalid URL: gopher://x"


def test_empty_body() -> None:
    with pytest.raises(BadRequest, match="No URLs provided"):
        parse_job_body("\r\n \n")


@pytest.mark.parametrize(("addr", "expected"), [(":8080", ("0.0.0.0", 8080)),
                                                ("127.0.0.1:9", ("127.0.0.1", 9)),
                                                ("[::1]:80", ("::1", 80))])
def test_parse_addr(addr: str, expected: tuple[str, int]) -> None:
    assert parse_addr(addr) == expected


def test_visit_message_round_trip() -> None:
    m = VisitMessage(job=7, url=42)
    assert VisitMessage.decode(m.encode()) == m
    assert m.key == (7, 42)


@pytest.mark.parametrize("payload", [b"", b"{", b'{"v":2,"job":1,"url":2}', b'{"job":"1","url":2}',
                                     b'{"v":1,"job":1}'])
def test_bad_messages_are_rejected(payload: bytes) -> None:
    with pytest.raises(BadMessage):
        VisitMessage.decode(payload)
