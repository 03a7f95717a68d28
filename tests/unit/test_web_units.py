"""Pure pieces of the web tier and the message model."""

from __future__ import annotations

import json
import re

import pytest

from shared.errors import BadRequest, InvalidURL
from shared.messages import BadMessage, VisitMessage
from web_server.app import parse_addr
from web_server.render import dumps
from web_server.routes import _ResultWriter, parse_int, parse_job_body


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


@pytest.mark.parametrize("raw", ["١٢", "²", "1_0", "+3", " 3", "3 ", "3\n", "", "-", "0x1", "1e3"])
def test_only_ascii_decimal_integers(raw: str) -> None:
    with pytest.raises(BadRequest, match=f"^Invalid n: {re.escape(raw)}$"):
        parse_int("n", raw, -10, 10, signed=True)


def test_integer_range() -> None:
    assert parse_int("n", "-10", -10, 10, signed=True) == -10
    assert parse_int("n", "007", 0, 10) == 7
    with pytest.raises(BadRequest, match=r"^Invalid n: -1$"):
        parse_int("n", "-1", 0, 10)
    with pytest.raises(BadRequest, match=r"^Invalid n: 11 \(allowed 0 to 10\)$"):
        parse_int("n", "11", 0, 10)
    huge = "9" * 5000  # past int()'s 4300 digits: a 400, not a ValueError (a 500)
    with pytest.raises(BadRequest, match=r"^Invalid n: 9+ \(allowed 0 to 10\)$"):
        parse_int("n", huge, 0, 10)
    with pytest.raises(BadRequest, match=r"^Invalid n: 0+1 \(allowed 2 to 10\)$"):
        parse_int("n", "0" * 5000 + "1", 2, 10)


class _Collect:
    def __init__(self) -> None:
        self.body = b""

    async def write(self, data: bytes) -> None:
        self.body += data


@pytest.mark.parametrize("chunks", [[], [[]], [[("http://a/", ["http://a/x<y>", "http://b/"])]],
                                    [[("p1", ["l1"]), ("p2", ["l2", "l3"])], [], [("p3", ["l4"])]]])
async def test_result_is_laid_out_as_go_would(chunks: list[list[tuple[str, list[str]]]]) -> None:
    """Written chunk by chunk, the result is byte for byte what MarshalIndent gives the map."""
    sink = _Collect()
    out = _ResultWriter(sink)  # type: ignore[arg-type]
    for pages in chunks:
        await out.write(pages)
    await out.close()
    assert sink.body.decode() == dumps({p: links for pages in chunks for p, links in pages})
