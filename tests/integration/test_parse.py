"""The worker's HTML parser lanes (worker/extractors/lanes.py): real child processes, real pathological HTML.

The lanes' own tests set ``inline_bytes=0`` (every page in a lane); the small pages parsed on the
event loop have theirs at the end."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable

import pytest

from shared.mime import guess_mime
from worker.extractors.lanes import (
    CHUNK,
    INLINE_BYTES,
    INLINE_TAGS,
    LANE_FUNCTIONS,
    NoLane,
    ParseFailed,
    Parser,
    _Lane,
)
from worker.extractors.links_html import extract_links

PAGE = b'<a href="a.html">a</a> <img src="i.png"> <a href="/b/?y=2&x=1#f">b</a>'


def nested_divs(depth: int) -> bytes:
    return b"<div>" * depth + b'<a href="/deep">x</a>' + b"</div>" * depth


@pytest.fixture
async def parser() -> AsyncIterator[Parser]:
    async with Parser(timeout=2.0, lanes=2, inline_bytes=0) as p:
        yield p


async def test_links_are_those_of_extract_links_with_their_types(parser: Parser) -> None:
    expected = sorted((u, guess_mime(u)) for u in extract_links(PAGE, "http://h/d/p.html"))
    assert await parser.links(PAGE, "http://h/d/p.html", None) == expected
    assert ("http://h/d/i.png", "image/png") in expected and len(expected) == 3


async def test_a_lane_runs_its_functions_by_name(parser: Parser) -> None:
    # Other extractors' parsing runs in the same lanes, by name (LANE_FUNCTIONS); a name the
    # lane does not have fails the page, and the lane serves the next one.
    assert await parser.run("links", PAGE, "http://h/", None) == await parser.links(
        PAGE, "http://h/", None)
    with pytest.raises(ParseFailed, match="KeyError: 'nope'"):
        await parser.run("nope", PAGE, "http://h/", None)
    assert await parser.links(PAGE, "http://h/", None)


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


async def test_other_pages_are_parsed_while_one_lane_is_stuck() -> None:
    # The stuck page takes about 30 s and may take 60: every other page is parsed meanwhile by
    # the other lane, however slow the machine is today.
    async with Parser(timeout=60.0, lanes=2, inline_bytes=0) as parser:
        stuck = asyncio.create_task(parser.links(nested_divs(100_000), "http://h/", None))
        await until_busy(parser)
        for _ in range(20):
            assert await parser.links(PAGE, "http://h/", None)
        assert not stuck.done()
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck


async def test_a_lane_that_dies_fails_its_page_only(parser: Parser) -> None:
    victim = asyncio.create_task(parser.links(nested_divs(100_000), "http://h/", None))
    await until_busy(parser)
    os.kill(busy(parser)[0], signal.SIGKILL)
    with pytest.raises(ParseFailed, match="process died"):
        await victim
    assert await parser.links(PAGE, "http://h/", None)


async def test_a_10_mib_page_never_blocks_the_event_loop() -> None:
    # Parsed on the event loop, the page would hold it until done: nothing else would run. Here
    # the loop runs other tasks throughout, between every two pieces of the page written to
    # its lane (a pipe takes 64 KiB at a time) and of its links read back (CHUNK at a time).
    # How long a piece takes is for the benchmarks, not a timed test on a loaded machine.
    body = b"".join(b'<a href="/p/%d">x</a>' % i for i in range(500_000))[:10 << 20]
    async with Parser(timeout=60, lanes=1, inline_bytes=0) as parser:
        for _ in range(2):  # the first page with a fresh lane, the second with a used one
            task = asyncio.create_task(parser.links(body, "http://h/", None))
            turns = 0
            while not task.done():
                await asyncio.sleep(0)
                turns += 1
            links = await task
            assert len(links) > 400_000
            assert turns > len(body) >> 16 and turns > len(links) // CHUNK, turns


async def test_lanes_stop_with_the_parser() -> None:
    async with Parser(timeout=2.0, lanes=2, inline_bytes=0) as p:
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
    monkeypatch.setattr("worker.extractors.lanes.sys.executable", "/bin/false")
    with pytest.raises(OSError, match="did not start"):
        async with Parser(timeout=2.0, lanes=1, inline_bytes=0):
            pass


async def test_a_page_does_not_wait_forever_when_no_lane_can_be_had(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The only lane dies and its replacement fails with something other than OSError (a bug,
    # say): a page asking for a lane gives up at the lane deadline (to be tried again later,
    # not failed for good), and the replacement is tried again until a lane starts.
    real_start = _Lane.start
    starts = 0

    async def broken(*_: object) -> _Lane:  # as _Lane.start(memory)
        nonlocal starts
        starts += 1
        raise RuntimeError("cannot start")

    async with Parser(timeout=2.0, lanes=1, lane_wait=0.5, inline_bytes=0) as parser:
        monkeypatch.setattr(_Lane, "start", broken)
        os.kill(next(iter(lanes(parser))), signal.SIGKILL)
        with pytest.raises(ParseFailed, match="process died"):
            await parser.links(PAGE, "http://h/", None)
        with pytest.raises(NoLane):
            await asyncio.wait_for(parser.links(PAGE, "http://h/", None), 5)
        await until(lambda: starts >= 2, "the replacement tried again")
        monkeypatch.setattr(_Lane, "start", real_start)
        await until(lambda: len(lanes(parser)) == 1, "a lane started", timeout=15)
        assert await parser.links(PAGE, "http://h/", None)


async def test_lanes_die_with_a_worker_killed_outright() -> None:
    # No preexec_fn (unsafe once the worker has threads): each lane asks for SIGKILL itself.
    # Busy lanes: an idle one would end anyway, at the end of its input.
    script = ("import asyncio, sys\n"
              "from worker.extractors.lanes import Parser\n"
              "async def main():\n"
              "    async with Parser(timeout=60.0, lanes=2, inline_bytes=0) as p:\n"
              "        deep = b'<div>' * 100_000 + b'</div>' * 100_000  # 30 s of parsing\n"
              "        busy = [asyncio.create_task(p.links(deep, 'http://h/', None))\n"
              "                for _ in range(2)]\n"
              "        while not p._idle.empty(): await asyncio.sleep(0.01)\n"
              "        print(*(lane.process.pid for lane in p._all), flush=True)\n"
              "        await asyncio.gather(*busy)\n"
              "asyncio.run(main())\n")
    worker = await asyncio.create_subprocess_exec(sys.executable, "-c", script,
                                                  stdout=asyncio.subprocess.PIPE)
    assert worker.stdout is not None
    pids = [int(p) for p in (await asyncio.wait_for(worker.stdout.readline(), 30)).split()]
    assert len(pids) == 2 and all(alive(p) for p in pids)
    worker.kill()
    await worker.wait()
    await until(lambda: not any(alive(p) for p in pids), "the lanes died with the worker")


# Small pages: their links extracted on the event loop, not in a lane.

def padded(page: bytes, size: int) -> bytes:
    """``page`` with a comment making it ``size`` bytes long (the same links)."""
    return page + b"<!--" + b"x" * (size - len(page) - 7) + b"-->"


async def test_a_small_page_has_the_same_links_on_the_loop_as_in_a_lane() -> None:
    pages = [PAGE, padded(PAGE, INLINE_BYTES), nested_divs(INLINE_TAGS // 2 - 1),
             b'<base href="/x/"><a href="y#z">y</a><img srcset="a.png 1x, b.png 2x">', b""]
    assert len(pages[1]) == INLINE_BYTES and pages[2].count(b"<") == INLINE_TAGS  # at the limits
    async with Parser(timeout=5.0, lanes=1, inline_bytes=0) as in_lane:
        expected = [await in_lane.links(p, "http://h/d/p.html", None, keep) for p in pages
                    for keep in (False, True)]
    async with Parser(timeout=60.0, lanes=1) as parser:
        # The only lane is busy for 30 s: a page that needs it would wait for it.
        stuck = asyncio.create_task(parser.links(nested_divs(100_000), "http://h/", None))
        await until_busy(parser)
        on_loop = [await asyncio.wait_for(parser.links(p, "http://h/d/p.html", None, keep), 1)
                   for p in pages for keep in (False, True)]
        assert on_loop == expected and ("http://h/x/y#z", "text/html") in on_loop[7]
        # One byte or one tag more, or a rule set's function (a regex may backtrack for ever
        # on any input): the page waits for the busy lane.
        for page, function in ((padded(PAGE, INLINE_BYTES + 1), "links"),
                               (nested_divs(INLINE_TAGS // 2), "links#"),
                               (PAGE, "follow")):
            waiting = asyncio.create_task(parser.run(function, page, "http://h/", None, {}))
            await asyncio.sleep(0.2)
            assert not waiting.done(), (len(page), function)
            waiting.cancel()
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck


async def test_a_small_page_over_the_deadline_or_failing_fails_as_in_a_lane(
        monkeypatch: pytest.MonkeyPatch) -> None:
    deep = nested_divs(INLINE_TAGS // 2 - 1)  # about a millisecond of parsing, on the loop
    async with Parser(timeout=1e-6, lanes=1) as parser:
        with pytest.raises(ParseFailed, match=r"parsing took longer than 1e-06s"):
            await parser.links(deep, "http://h/", None)

    def broken(*_: object) -> list[object]:
        raise ValueError("no")

    async with Parser(timeout=5.0, lanes=1) as parser:
        monkeypatch.setitem(LANE_FUNCTIONS, "links", broken)
        with pytest.raises(ParseFailed, match="the HTML parser failed: ValueError: no"):
            await parser.links(PAGE, "http://h/", None)
