"""Tests for web_server.duration: Go's time.Duration.String() format."""

from __future__ import annotations

import pytest

from web_server.duration import format_go_duration, format_go_nanoseconds

HOUR = 3600 * 10**9


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0s"),
        (0.0, "0s"),
        (-0.0, "0s"),
        (1e-9, "1ns"),
        (999e-9, "999ns"),
        (1e-6, "1µs"),
        (1.5e-6, "1.5µs"),
        (0.001, "1ms"),
        (0.017466231, "17.466231ms"),
        (0.441159, "441.159ms"),
        (0.999999999, "999.999999ms"),
        (1, "1s"),
        (5.023781354, "5.023781354s"),
        (59.5, "59.5s"),
        (60, "1m0s"),
        (83.5, "1m23.5s"),
        (3600, "1h0m0s"),
        (7200, "2h0m0s"),
        (3661.000000001, "1h1m1.000000001s"),
        (-1.5, "-1.5s"),
        (-0.0015, "-1.5ms"),
        (-90, "-1m30s"),
        (4e-10, "0s"),  # rounds to whole nanoseconds
        (6e-10, "1ns"),
        (1.5e-9, "2ns"),  # half to even
        (2.5e-9, "2ns"),
    ],
)
def test_format_go_duration(seconds: float, expected: str) -> None:
    assert format_go_duration(seconds) == expected


def test_micro_sign_is_u00b5() -> None:
    assert format_go_duration(2e-6) == "2\u00b5s"
    assert "\u03bc" not in format_go_duration(2e-6)  # not the Greek letter mu


# The table from Go's own src/time/time_test.go (durationTests).
@pytest.mark.parametrize(
    ("nanoseconds", "expected"),
    [
        (0, "0s"),
        (1, "1ns"),
        (1100, "1.1µs"),
        (2200 * 10**3, "2.2ms"),
        (3300 * 10**6, "3.3s"),
        (4 * 60 * 10**9 + 5 * 10**9, "4m5s"),
        (4 * 60 * 10**9 + 5001 * 10**6, "4m5.001s"),
        (5 * HOUR + 6 * 60 * 10**9 + 7001 * 10**6, "5h6m7.001s"),
        (8 * 60 * 10**9 + 1, "8m0.000000001s"),
        (2**63 - 1, "2562047h47m16.854775807s"),
        (-(2**63), "-2562047h47m16.854775808s"),
    ],
)
def test_go_reference_table(nanoseconds: int, expected: str) -> None:
    assert format_go_nanoseconds(nanoseconds) == expected


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_rejected(bad: float) -> None:
    with pytest.raises(ValueError):
        format_go_duration(bad)
