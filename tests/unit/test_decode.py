"""Content decoding (worker/fetchers/decode.py ``Decoder``): each encoding fed in any chunking,
stacked encodings, the cap on decoded bytes, corrupt and truncated bodies, and compression bombs
that stop at the cap with bounded memory."""

from __future__ import annotations

import gzip
import random
import tracemalloc
import zlib
from collections.abc import Callable

import brotli
import pytest

from worker.fetchers.decode import BodyTooLarge, DecodeError, Decoder, UnsupportedEncoding

MiB = 1 << 20


def text(size: int, seed: int = 1) -> bytes:
    """HTML-ish bytes that compress about as well as a real page."""
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9)))
             for _ in range(2000)]
    out = bytearray()
    while len(out) < size:
        out += b"<p>" + b" ".join(rng.choices(words, k=12)) + b"</p>\n"
    return bytes(out[:size])


def page(size: int) -> bytes:
    """A page of repeated rows that compresses about 80 times, like a long listing."""
    block = text(20_000, seed=2)
    return (block * (size // len(block) + 1))[:size]


def deflate_raw(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "GZip": gzip.compress,
    "deflate": zlib.compress,
    "deflate-raw": deflate_raw,  # sent as "deflate": raw deflate, as browsers accept
    "br": brotli.compress,
    "identity": lambda data: data,
}
PLAIN = text(200_000)


def decode(encoding: str | None, body: bytes, step: int, cap: int = 10 * MiB) -> bytes:
    decoder = Decoder(encoding, cap)
    parts = [decoder.feed(body[i:i + step]) for i in range(0, len(body), step)]
    parts.append(decoder.finish())
    out = b"".join(parts)
    assert decoder.produced == len(out)
    return out


@pytest.mark.parametrize("step", [1, 65536])
@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_each_encoding_decodes_incrementally(name: str, step: int) -> None:
    body = ENCODERS[name](PLAIN)
    header = "deflate" if name == "deflate-raw" else name
    assert decode(header, body, step) == PLAIN


@pytest.mark.parametrize("header", [None, "", "identity", " Identity "])
def test_no_encoding_passes_the_very_chunks_through(header: str | None) -> None:
    decoder = Decoder(header, 10)
    chunk = b"0123456789"
    assert decoder.feed(chunk) is chunk and decoder.finish() == b""
    with pytest.raises(BodyTooLarge, match="body exceeds the 10-byte limit"):
        decoder.feed(b"x")


def test_the_cap_applies_to_decoded_bytes() -> None:
    big = gzip.compress(page(2 * MiB))
    assert len(big) < 64 * 1024  # the raw body is far under the cap: only decoding exceeds it
    with pytest.raises(BodyTooLarge, match=f"body exceeds the {MiB}-byte limit"):
        decode("gzip", big, 65536, cap=MiB)
    fits = page(900 * 1024)
    assert decode("gzip", gzip.compress(fits), 65536, cap=MiB) == fits
    exact = page(MiB)
    assert decode("gzip", gzip.compress(exact), 65536, cap=MiB) == exact


@pytest.mark.parametrize("step", [1, 65536])
def test_stacked_encodings_are_undone_last_first(step: int) -> None:
    small = PLAIN[:20_000] if step == 1 else PLAIN
    assert decode("gzip, br", brotli.compress(gzip.compress(small)), step) == small
    assert decode("deflate,gzip", gzip.compress(zlib.compress(small)), step) == small
    assert decode("br, identity, x-gzip", gzip.compress(brotli.compress(small)), step) == small


def test_stacked_encodings_in_the_wrong_order_fail() -> None:
    with pytest.raises(DecodeError, match="gzip"):
        decode("br, gzip", brotli.compress(gzip.compress(PLAIN)), 65536)


@pytest.mark.parametrize("step", [1, 65536])
def test_concatenated_gzip_members_decode_as_one_body(step: int) -> None:
    body = gzip.compress(b"first ") + gzip.compress(b"") + gzip.compress(PLAIN)
    assert decode("gzip", body, step) == b"first " + PLAIN


def test_a_corrupt_gzip_body_raises_decode_error() -> None:
    body = bytearray(gzip.compress(PLAIN))
    body[len(body) // 2:len(body) // 2 + 16] = bytes(16)
    with pytest.raises(DecodeError, match="Content-Encoding gzip") as caught:
        decode("gzip", bytes(body), 65536)
    assert caught.value.encoding == "gzip"


@pytest.mark.parametrize(("header", "body"), [
    ("gzip", b"this is no gzip at all"),
    ("deflate", b"\x78\x9cnot deflate either"),
    ("br", b"\xffnot brotli"),
    # mtime 0: the test's id holds these bytes, and every xdist worker must collect the same
    # ids (gzip's header otherwise carries the second it was made: a collection error)
    ("gzip", gzip.compress(b"one", mtime=0) + b"trailing garbage"),
])
def test_bodies_that_are_not_what_their_encoding_says_raise_decode_error(
        header: str, body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(header, body, 65536)


@pytest.mark.parametrize("header", ["gzip", "deflate", "br"])
def test_a_truncated_body_raises_decode_error_at_finish(header: str) -> None:
    body = ENCODERS[header](PLAIN)
    decoder = Decoder(header, 10 * MiB)
    decoder.feed(body[:len(body) // 2])
    with pytest.raises(DecodeError, match="truncated"):
        decoder.finish()


@pytest.mark.parametrize("header", ["gzip", "deflate", "br", "gzip, br"])
def test_an_empty_body_is_empty_whatever_its_encoding(header: str) -> None:
    assert decode(header, b"", 1) == b""  # HEAD, 204 and 304 answers carry the header alone


@pytest.mark.parametrize("header", ["compress", "zstd", "gzip, x-unknown"])
def test_an_unsupported_encoding_is_refused_before_any_byte(header: str) -> None:
    with pytest.raises(UnsupportedEncoding, match="unsupported") as caught:
        Decoder(header, MiB)
    assert isinstance(caught.value, DecodeError)


BOMBS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda data: gzip.compress(data, compresslevel=9),
    "deflate": lambda data: zlib.compress(data, 9),
    "br": brotli.compress,
    "gzip, br": lambda data: brotli.compress(gzip.compress(data, compresslevel=9)),
}


@pytest.mark.parametrize("header", sorted(BOMBS))
def test_a_bomb_stops_at_the_cap_with_bounded_memory(header: str) -> None:
    bomb = BOMBS[header](bytes(64 * MiB))  # 64 times the cap, in zeros
    assert len(bomb) < 300 * 1024
    decoder = Decoder(header, MiB)
    tracemalloc.start()
    try:
        with pytest.raises(BodyTooLarge):
            decoder.feed(bomb)  # in one piece: the decoder, not the chunking, holds it back
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert decoder.produced <= MiB + 1
    assert peak < 4 * MiB, peak
