"""Fuzzing the crawler-trap limits (shared/traps.py ``TrapLimits.check``): on any URL of
generated paths and queries, at any level, raising a limit never blocks what a lower one let
through (each check is monotone in each limit), a reason is always one of the documented
``blocked: `` ones, and the defaults let the bench's and the demo site's shapes through."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.robots import BLOCKED_CREDENTIALS, TRAP
from shared.traps import SPEC_KEYS, TrapLimits

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SEGMENT = st.sampled_from(["a", "b", "cal", "2026", "01", "x" * 40, "%2F", ".", ""])
PARAM = st.tuples(st.sampled_from(["a", "b", "page", "month", "x" * 20]),
                  st.sampled_from(["", "1", "2", "y" * 30]))


@st.composite
def urls(draw: st.DrawFn) -> str:
    path = "/".join(draw(st.lists(SEGMENT, max_size=40)))
    query = "&".join(f"{k}={v}" if v else k for k, v in draw(st.lists(PARAM, max_size=40)))
    user = draw(st.sampled_from(["", "", "", "u:p@", "u@"]))
    return f"http://{user}h.example/{path}" + (f"?{query}" if query else "")


LIMITS = st.builds(TrapLimits, *(st.integers(1, 60) for _ in SPEC_KEYS))


@FUZZ
@given(urls(), st.integers(0, 400), LIMITS, st.sampled_from(list(SPEC_KEYS)), st.integers(1, 100))
def test_a_higher_limit_never_blocks_what_a_lower_one_let_through(
        url: str, level: int, low: TrapLimits, name: str, more: int) -> None:
    high = dataclasses.replace(low, **{name: getattr(low, name) + more})
    before, after = low.check(url, level), high.check(url, level)
    if before is None:
        assert after is None, (url, level, low, high, after)
    for reason in (before, after):
        assert reason is None or reason == BLOCKED_CREDENTIALS or reason.startswith(f"{TRAP} (")

