"""bench/eta.py: the ETA's relative error at 25/50/75 % of a crawl."""

from __future__ import annotations

from bench.eta import errors


def test_an_exact_eta_has_no_error_and_wrong_ones_their_ratio() -> None:
    # 100 pages at 10 pages/s: finished at t = 10 s.
    exact = [(t, int(10 * t), 10.0 - t) for t in (0.5, 1, 2, 2.5, 3, 5, 7.5, 9)]
    assert errors(exact, 10.0) == {"25%": 0.0, "50%": 0.0, "75%": 0.0}
    # At 25 % (t = 2.5) an ETA of 15 s: 2.5 + 15 − 10 = 7.5 too late, over 7.5 s to go.
    late = [(t, n, 15.0 if n == 25 else eta) for t, n, eta in exact]
    assert errors(late, 10.0)["25%"] == 1.0
    early = [(t, n, 2.5 if n == 50 else eta) for t, n, eta in exact]
    assert errors(early, 10.0)["50%"] == -0.5


def test_no_eta_or_no_sample_at_a_point_is_none() -> None:
    samples = [(1.0, 10, None), (2.0, 100, 0.0)]  # jumped from 10 % to done
    assert errors(samples, 2.0) == {"25%": None, "50%": None, "75%": None}
    assert errors([], 1.0) == {"25%": None, "50%": None, "75%": None}
