"""Link extraction off the event loop (but for small pages), under a deadline.

HTML parsing is super-linear in nesting depth (lexbor: 30,000 nested ``<div>``s take about 2 s,
300,000 about 4 minutes; 15 KB of ``<b id=n><p>x`` 0.2 s) and even a well-formed 10 MiB page takes
longer than the host gate's guard band. So a worker parses its pages in a few child processes
("lanes", ``python -m worker.extractors.lanes``), one page at a time each. A lane that overruns the deadline
is killed and replaced: one pathological page costs at most the deadline on one lane, never the
event loop, and it fails with a reason instead of coming back to every worker. (A thread would
keep the loop responsive, as lexbor releases the GIL while it parses, but could not be stopped.)

Small pages are the exception: a page's links (not the rule sets' functions, whose regexes can
backtrack for ever on any input) are extracted on the event loop when the body is at most
``inline_bytes`` (``parseInlineBytes``, 32 KiB by default; 0: every page in a lane) and has at
most ``INLINE_TAGS`` ``<``. The lane's round trip (the body down a pipe, the lane and the worker
woken, the links pickled back) costs ~0.1 ms of CPU a page on top of the extraction's ~0.17 on
the bench's pages (in a crawl: CPU −15 %, the workers' −0.27 ms a page: bench/RESULTS.md), and
such a page's parse tree takes a few MB at most (no ``parseMemory`` cap needed). Bounded so, the
worst input found holds the loop for about 75 ms (one tag with ~6,500 attributes in 32 KB:
lexbor checks each attribute against the tag's others; nesting, the other quadratic shape, is
cut by the tag count: 1,000 nested ``<ul><li>`` take ~5 ms), against 0.1–1 ms for an ordinary
page: ``python -m bench.parse_worst`` searches a corpus for the slowest. Such a page costs the
same CPU in a lane; on the loop it delays the worker's other visits by that much, no more (a
lane's deadline is for the pages that could take seconds). It meets the deadline as a lane's
page does: one that took longer fails the same way.

Frames on the pipes are a 4-byte length and a pickle: a page's (function name, base URL,
encoding, body length, args) followed by the body in; the function's results in chunks, then an
end mark, or an error, out. The functions a lane runs are ``LANE_FUNCTIONS``, by name: the links
(``links#``: keeping their fragments), and the rule sets' follow rules, ids and items
(``worker.extractors.rules_core``: regexes, CSS, XPath), whose ``args`` are their rules as JSON.
A regex that backtracks for ever is thus stopped by the deadline like a pathological page.
A lane's address space is capped (``parseMemory``, ``RLIMIT_AS``): a page that needs more fails
(a MemoryError, or the lane dies and is replaced) instead of taking the machine's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import pickle
import resource
import signal
import struct
import sys
import time
from collections.abc import Callable
from typing import IO, Any, Self

from shared.heap import keep_heap
from shared.mime import guess_mime
from worker.extractors import ExtractFailed, ExtractLater, rules_core
from worker.extractors.links_html import extract_links

log = logging.getLogger(__name__)

Links = list[tuple[str, str]]  # (canonical URL, guessed MIME type), sorted by URL
LANES = max(2, min(4, os.cpu_count() or 2))
CHUNK = 10_000  # results (links) per frame: the loop never spends long unpickling one
READY = b"harvester-parse ready\n"  # a lane's first words, once its imports are done
START_TIMEOUT = 60.0
LANE_WAIT = 120.0  # a page waits at most this long for a free lane, then is tried again later
INLINE_BYTES = 32 << 10  # a body at most this long (``parseInlineBytes``) ...
INLINE_TAGS = 2_000  # ... with at most this many "<" has its links extracted on the loop
_LENGTH = struct.Struct(">I")


class ParseFailed(ExtractFailed):
    """No links could be extracted from a page (too slow, or the parser failed). Permanent: the
    same page would fail the same way again."""


class NoLane(ExtractLater):
    """No lane was free within the lane deadline (all busy, or none could be started): not the
    page's fault; it may be parsed later."""


