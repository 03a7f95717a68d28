"""SZ-T3: the Bloom filter of a job's seen URLs (shared/seen.py): no false negative, a
measured false-positive rate within the configured one, memory bounded by capacity and rate,
and at most ``bloomJobs`` filters per worker."""

from __future__ import annotations

import math

from shared.seen import SeenFilter, size_bits

N = 100_000


def test_no_false_negatives_and_false_positives_within_the_rate() -> None:
    f = SeenFilter()
    ids = range(1, N + 1)  # url ids are a sequence: the worst case for a weak hash
    f.add(7, N, 0.01, ids)
    maybe, unseen = f.split(7, N, 0.01, ids)
    assert (len(maybe), unseen) == (N, [])
    maybe, unseen = f.split(7, N, 0.01, range(10 * N, 11 * N))
    assert len(maybe) + len(unseen) == N
    assert len(maybe) / N <= 1.3 * 0.01
    for p in (0.05, 0.001):  # other rates, spread ids
        g = SeenFilter()
        g.add(1, N, p, range(0, 3 * N, 3))
        maybe, _ = g.split(1, N, p, range(1, 3 * N, 3))
        assert len(maybe) / N <= 1.3 * p, p


def test_memory_is_bounded_by_capacity_and_rate() -> None:
    f = SeenFilter()
    f.add(1, N, 0.01, range(N))
    bits = f.size_bits()
    assert bits <= 1.01 * size_bits(N, 0.01) + 64
    assert abs(size_bits(N, 0.01) / 8 - 119_817) < 100  # about 120 KB at 10^5 and 1 %
    assert size_bits(N, 0.01) == math.ceil(-N * math.log(0.01) / math.log(2) ** 2)
    f.add(1, N, 0.01, range(N, 10 * N))  # past its capacity: no bigger (only less exact)
    assert f.size_bits() == bits


def test_at_most_max_jobs_filters_least_recently_used_out() -> None:
    f = SeenFilter(max_jobs=3)
    for job in (1, 2, 3):
        f.add(job, 1000, 0.01, [job])
    f.split(1, 1000, 0.01, [1])  # 1 used again: 2 is the least recently used
    f.add(4, 1000, 0.01, [4])
    assert f.jobs() == [3, 1, 4]
    assert f.split(2, 1000, 0.01, [2]) == ([], [2])  # 2's filter started afresh
    assert f.jobs() == [1, 4, 2]
    assert f.split(1, 1000, 0.01, [1]) == ([1], [])
    # A job whose bloom options changed gets a new filter of the new size.
    f.add(1, 2000, 0.01, [5])
    assert f.split(1, 2000, 0.01, [1, 5]) == ([5], [1])
    assert len(f.jobs()) == 3
