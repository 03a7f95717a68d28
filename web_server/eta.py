"""The ETA of a job, from its frontier's levels and its recent rate (pure: no I/O).

For each level ``l`` the job has ``visited_l`` visits (``job_visit``), ``pending_l`` of them not
processed yet (``job_pending``), so ``processed_l = visited_l - pending_l``. The observed
fan-out ``f_l = visited_{l+1} / processed_l`` is the new pages each processed page of level
``l`` brought (the dedup against pages seen already is in it). A level with nothing processed
yet uses the last observed fan-out (0 before any). A pending page of level ``l`` is expected to
bring ``1 + f_l + f_l*f_{l+1} + ...`` pages, the series ending at ``max_level`` (pages of
``max_level`` are fetched, not followed). The ETA is the expected remaining pages over the
pages per second of the last minute; unknown (None) at a rate of zero.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.db.progress import Level


def fanouts(levels: Sequence[Level], max_level: int) -> list[float]:
    """``f_l`` for l in 0..max_level-1: observed where level l has processed pages, else the
    last observed one (0.0 before any)."""
    by_level = {lv.level: lv for lv in levels}
    out: list[float] = []
    last = 0.0
    for lvl in range(max_level):
        here = by_level.get(lvl)
        processed = here.visited - here.pending if here else 0
        if processed > 0:
            below = by_level.get(lvl + 1)
            last = (below.visited if below else 0) / processed
        out.append(last)
    return out


EXTRAPOLATE = 8  # levels the estimate looks past the deepest level seen so far


def horizon(levels: Sequence[Level], max_level: int) -> int:
    """The deepest level the estimate reaches: the job's ``max_level``, but at most
    ``EXTRAPOLATE`` levels past the deepest seen so far. A job of unbounded depth (an id crawl,
    a follow-rule crawl: ``max_level`` 2**31 - 2) would otherwise be extrapolated over two
    billion levels, and the loops below would never end."""
    deepest = max((lv.level for lv in levels), default=0)
    return max(0, min(max_level, deepest + EXTRAPOLATE))


def remaining(levels: Sequence[Level], max_level: int, max_pages: int | None = None) -> float:
    """The expected pages still to process: the pending ones and what they will bring; with
    ``max_pages`` (the job's cap on visits), at most the visits the cap leaves."""
    max_level = horizon(levels, max_level)
    f = fanouts(levels, max_level)
    # expect[l]: the pages a pending page of level l is expected to bring, itself included.
    expect = [1.0] * (max_level + 1)
    for lvl in range(max_level - 1, -1, -1):
        expect[lvl] = 1.0 + f[lvl] * expect[lvl + 1]
    left = sum(lv.pending * expect[min(max(lv.level, 0), max_level)] for lv in levels
               if lv.pending > 0)
    if max_pages is not None:
        visited = sum(lv.visited for lv in levels)
        left = min(left, sum(lv.pending for lv in levels) + max(0, max_pages - visited))
    return left


def eta_seconds(remaining_pages: float, rate: float) -> float | None:
    """Seconds until the remaining pages are processed at ``rate`` pages/s; None when the rate
    is zero (or negative: no estimate), 0.0 when nothing remains."""
    if remaining_pages <= 0:
        return 0.0
    if rate <= 0:
        return None
    return remaining_pages / rate
