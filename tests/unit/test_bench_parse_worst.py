"""bench/parse_worst.py: the corpus it times is of the largest pages still parsed on the loop."""

from __future__ import annotations

import pytest

from bench.parse_worst import _UNITS, corpus, largest
from worker.extractors.lanes import INLINE_BYTES, INLINE_TAGS


@pytest.mark.parametrize("unit", [b"<div>", b"<ul><li>", b" a=1", b"&amp;"])
@pytest.mark.parametrize("limit", [INLINE_BYTES, 4096])
def test_largest_is_the_last_page_under_both_limits(unit: bytes, limit: int) -> None:
    page = largest(lambda n: unit * n, limit)
    n = len(page) // len(unit)
    assert page == unit * n
    assert len(page) <= limit and page.count(b"<") <= INLINE_TAGS
    over = unit * (n + 1)
    assert len(over) > limit or over.count(b"<") > INLINE_TAGS


def test_the_corpus_has_every_shape_at_its_limit() -> None:
    pages = dict(corpus(INLINE_BYTES))
    assert len(pages) == len(_UNITS) + 4
    for name, body in pages.items():
        assert len(body) <= INLINE_BYTES and body.count(b"<") <= INLINE_TAGS, name
    # tag-bound shapes reach the tag limit, attribute shapes the byte limit with one tag
    assert pages["<div>"].count(b"<") == INLINE_TAGS
    attributes = pages["one tag, attributes <n>"]
    assert attributes.count(b"<") == 1 and len(attributes) > INLINE_BYTES - 8
