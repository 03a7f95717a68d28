"""Undoing Content-Encoding ourselves, so a fetcher keeps a response's bytes as received next to
its decoded body, and the body cap holds on the decoded bytes (a compression bomb stops at it).

Encodings: identity, gzip (also x-gzip), deflate (zlib-wrapped, or raw as browsers accept), br
(when ``brotli`` or ``brotlicffi`` is installed), and any stack of them ("gzip, br" is undone br
first). Concatenated gzip or deflate members decode as one body, as aiohttp decodes them.
"""

from __future__ import annotations

import importlib
import zlib
from typing import Any, Protocol

import aiohttp

from shared.errors import HarvesterError

_STEP = 65536  # largest piece handed to a decoder at once, and read from the network


class BodyTooLarge(HarvesterError):
    """A body grew past the byte cap: as received, or once decoded. A fetch that meets it has
    failed for good (the same request gets the same body)."""

    def __init__(self, cap: int, size: int | None = None) -> None:
        of = "" if size is None else f" of {size} bytes"
        super().__init__(f"body{of} exceeds the {cap}-byte limit")
        self.cap = cap
        self.size = size  # the announced Content-Length, when that alone decided


class DecodeError(HarvesterError):
    """A body is not what its Content-Encoding says: corrupt, truncated, or followed by bytes
    that are no further member. The server sent it so; a fetch that meets it has failed."""

    def __init__(self, encoding: str, problem: str) -> None:
        super().__init__(f"cannot decode Content-Encoding {encoding}: {problem}")
        self.encoding = encoding
        self.problem = problem


class UnsupportedEncoding(DecodeError):
    """A Content-Encoding this worker cannot undo (raised by ``Decoder()``, before any byte)."""

    def __init__(self, encoding: str, hint: str = "") -> None:
        super().__init__(encoding, f"unsupported{hint}")


def _load_brotli() -> Any:
    """The brotli module aiohttp would use, if it can bound its output (``output_buffer_limit``,
    Brotli >= 1.2): without that bound one chunk of a bomb could fill memory."""
    for name in ("brotlicffi", "brotli"):
        try:
            module = importlib.import_module(name)
            module.Decompressor().process(b"", output_buffer_limit=1)
        except (ImportError, TypeError, AttributeError):
            continue
        return module
    return None


_brotli = _load_brotli()


class _Stage(Protocol):
    def decode(self, data: bytes, room: int) -> bytes:
        """Decode all of ``data`` and return at most ``room`` bytes; returning ``room`` bytes may
        leave output behind, and the caller then stops (the cap was crossed)."""

    def finish(self) -> None:
        """Raise DecodeError if the stream stopped before its end."""


class _Inflate:
    """A gzip or deflate stream, and the members concatenated after it."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else None  # deflate: sniffed
        self._member: Any = None  # zlib's Decompress type is not importable for annotations

    def decode(self, data: bytes, room: int) -> bytes:
        parts: list[bytes] = []
        view = memoryview(data)
        pos = 0
        window = 64  # a new member gets small pieces: its end copies what follows it
        while pos < len(view) and room > 0:
            if self._member is None or self._member.eof:
                self._member = zlib.decompressobj(self._member_wbits(view[pos]))
                window = 64
            end = min(pos + window, len(view))
            try:
                out = self._member.decompress(view[pos:end], room)
            except zlib.error as e:
                raise DecodeError(self.encoding, str(e)) from e
            parts.append(out)
            room -= len(out)
            pos = end - len(self._member.unused_data) if self._member.eof else end
            window = min(window * 2, _STEP)
        return b"".join(parts)

    def _member_wbits(self, first: int) -> int:
        if self._wbits is None:
            # RFC 1950 header: CM (low nibble) 8 is zlib-wrapped; else raw deflate (as aiohttp)
            self._wbits = zlib.MAX_WBITS if first & 0x0F == 8 else -zlib.MAX_WBITS
        return self._wbits

    def finish(self) -> None:
        if self._member is not None and not self._member.eof:
            raise DecodeError(self.encoding, "truncated")


class _Unbrotli:
    """A br stream; brotli's output limit is a hint it overshoots, so the steps are small."""

    encoding = "br"

    def __init__(self) -> None:
        self._stream = _brotli.Decompressor()
        self._fed = False

    def decode(self, data: bytes, room: int) -> bytes:
        if not data:
            return b""
        self._fed = True
        parts: list[bytes] = []
        size = 0
        try:
            while size < room:
                limit = min(room - size, _STEP)
                out = bytes(self._stream.process(data, output_buffer_limit=limit))
                parts.append(out)
                size += len(out)
                # Short of the limit, it stopped for want of input (or at the end); at the
                # limit, more output may wait. can_accept_more_data says input, not output.
                if (len(out) < limit and self._stream.can_accept_more_data()) or not (out or data):
                    break
                data = b""
        except _brotli.error as e:
            raise DecodeError(self.encoding, str(e)) from e
        return b"".join(parts)[:room]

    def finish(self) -> None:
        if self._fed and not self._stream.is_finished():
            raise DecodeError(self.encoding, "truncated")


