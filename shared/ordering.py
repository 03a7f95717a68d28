"""Queue orders: the rank of a pending visit (``job_pending.rank``), lowest claimed first
within a (host, job).

``rank`` is SQL's ``harvester_rank(order, level, priority, seq)`` (migration 0019), one formula
for every writer, ``seq`` from the sequence ``job_pending_seq`` (insertion order): ``fifo``
``seq``; ``lifo`` ``-seq``; ``priority`` ``(-priority << 40) + seq`` (higher first, ties FIFO);
``bfs`` ``(level << 40) + seq`` (a level before the next, FIFO within one). :func:`rank` is the
same in Python, for tests and docs. A URL's priority is :func:`url_priority` of the job's
``priorities`` (first match, else 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from shared import patterns
from shared.patterns import Regex

ORDERS = ("bfs", "fifo", "lifo", "priority")
DEFAULT_ORDER = "bfs"
SEQ_BITS = 40


def rank(order: str, level: int, priority: int, seq: int) -> int:
    """``harvester_rank`` in Python."""
    if order == "fifo":
        return seq
    if order == "lifo":
        return -seq
    if order == "priority":
        return (-priority << SEQ_BITS) + seq
    return (level << SEQ_BITS) + seq


def compile_rules(rules: Iterable[Mapping[str, Any]] | None) -> tuple[tuple[Regex, int], ...]:
    """A job's ``priorities`` (stored: ``{"pattern", "priority"}`` each), compiled (RE2,
    ``shared.patterns``); a stored pattern RE2 refuses is left out (it matches nothing)."""
    return tuple((rx, int(r["priority"])) for r in rules or ()
                 if (rx := patterns.stored(r["pattern"])) is not None)


def url_priority(rules: Sequence[tuple[Regex, int]], url: str) -> int:
    """The priority of a URL: that of the first rule whose pattern is found in it, else 0."""
    for pattern, priority in rules:
        if pattern.search(url):
            return priority
    return 0
