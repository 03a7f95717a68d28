"""Which links a job follows."""

from __future__ import annotations

import pytest

from shared.scope import Scope, check_pattern, denied

ORIGIN = "http://www.example.com/start"


@pytest.mark.parametrize(("kind", "url", "follows"), [
    ("any", "http://other.org/", True),
    ("host", "http://www.example.com/a", True),
    ("host", "https://www.example.com/a", True),
    ("host", "http://example.com/a", False),
    ("host", "http://blog.example.com/a", False),
    ("domain", "http://example.com/a", True),
    ("domain", "http://blog.example.com/a", True),
    ("domain", "http://deep.blog.example.com/a", True),
    ("domain", "http://notexample.com/a", False),
    ("domain", "http://example.com.evil.org/a", False),
])
def test_scope_kinds(kind: str, url: str, follows: bool) -> None:
    assert Scope(kind).follows(url, ORIGIN) is follows


def test_allow_and_deny() -> None:
    scope = Scope("any", allow=(r"/docs/", r"\?page=\d+$"), deny=(r"/docs/private",))
    assert scope.follows("http://x.org/docs/a", ORIGIN)
    assert scope.follows("http://x.org/list?page=2", ORIGIN)
    assert not scope.follows("http://x.org/blog/a", ORIGIN)
    assert not scope.follows("http://x.org/docs/private/a", ORIGIN)
    assert Scope("any").unlimited and not scope.unlimited and not Scope("host").unlimited


def test_bad_patterns_are_reported() -> None:
    assert check_pattern("(") is not None
    assert check_pattern(r"\d+") is None


@pytest.mark.parametrize("pattern", ["a\x00", "a\nb", "\x7f"])
def test_control_characters_in_a_pattern_are_refused(pattern: str) -> None:
    # PostgreSQL stores no NUL in text or jsonb: accepted, it made a 500 at the job's creation.
    assert check_pattern(pattern) == "control characters are not allowed"


def test_denied_searches_the_deny_patterns_as_scope_does() -> None:
    url = "http://h.example/x/1?page=2"
    for deny in ((), ("/y/",), ("/x/",), ("^https:", r"page=\d")):
        assert denied(deny, url) == (not Scope(deny=deny).follows(url, url))
