"""A job's optional Bloom filter of the URLs it has seen (spec ``bloom``).

A worker keeps one filter per job with ``bloom`` (the ``bloomJobs`` most recently used jobs;
an evicted job's filter starts empty again), of the url ids its commits have queued or found
visited. It is a pre-check in front of the exact one, never instead of it: in
``shared.db.visits._insert_first`` a child the filter has surely not seen is inserted as a
visit (``INSERT ... ON CONFLICT``, exact, as without a filter); one it may have seen is looked
up (``_lower``, exact) and, if the job has no such visit after all (a false positive, or a
filter that is not this worker's), inserted. So a false positive costs one lookup, never a page,
and a filter that knows nothing costs nothing but the hashing. What it saves is the speculative
insert of links the job has visited already (most of a page's links, once a crawl is under
way).

Memory: about ``-n ln p / ln² 2`` bits per job (120 KB at 10⁵ URLs and 1 %): ``size_bits``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable

from rbloom import Bloom

_MASK64 = (1 << 64) - 1
_HALF = 1 << 127


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _mix(url_id: int) -> int:
    """A url id spread over 128 bits (rbloom's hash: a signed 128-bit integer). Python's
    ``hash`` of an int is the int itself, which rbloom would split into poor halves."""
    hi = _splitmix64(url_id)
    lo = _splitmix64(url_id ^ 0x5851F42D4C957F2D)
    return ((hi << 64) | lo) - _HALF


def size_bits(capacity: int, error_rate: float) -> int:
    """The bits of a filter of ``capacity`` items at ``error_rate`` (the optimum, rounded up)."""
    return math.ceil(-capacity * math.log(error_rate) / math.log(2) ** 2)


class SeenFilter:
    """Bloom filters of url ids, one per job, for the ``max_jobs`` most recently used jobs."""

    def __init__(self, max_jobs: int = 64) -> None:
        self.max_jobs = max(1, max_jobs)
        self._filters: OrderedDict[int, tuple[int, float, Bloom]] = OrderedDict()

    def _filter(self, job_id: int, capacity: int, error_rate: float) -> Bloom:
        entry = self._filters.get(job_id)
        if entry is None or entry[:2] != (capacity, error_rate):
            entry = (capacity, error_rate, Bloom(capacity, error_rate, hash_func=_mix))
            self._filters[job_id] = entry
            while len(self._filters) > self.max_jobs:
                self._filters.popitem(last=False)
        self._filters.move_to_end(job_id)
        return entry[2]

    def split(self, job_id: int, capacity: int, error_rate: float,
              url_ids: Iterable[int]) -> tuple[list[int], list[int]]:
        """These url ids as (maybe seen, surely unseen) by the job's filter."""
        bloom = self._filter(job_id, capacity, error_rate)
        maybe: list[int] = []
        unseen: list[int] = []
        for u in url_ids:
            (maybe if u in bloom else unseen).append(u)
        return maybe, unseen

    def add(self, job_id: int, capacity: int, error_rate: float, url_ids: Iterable[int]) -> None:
        """Record these url ids as seen by the job."""
        self._filter(job_id, capacity, error_rate).update(url_ids)

    def jobs(self) -> list[int]:
        """The jobs with a filter, least recently used first."""
        return list(self._filters)

    def size_bits(self) -> int:
        """The bits of all the filters held."""
        return sum(b.size_in_bits for _, _, b in self._filters.values())
