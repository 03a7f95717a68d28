"""Fuzzing client patterns (shared/patterns.py): ``problem`` answers any text, regex-like or not,
without raising; a pattern it accepts compiles and searches any text (a long hostile one too)
without an exception; one it refuses raises ``PatternError`` with that very message."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.patterns import PatternError, compile, problem

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PIECES = st.sampled_from([
    "a", "b", ".", "*", "+", "?", "|", "(", ")", "[", "]", "{", "}", "^", "$", "\\", "\\1",
    "(?=", "(?!", "(?<=", "(?<!", "(?>", "(?P<n>", "(?P=n)", "(?(1)", "*+", "++", "{2,5}",
    "{1001}", "{0,99999}", "\\d", "\\w", "\\pL", "\\p{Greek}", "\\Z", "\\z", "\\b", "(?i)",
    "(?m)", "(?s)", "[^a-z]", "[[:alpha:]]", "\\x{10FFFF}", "\\u00e9", "é", "\x00", "\x7f", "#",
])
PATTERNS = st.lists(PIECES, max_size=12).map("".join) | st.text(max_size=40)
TEXTS = st.text(max_size=200) | st.sampled_from(["a" * 100_000 + "!", "é" * 50_000,
                                                 "ab" * 50_000])


@FUZZ
@given(PATTERNS, TEXTS)
def test_any_pattern_is_accepted_and_runs_or_refused_with_its_reason(pattern: str,
                                                                      text: str) -> None:
    why = problem(pattern)
    if why is None:
        regex = compile(pattern)
        regex.search(text)
        regex.findall(text[:1000])
    else:
        assert isinstance(why, str) and why
        try:
            compile(pattern)
        except PatternError as e:
            assert str(e) == why
        else:
            raise AssertionError(f"{pattern!r} refused ({why}) yet compiled")
