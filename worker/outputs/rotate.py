"""Append-only files for outputs that pack many pages into one file (WARC, tar).

An ``Appender`` writes whole records into a file it created itself (``O_CREAT | O_EXCL``, so
an earlier run's file, or another process's, is never opened, let alone truncated), with
``O_APPEND`` and one ``os.write`` per record: a record is in the file whole or, if the worker
dies in the middle of that one call, cut short at the very end only, never interleaved with
another. The file is rotated (fsynced, closed, the next serial opened with its own header) once
it has reached ``max_size``. Compression happens before ``append`` (in a thread: the caller's
business), so each record is its own gzip or bzip2 member whose offset and length are known.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

_INLINE = 256 * 1024  # records up to this size are written on the event loop (microseconds)
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)


class Appender:
    """Records appended to ``dir/name(serial)``, a new file every ``max_size`` bytes.

    ``header(file_name)`` is written first into each new file (a ``warcinfo`` record), and
    ``footer`` last, when the file is rotated or closed (tar's end-of-archive blocks). Files are
    reported relative to ``root`` (default ``dir``). Opened lazily, at the first ``append``."""

    def __init__(self, dir: Path, name: Callable[[int], str], max_size: int,
                 header: Callable[[str], bytes] | None = None, footer: bytes = b"",
                 root: Path | None = None) -> None:
        self.dir = dir
        self.name = name
        self.max_size = max_size
        self.header = header
        self.footer = footer
        self.root = root if root is not None else dir
        self.serial = 0
        self.file: str | None = None  # relative to root, while one is open
        self.size = 0
        self.files: list[str] = []    # every file opened, in order
        self._fd: int | None = None
        self._lock = asyncio.Lock()
        self._pending: asyncio.Future[None] | None = None  # a write in a thread

    async def append(self, blob: bytes) -> tuple[str, int]:
        """Append ``blob`` whole; returns (file relative to ``root``, offset of the blob)."""
        async with self._lock:
            await self._settle()
            if self._fd is not None and self.size >= self.max_size:
                await self._finish()
            if self._fd is None:
                await asyncio.to_thread(self._open)
            assert self._fd is not None and self.file is not None
            file, offset = self.file, self.size
            if len(blob) > _INLINE:  # a big record: the copy into the page cache in a thread
                # Cancelling us leaves the thread writing: the next append or close waits for
                # it (``_settle``) before it touches the file, never writes under it.
                self._pending = asyncio.ensure_future(asyncio.to_thread(self._write, blob))
                try:
                    await asyncio.shield(self._pending)
                except asyncio.CancelledError:
                    raise  # still writing: kept for _settle
                except BaseException:
                    self._pending = None
                    raise
                self._pending = None
            else:
                self._write(blob)
            return file, offset

    async def close(self) -> None:
        """Write the footer, fsync and close the open file, if any. A later ``append`` opens a
        new file (never reopens this one)."""
        async with self._lock:
            await self._settle()
            if self._fd is not None:
                await self._finish()

    @property
    def busy(self) -> bool:
        """A write is in flight (an ``append`` holds the file, or a cancelled one's thread
        still writes)."""
        return self._lock.locked() or self._pending is not None

    async def _settle(self) -> None:
        """Wait for the write of a cancelled ``append`` that its thread is still making."""
        pending = self._pending
        if pending is not None:
            try:
                await asyncio.shield(pending)
            except Exception:  # that append's caller is gone; its record may be cut short
                log.exception("a cancelled write to %s failed", self.file)
            self._pending = None

    def _write(self, blob: bytes) -> None:
        assert self._fd is not None
        view = memoryview(blob)
        while view:  # a regular file takes it in one call; the loop is for the odd short write
            n = os.write(self._fd, view)
            view = view[n:]
        self.size += len(blob)

    def _open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        while True:
            name = self.name(self.serial)
            path = self.dir / name
            try:
                fd = os.open(path, _FLAGS, 0o644)
            except FileExistsError:  # the same name this millisecond: take the next serial
                self.serial += 1
                continue
            break
        self._fd = fd
        self.size = 0
        self.file = os.path.relpath(path, self.root)
        self.files.append(self.file)
        if self.header is not None:
            self._write(self.header(name))

    async def _finish(self) -> None:
        fd = self._fd
        assert fd is not None
        if self.footer:
            self._write(self.footer)
        self._fd = None
        self.file = None
        self.serial += 1
        await asyncio.to_thread(_sync_close, fd)


def _sync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