def _stages(content_encoding: str | None) -> list[_Stage]:
    """The decoders for a Content-Encoding value, in the order they run (the reverse of the
    order the encodings were applied in)."""
    stages: list[_Stage] = []
    for token in reversed((content_encoding or "").split(",")):
        name = token.strip().lower()
        if name in ("", "identity"):
            continue
        if name in ("gzip", "x-gzip", "deflate"):
            stages.append(_Inflate("deflate" if name == "deflate" else "gzip"))
        elif name == "br":
            if _brotli is None:
                raise UnsupportedEncoding(name, " (install Brotli >= 1.2)")
            stages.append(_Unbrotli())
        else:
            raise UnsupportedEncoding(name)
    return stages


class Decoder:
    """Undoes a Content-Encoding chunk by chunk. ``feed`` raises BodyTooLarge as soon as the
    decoded total passes ``cap`` (having decoded at most ``cap + 1`` bytes), DecodeError on a
    body that is not what the header says; ``finish`` raises DecodeError on a truncated one.
    Without an encoding, ``feed`` returns the very chunk it was given."""

    def __init__(self, content_encoding: str | None, cap: int) -> None:
        self.cap = cap
        self._plain = 0  # bytes passed through, without an encoding
        self._stages = _stages(content_encoding)
        # What compressed data expands to is never much more than the data: a middle stage
        # (a stacked encoding) may exceed the cap by that much, and no more.
        self._limits = [cap + cap // 64 + 1024] * (len(self._stages) - 1) + [cap]
        self._made = [0] * len(self._stages)

    @property
    def produced(self) -> int:
        """Decoded bytes so far, the last piece past the cap included."""
        return self._made[-1] if self._stages else self._plain

    @property
    def encoded(self) -> bool:
        """Whether there is an encoding to undo (else the body is the bytes as received)."""
        return bool(self._stages)

    def feed(self, chunk: bytes) -> bytes:
        data = chunk
        for i, stage in enumerate(self._stages):
            if not data:
                return b""
            data = stage.decode(data, self._limits[i] - self._made[i] + 1)
            self._made[i] += len(data)
            if self._made[i] > self._limits[i]:
                raise BodyTooLarge(self.cap)
        if not self._stages:
            self._plain += len(data)
            if self._plain > self.cap:
                raise BodyTooLarge(self.cap)
        return data

    def finish(self) -> bytes:
        """What is left of the body: nothing, as each ``feed`` drains its decoders; raises
        DecodeError if the body stopped before its encoding's end."""
        for stage in self._stages:
            stage.finish()
        return b""


def content_encoding(resp: aiohttp.ClientResponse) -> str:
    """The response's Content-Encoding, its repeated header lines joined (RFC 9110 5.3)."""
    return ", ".join(resp.headers.getall("Content-Encoding", ()))


async def read_raw(resp: aiohttp.ClientResponse, cap: int) -> tuple[bytes, bytes]:
    """The body of a response requested with ``auto_decompress=False``, as received and
    decoded: ``(raw, body)``, the same object twice when there is no encoding. The cap holds on
    both. Raises BodyTooLarge, DecodeError (UnsupportedEncoding before reading), and what
    aiohttp raises while reading. ``resp.raw_headers`` keeps the header lines' names, case,
    order and repeats, and their values without surrounding spaces."""
    decoder = Decoder(content_encoding(resp), cap)
    if resp.content_length is not None and resp.content_length > cap:
        raise BodyTooLarge(cap, resp.content_length)
    raw: list[bytes] = []
    body: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(_STEP):
        size += len(chunk)
        if size > cap:
            raise BodyTooLarge(cap)
        raw.append(chunk)
        if decoder.encoded:
            body.append(decoder.feed(chunk))
    body.append(decoder.finish())
    whole = b"".join(raw)
    return (whole, b"".join(body)) if decoder.encoded else (whole, whole)
