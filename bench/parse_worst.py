"""How long a page may hold a worker's event loop: the worst inputs parsed there.

``python -m bench.parse_worst [--inline-bytes N] [--top K]``. A page of at most ``parseInlineBytes``
bytes and ``INLINE_TAGS`` ``<`` has its links extracted on the worker's event loop, not in a
parser lane (``worker/extractors/lanes.py``). lexbor's cost is super-linear in two shapes, the
nesting depth and the attributes of one tag; this grows each of a corpus of repeated units
(nesting, misnested formatting, tables, foreign content, attributes, entities, comments) to the
largest page still parsed on the loop, times the extraction (best of 3, the same function a
lane runs) and prints the slowest, and the bench's own pages for comparison. A timing, so a
benchmark, not a test: ``tests/integration/test_parse.py`` checks the limits themselves.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from worker.extractors.lanes import INLINE_BYTES, INLINE_TAGS, LANE_FUNCTIONS, fits_inline

_UNITS = [b"<div>", b"<ul><li>", b"<li><ol>", b"<dl><dt><dd>", b"<blockquote>", b"<span>",
          b"<b id=n><p>x", b"<table><b><tr><td>x", b"<a href=1><p><a href=2>",
          b"<svg><math><mi><svg><foreignObject>", b"<table>", b"<form><div>",
          b"<select><option>", b"<p><b><i><u><s><em>", b"<frameset>", b"<object>",
          b"<button><p>", b"<nobr>", b"<template>", b"<h1><h2>", b"<tr><td>", b"<td>", b"<svg>",
          b"<math>", b"<marquee>", b"<b><a href=/x><p>", b"<a href=/x>",
          b"<font color=1><table>", b"&amp;&#x41;&lt;", b"<!-- x -->",
          b'<a class="a b c d e f g h" href=/x>']


def largest(make: Callable[[int], bytes], inline_bytes: int) -> bytes:
    """``make(n)`` for the largest ``n`` whose page is still parsed on the loop."""
    lo, hi = 1, 2
    while fits_inline(make(hi), inline_bytes):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits_inline(make(mid), inline_bytes) else (lo, mid)
    return make(lo)


def parse_ms(body: bytes) -> float:
    links = LANE_FUNCTIONS["links"]
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        links(body, "http://h.example/", None, None)
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def corpus(inline_bytes: int) -> list[tuple[str, bytes]]:
    pages = [(unit.decode(), largest(lambda n, u=unit: u * n, inline_bytes)) for unit in _UNITS]
    for name, attribute in (("attributes a<n>", b" a%d"), ("attributes a<n>=1", b" a%d=1"),
                            ("attributes <n>", b" %d"), ("one attribute name", b" a")):
        pages.append((f"one tag, {name}", largest(
            lambda n, a=attribute: b"<a" + b"".join(a % i if b"%" in a else a
                                                   for i in range(n)) + b">", inline_bytes)))
    return pages


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.parse_worst", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inline-bytes", type=int, default=INLINE_BYTES,
                        help=f"parseInlineBytes ({INLINE_BYTES})")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    timed = sorted(((parse_ms(body), name, body) for name, body in corpus(args.inline_bytes)),
                   key=lambda t: -t[0])
    print(f"slowest pages parsed on the loop (at most {args.inline_bytes} bytes and "
          f"{INLINE_TAGS} '<'):")
    for ms, name, body in timed[:args.top]:
        print(f"{ms:8.2f} ms  {name:42s} {len(body):6d} bytes {body.count(b'<'):5d} '<'")
    typical = b"<html><head><title>t</title></head><body>" + b"".join(
        b'<p>Some text of a paragraph, <a href="/p/%d.html">a link</a> and more.</p>' % i
        for i in range(250)) + b"</body></html>"
    print(f"{parse_ms(typical):8.2f} ms  for comparison: 250 paragraphs with a link each "
          f"({len(typical)} bytes)")


if __name__ == "__main__":
    main()