class Parser:
    """Extracts the links of HTML pages in ``lanes`` child processes, each page within
    ``timeout`` seconds, after waiting at most ``lane_wait`` seconds for a free lane, each lane
    within ``memory`` bytes of address space (``parseMemory``; 0: no cap); the links of a page
    of at most ``inline_bytes`` and ``INLINE_TAGS`` tags on the event loop instead (see the
    module); an async context manager (the lanes are stopped on exit)."""

    def __init__(self, timeout: float, lanes: int = LANES, lane_wait: float = LANE_WAIT,
                 memory: int = 0, inline_bytes: int = INLINE_BYTES) -> None:
        self.timeout = timeout
        self.lane_wait = lane_wait
        self.memory = memory
        self.inline_bytes = inline_bytes
        self._lanes = lanes
        self._idle: asyncio.Queue[_Lane] = asyncio.Queue()
        self._all: set[_Lane] = set()
        self._replacing: set[asyncio.Task[None]] = set()
        self._closed = False

    async def __aenter__(self) -> Self:
        started = await asyncio.gather(*(self._start() for _ in range(self._lanes)),
                                       return_exceptions=True)
        for lane in started:
            if isinstance(lane, BaseException):
                await self.__aexit__()
                raise lane
            self._idle.put_nowait(lane)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closed = True
        for task in self._replacing:
            task.cancel()
        await asyncio.gather(*self._replacing, return_exceptions=True)
        await asyncio.gather(*(lane.stop() for lane in self._all), return_exceptions=True)
        self._all.clear()

    async def _start(self) -> _Lane:
        lane = await _Lane.start(self.memory)
        self._all.add(lane)
        return lane

    async def links(self, body: bytes, base_url: str, encoding: str | None,
                    keep_fragments: bool = False) -> Links:
        """The page's links with their guessed types (``worker.extractors.links_html.extract_links``); raises
        ParseFailed when that takes longer than the deadline or the parser fails, NoLane when
        no lane is free within ``lane_wait``. ``keep_fragments``: each keeps its fragment (a
        job's ``fingerprint.keepFragment``)."""
        return await self.run("links#" if keep_fragments else "links", body, base_url, encoding)

    async def run(self, function: str, body: bytes, base_url: str, encoding: str | None,
                  args: Any = None) -> list[Any]:
        """The results of ``LANE_FUNCTIONS[function]`` on a page (with ``args``, picklable),
        as ``links`` says."""
        if function in _INLINE and fits_inline(body, self.inline_bytes):  # small: on the loop
            start = time.monotonic()
            results, error = _call(function, body, base_url, encoding, args)
            if time.monotonic() - start > self.timeout:
                raise self._too_slow()
        else:
            results, error = await self._in_lane(function, body, base_url, encoding, args)
        if error is not None:
            raise ParseFailed(f"the HTML parser failed: {error}")
        return results

    async def _in_lane(self, function: str, body: bytes, base_url: str, encoding: str | None,
                       args: Any) -> tuple[list[Any], str | None]:
        """``_Lane.call`` in a free lane, within the deadline; a lane that overran it, died or
        was cancelled is replaced."""
        try:
            async with asyncio.timeout(self.lane_wait):
                lane = await self._idle.get()
        except TimeoutError:
            raise NoLane(f"no HTML parser process free within {self.lane_wait:g}s "
                         f"({len(self._all)} running)") from None
        healthy = False
        try:
            async with asyncio.timeout(self.timeout):
                answer = await lane.call(function, body, base_url, encoding, args)
            healthy = True
        except TimeoutError:
            raise self._too_slow() from None
        except (EOFError, ConnectionError, asyncio.IncompleteReadError):
            raise ParseFailed("the HTML parser process died") from None
        finally:
            if healthy:
                self._idle.put_nowait(lane)
            else:  # still busy with the page (cancelled too), or dead: replace it
                self._all.discard(lane)
                with contextlib.suppress(ProcessLookupError):  # the parser's exit killed it
                    lane.process.kill()
                task = asyncio.create_task(self._replace(lane), name="HTML parser lane")
                self._replacing.add(task)
                task.add_done_callback(self._replacing.discard)
        return answer

    def _too_slow(self) -> ParseFailed:
        return ParseFailed(f"parsing took longer than {self.timeout:g}s")

    async def _replace(self, lane: _Lane) -> None:
        """Let a killed lane end, then start another; while none can be started (out of
        memory? a bug?), try again after 1 s, doubling up to 30 s: pages wait for the other
        lanes (at most ``lane_wait``). Only cancellation (the parser closing) ends it early."""
        with contextlib.suppress(Exception):  # the lane is killed: a failure to reap it is moot
            await lane.stop()
        pause = 1.0
        while not self._closed:
            try:
                self._idle.put_nowait(await self._start())
                return
            except Exception as e:  # whatever it is, the lane must come back
                log.error("cannot start an HTML parser process (%s); %d running, trying again "
                          "in %gs", e, len(self._all), pause, exc_info=not isinstance(e, OSError))
                await asyncio.sleep(pause)
                pause = min(2 * pause, 30.0)


