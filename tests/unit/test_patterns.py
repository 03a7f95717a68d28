"""Client patterns on RE2 (shared.patterns): refused constructs named, linear time, stored
patterns RE2 refuses never raise."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import MultiDict

from shared import patterns
from shared.config import Settings
from shared.errors import BadRequest
from shared.jobspec import SpecError, validate_spec
from shared.model import FetchedPage
from shared.ordering import compile_rules, url_priority
from shared.scope import Scope, check_pattern, denied
from web_server.routes import parse_scope
from worker.extractors import rules_core
from worker.sessions import SessionBroker, SessionRules

LINEAR = "is not supported: patterns run on a linear-time engine"


@pytest.mark.parametrize(("pattern", "construct"), [
    (r"(a)\1", "a backreference"),
    (r"(?P<n>a)(?P=n)", "a backreference"),
    (r"(?=a)b", "a lookahead"),
    (r"a(?!b)", "a lookahead"),
    (r"(?<=a)b", "a lookbehind"),
    (r"(?<!a)b", "a lookbehind"),
    (r"(?>ab)", "an atomic group"),
    (r"a*+", "a possessive repeat"),
    (r"a++b", "a possessive repeat"),
    (r"a?+", "a possessive repeat"),
    (r"(a)?(?(1)b|c)", "a conditional"),
    (r"end\Z", "\\Z (use \\z or $)"),
    (r"a{1001}", "a repeat over 1000"),
    (r"a{2,5000}", "a repeat over 1000"),
])
def test_a_construct_re2_has_not_is_named(pattern: str, construct: str) -> None:
    assert patterns.problem(pattern) == f"{construct} {LINEAR}"
    assert check_pattern(pattern) == f"{construct} {LINEAR}"
    with pytest.raises(patterns.PatternError):
        patterns.compile(pattern)


@pytest.mark.parametrize("pattern", [
    r"(a+)+$", r"\d+", r"^https?://[^/]+/docs/", r"\pL+", r"end\z", r"(?i)PAGE=\d{1,1000}",
    r"(?P<id>[0-9]+)", r"\\Z", r"\(\?=", "a{1000}", r"[*+]+",
])
def test_patterns_re2_runs_are_accepted(pattern: str) -> None:
    assert patterns.problem(pattern) is None
    patterns.compile(pattern)


def test_python_syntax_errors_keep_their_messages() -> None:
    assert patterns.problem("(") == "missing ), unterminated subpattern at position 0"
    assert patterns.problem("[") == "unterminated character set at position 0"
    assert patterns.problem("a\x00") == "control characters are not allowed"
    assert patterns.problem("x" * 1001) == "longer than 1000 characters"


def test_the_query_parameter_400_names_the_construct() -> None:
    class Request:  # parse_scope reads request.query only
        query = MultiDict([("allow", r"(a)\1")])

    with pytest.raises(BadRequest, match=r"Invalid allow pattern: \(a\)\\1 \(a backreference "
                                        r"is not supported: patterns run on a linear-time "
                                        r"engine\)"):
        parse_scope(Request())  # type: ignore[arg-type]


def test_a_job_spec_with_lookaround_is_refused() -> None:
    with pytest.raises(SpecError, match="a lookahead is not supported"):
        validate_spec({"urls": ("http://127.0.0.1/",), "scope": {"allow": ("(?=x)",)}}, Settings())
    with pytest.raises(SpecError, match="a backreference is not supported"):
        validate_spec({"urls": ("http://127.0.0.1/",),
                       "follow": {"linkRegex": r"(a)\1"}}, Settings())


def test_the_catastrophic_pattern_is_linear() -> None:
    # Python's re takes ~2^n steps here: this test would not end (pytest-timeout fails it).
    text = "a" * 100_000 + "!"
    assert patterns.compile(r"(a+)+$").search(text) is None
    assert not Scope(allow=(r"(a+)+$",)).follows("http://h/" + text, "http://h/")


def test_compile_is_cached() -> None:
    assert patterns.compile(r"x\d") is patterns.compile(r"x\d")


def test_stored_patterns_re2_refuses_never_raise(caplog: pytest.LogCaptureFixture) -> None:
    url = "http://h.example/docs/a"
    with caplog.at_level(logging.WARNING, "shared.patterns"):
        # allow: matches nothing; deny: matches everything
        assert not Scope(allow=("(?=docs)",)).follows(url, url)
        assert not Scope(allow=("(?=docs)",)).follows(url, url)
        assert not Scope(deny=(r"(x)\1",)).follows(url, url)
        assert denied((r"(x)\1",), url)
        # a priority RE2 refuses matches nothing: the next rule decides
        rules = compile_rules([{"pattern": "(?<=h)", "priority": 9},
                               {"pattern": "docs", "priority": 3}])
        assert url_priority(rules, url) == 3
    logged = [r for r in caplog.records if "(?=docs)" in r.getMessage()]
    assert len(logged) == 1  # once per pattern


def test_session_block_patterns_run_on_re2() -> None:
    rules = SessionRules.from_stored({"sessions": {"pool": "p", "blockPatterns": [r"(a+)+$"]}})
    assert rules is not None
    assert type(rules.block_patterns[0]) is type(patterns.compile("x"))
    page = FetchedPage(1, 200, "text/html", None, True, body=b"a" * 60_000 + b"!",
                       charset="utf-8")
    assert SessionBroker.blocked(page, rules) is None
    page = FetchedPage(1, 200, "text/html", None, True, body=b"x aaa", charset="utf-8")
    assert SessionBroker.blocked(page, rules) == "matched '(a+)+$'"


def test_rule_regexes_run_on_re2() -> None:
    c = rules_core.compiled("follow", '{"linkRegex": "(a+)+$", "css": []}')
    assert isinstance(c, rules_core._Follow) and c.link_regex is not None
    assert type(c.link_regex) is type(patterns.compile("x"))
    body = b"a" * 100_000 + b"!"
    assert rules_core.follow(body, "http://h/", "utf-8", '{"linkRegex": "(a+)+$"}') == []
    got = rules_core.follow(b'<a href="/x">', "http://h/", "utf-8",
                            '{"linkRegex": "href=\\"([^\\"]+)\\"", "css": []}')
    assert got == [("link", {"url": "http://h/x"})]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_problem_never_raises_and_accepted_patterns_compile(pattern: str) -> None:
    why = patterns.problem(pattern)
    if why is None:
        patterns.compile(pattern).search("a" * 10_000)
    else:
        assert isinstance(why, str) and why


def test_python_warnings_do_not_escape(recwarn: pytest.WarningsRecorder) -> None:
    # Python's re warns "possible nested set" on "[[": a 400's message is all a client gets
    assert patterns.problem("[[a](") == "missing ), unterminated subpattern at position 4"
    assert not recwarn.list
