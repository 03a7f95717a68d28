"""The worker's HTML parser lanes (worker/parse.py): real child processes, real pathological HTML."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable

import pytest

from shared.links import extract_links
from shared.mime import guess_mime
from worker.gate import guard_band
from worker.parse import ParseFailed, Parser

PAGE = b'<a href="a.html">a</a> <img src="i.png"> <a href="/b/?y=2&x=1#f">b</a>'


def nested_divs(depth: int) -> bytes:
    return b"<div>" * depth + b'<a href="/deep">x</a>' + b"</div>" * depth


@pytest.fixture
async def parser() -> AsyncIterator[Parser]:
    async with Parser(timeout=2.0, lanes=2) as p:
        yield p


async def test_links_are_those_of_extract_links_with_their_types(parser: Parser) -> None:
    expected = sorted((u, guess_mime(u)) for u in extract_links(PAGE, "http://h/d/p.html"))
    assert await parser.links(PAGE, "http://h/d/p.html", None) == expected
    assert ("http://h/d/i.png", "image/png") in expected and len(expected) == 3


async def test_a_page_over_the_deadline_fails_and_its_lane_is_replaced(parser: Parser) -> None:
    pids = lanes(parser)
    t0 = time.monotonic()
    with pytest.raises(ParseFailed, match="parsing took longer than 2s"):
        await parser.links(nested_divs(100_000), "http://h/", None)  # about 30 s of parsing
    assert time.monotonic() - t0 < 5
    await until(lambda: len(lanes(parser)) == 2, "a new lane started")
    assert lanes(parser) != pids
    assert not alive(next(iter(pids - lanes(parser))))
    assert await parser.links(PAGE, "http://h/", None)  # both lanes work
    assert await asyncio.gather(*(parser.links(PAGE, "http://h/", None) for _ in range(4)))


async def test_other_pages_are_parsed_while_one_lane_is_stuck(parser: Parser) -> None:
    stuck = asyncio.create_task(parser.links(nested_divs(100_000), "http://h/", None))
    t0 = time.monotonic()
    for _ in range(20):
        assert await parser.links(PAGE, "http://h/", None)
    assert time.monotonic() - t0 < 1.5 and not stuck.done()
    with pytest.raises(ParseFailed):
        await stuck


async def test_a_lane_that_dies_fails_its_page_only(parser: Parser) -> None:
    victim = asyncio.create_task(parser.links(nested_divs(100_000), "http://h/", None))
    await until_busy(parser)
    os.kill(busy(parser)[0], signal.SIGKILL)
    with pytest.raises(ParseFailed, match="process died"):
        await victim
    assert await parser.links(PAGE, "http://h/", None)


async def test_a_10_mib_page_never_blocks_the_event_loop_for_a_guard_band() -> None:
    body = b"".join(b'<a href="/p/%d">x</a>' % i for i in range(500_000))[:10 << 20]
    async with Parser(timeout=60, lanes=1) as parser:
        for _ in range(2):  # the first page with a fresh lane, the second with a used one
            task = asyncio.create_task(parser.links(body, "http://h/", None))
            worst = 0.0
            while not task.done():
                t = time.perf_counter()
                await asyncio.sleep(0)
                worst = max(worst, time.perf_counter() - t)
            assert len(await task) > 400_000
            assert worst < guard_band(0.5), f"the event loop was blocked for {worst * 1e3:.0f} ms"


async def test_lanes_stop_with_the_parser() -> None:
    async with Parser(timeout=2.0, lanes=2) as p:
        pids = lanes(p)
        stuck = asyncio.create_task(p.links(nested_divs(100_000), "http://h/", None))
        await until_busy(p)
    assert not any(alive(pid) for pid in pids)
    with pytest.raises(ParseFailed):
        await stuck


def busy(parser: Parser) -> list[int]:
    idle = list(parser._idle._queue)  # type: ignore[attr-defined]
    return [lane.process.pid for lane in parser._all if lane not in idle]


async def until_busy(parser: Parser) -> None:
    await until(lambda: bool(busy(parser)), "a lane took the page")


async def until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.01)


def lanes(parser: Parser) -> set[int]:
    return {lane.process.pid for lane in parser._all}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_lane_that_cannot_start_fails_the_start_not_every_page(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("worker.parse.sys.executable", "/bin/false")
    with pytest.raises(OSError, match="did not start"):
        async with Parser(timeout=2.0, lanes=1):
            pass