class _Lane:
    """One child process and the pipes to it."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, memory: int = 0) -> _Lane:
        """Start a lane (its address space capped at ``memory`` bytes, 0: not) and wait until it
        is ready (its imports done); OSError if it is not within ``START_TIMEOUT``, rather than
        failing every page sent to it later."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker.extractors.lanes", str(os.getpid()), str(memory),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True)  # no terminal signals: the worker decides when it stops
        lane = cls(process)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                assert process.stdout is not None
                ready = await process.stdout.readexactly(len(READY))
        except (TimeoutError, asyncio.IncompleteReadError):
            ready = b""
        except BaseException:  # cancelled (the parser is closing): leave no process behind
            await lane.stop()
            raise
        if ready != READY:
            await lane.stop()
            raise OSError(f"the HTML parser process did not start (exit status "
                          f"{process.returncode})")
        return lane

    async def call(self, function: str, body: bytes, base_url: str, encoding: str | None,
                   args: Any = None) -> tuple[list[Any], str | None]:
        """Send a page; the function's results, or what it raised."""
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(_frame((function, base_url, encoding, len(body), args)))
        stdin.write(body)  # as it is: no pickled copy of up to 10 MiB on the event loop
        await stdin.drain()
        results: list[Any] = []
        while True:
            size = _LENGTH.unpack(await stdout.readexactly(_LENGTH.size))[0]
            kind, value = pickle.loads(await stdout.readexactly(size))
            if kind == "part":
                results += value
            else:
                return results, value if kind == "error" else None

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()


def _frame(value: Any) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def serve(reader: IO[bytes], writer: IO[bytes]) -> None:
    """A lane's loop (in the child): a page in, its results out, until the pipe closes."""
    writer.write(READY)
    writer.flush()
    while head := reader.read(_LENGTH.size):
        function, base_url, encoding, size, args = pickle.loads(
            reader.read(_LENGTH.unpack(head)[0]))
        body = reader.read(size)
        found, error = _call(function, body, base_url, encoding, args)
        if error is not None:
            writer.write(_frame(("error", error)))
        else:
            for i in range(0, len(found), CHUNK):
                writer.write(_frame(("part", found[i:i + CHUNK])))
            writer.write(_frame(("end", None)))
        writer.flush()


def fits_inline(body: bytes, inline_bytes: int) -> bool:
    """Whether a page is small enough for its links to be extracted on the event loop (at most
    ``inline_bytes`` and ``INLINE_TAGS`` "<": the module says why)."""
    return len(body) <= inline_bytes and body.count(b"<") <= INLINE_TAGS


def _call(function: str, body: bytes, base_url: str, encoding: str | None,
          args: Any) -> tuple[list[Any], str | None]:
    """``LANE_FUNCTIONS[function]`` on a page, in a lane or on the loop: its results, or what it
    raised (the worker fails the page with it)."""
    try:
        return LANE_FUNCTIONS[function](body, base_url, encoding, args), None
    except Exception as e:  # noqa: BLE001 - reported, the page fails
        return [], f"{type(e).__name__}: {e}"


def _links(body: bytes, base_url: str, encoding: str | None, args: Any,
           keep_fragments: bool = False) -> Links:
    # sorted here, off the worker's event loop: it stores them in that order
    return sorted((u, guess_mime(u))
                  for u in extract_links(body, base_url, encoding, keep_fragments))


LANE_FUNCTIONS: dict[str, Callable[[bytes, str, str | None, Any], list[Any]]] = {
    "links": _links, "links#": functools.partial(_links, keep_fragments=True),
    "follow": rules_core.follow, "items": rules_core.items}
_INLINE = frozenset({"links", "links#"})  # bounded by the page's size: may run on the loop


def die_with(parent: int) -> None:
    """In a lane: be killed when the worker dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``).
    Set here, in the child's own main thread, not in a ``preexec_fn``: that runs between fork
    and exec, unsafe once the worker has threads (the resolver's, ``to_thread``'s)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the worker died before the call: too late to be told
        os.kill(os.getpid(), signal.SIGKILL)


_PR_SET_PDEATHSIG = 1


def cap_memory(limit: int) -> None:
    """In a lane: at most ``limit`` bytes of address space (``RLIMIT_AS``; 0 leaves it). A page
    that needs more fails with a MemoryError, or kills its lane, which is replaced: either way
    the page fails, and the machine's memory is not the page's to take."""
    if limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        die_with(int(sys.argv[1]))
    keep_heap()  # a page's parse tree is freed and built again: keep the heap between them
    if len(sys.argv) > 2:
        cap_memory(int(sys.argv[2]))
    serve(sys.stdin.buffer, sys.stdout.buffer)
