"""Crawler traps (shared.traps): each kind with its reason, limits from a job's ``traps`` over
the settings, monotone in each limit; credentials in URLs; the bench and demo sites pass."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.site import node_path
from harvester_ops.demo_site import PER_SECTION, SECTIONS
from shared.config import Settings
from shared.errors import InvalidURL
from shared.jobspec import SpecError, ruleset_of, status_view, validate_spec
from shared.robots import BLOCKED_PREFIX, is_refusal
from shared.traps import HARD_CAPS, SPEC_KEYS, TrapLimits
from shared.urls import validate_job_url
from tests.e2e.site import build_pages

SMALL = TrapLimits(max_url_length=60, max_path_depth=4, max_segment_repeats=2,
                   max_query_params=3, max_param_repeats=2, max_chain_level=5)


@pytest.mark.parametrize(("url", "level", "reason"), [
    ("http://h/" + "x" * 60, 1, "crawler trap (URL longer than 60 characters)"),
    ("http://h/a/b/c/d/e", 1, "crawler trap (path deeper than 4 segments)"),
    ("http://h/a/b/c/d/", 1, "crawler trap (path deeper than 4 segments)"),
    ("http://h/x/a/x/x", 1, "crawler trap (path segment repeated more than 2 times)"),
    ("http://h/?a=1&b=2&c=3&d=4", 1, "crawler trap (more than 3 query parameters)"),
    ("http://h/?a=1&a=2&a=3", 1, "crawler trap (query parameter repeated more than 2 times)"),
    ("http://h/cal?m=7", 6, "crawler trap (more than 5 links from the job URL)"),
    ("http://u:p@h/", 1, "credentials in URL"),
    ("http://u@h:8080/?a=1", 1, "credentials in URL"),
])
def test_each_trap_kind_is_named(url: str, level: int, reason: str) -> None:
    got = SMALL.check(url, level)
    assert got == BLOCKED_PREFIX + reason
    assert is_refusal(got)


@pytest.mark.parametrize(("url", "level"), [
    ("http://h/", 5), ("http://h/a/b/c/d", 1), ("http://h/x/a/x/", 1),
    ("http://h/?a=1&b=2&c=3", 1), ("http://h/?a=1&b=2&a=3", 1),
    ("http://h/p?x=a@b", 1), ("http://h/a@b/c", 1), ("http://h/#a/b/c/d/e/f", 1),
    ("http://[::1]:8080/a", 1),
])
def test_urls_within_the_limits_pass(url: str, level: int) -> None:
    assert SMALL.check(url, level) is None


def test_limits_come_from_the_spec_over_the_settings() -> None:
    s = Settings(max_path_depth=7, max_chain_level=9)
    assert TrapLimits.of(None, s) == TrapLimits(max_path_depth=7, max_chain_level=9)
    assert TrapLimits.of({"maxChainLevel": 3}, s) == TrapLimits(max_path_depth=7,
                                                               max_chain_level=3)
    assert TrapLimits.of('{"maxChainLevel": 3}', s) == TrapLimits.of({"maxChainLevel": 3}, s)
    # a stored value that is no limit (a hand-made spec) leaves the setting
    assert TrapLimits.of('{"maxPathDepth": 0, "maxChainLevel": "x"}', s) == TrapLimits.of(None, s)
    assert TrapLimits.of("[]", s) == TrapLimits.of(None, s)


def test_defaults_are_the_settings_defaults() -> None:
    s = Settings()
    assert TrapLimits.of(None, s) == TrapLimits()
    assert dataclasses.astuple(TrapLimits()) == (s.max_url_length, s.max_path_depth,
                                                 s.max_segment_repeats, s.max_query_params,
                                                 s.max_param_repeats, s.max_chain_level)


def spec(**traps: object) -> dict[str, object]:
    return {"urls": ("http://127.0.0.1/",), "traps": traps}


def test_the_job_spec_takes_traps_camel_case_and_bounded() -> None:
    s = Settings()
    got = validate_spec(spec(maxUrlLength=100, maxChainLevel=3), s)
    assert got.stored()["traps"] == {"maxUrlLength": 100, "maxChainLevel": 3}
    assert TrapLimits.of(got.stored()["traps"], s) == TrapLimits(max_url_length=100,
                                                                 max_chain_level=3)
    assert "traps" not in validate_spec({"urls": ("http://127.0.0.1/",)}, s).stored()
    assert ruleset_of(got.stored()) == 0  # not a rule-set key
    assert status_view(got.stored(), ["http://127.0.0.1/"])["traps"] == {
        "maxUrlLength": 100, "maxChainLevel": 3}
    for name, key in SPEC_KEYS.items():
        validate_spec(spec(**{key: HARD_CAPS[name]}), s)
        with pytest.raises(SpecError, match=f"Invalid traps.{key}: Input should be less"):
            validate_spec(spec(**{key: HARD_CAPS[name] + 1}), s)
        with pytest.raises(SpecError, match=f"Invalid traps.{key}: Input should be greater"):
            validate_spec(spec(**{key: 0}), s)
    with pytest.raises(SpecError, match="Invalid traps.depth: Extra inputs"):
        validate_spec(spec(depth=3), s)


@pytest.mark.parametrize("line", ["http://user:hunter2@h.example/", "https://hunter2@h.example/",
                                  "ftp://u:hunter2@h.example/", "//u:hunter2@h.example"])
def test_a_job_url_with_credentials_is_refused_without_echoing_it(line: str) -> None:
    with pytest.raises(InvalidURL) as e:
        validate_job_url(line)
    assert e.value.message == ("Invalid URL: credentials in URLs are not accepted (use "
                               "hostHeaders or sessions)")
    assert "hunter2" not in str(e.value) and "hunter2" not in e.value.line
    with pytest.raises(SpecError) as s:
        validate_spec({"urls": (line,)}, Settings())
    assert "hunter2" not in s.value.message and "credentials in URLs" in s.value.message


def test_the_bench_demo_and_test_sites_pass_the_defaults() -> None:
    limits = TrapLimits.of(None, Settings())
    origin = "http://127.0.0.1:8080"
    bench = [f"{origin}{node_path(i)}" for i in range(0, 50_000, 7)]
    bench += [f"{origin}{node_path(i)}?page=2&sort=asc" for i in range(0, 1000, 7)]
    demo = [f"{origin}/{s}/item{i}.html" for s in SECTIONS for i in range(PER_SECTION)]
    site = list(build_pages(origin, "http://127.0.0.2:8081"))
    for url in (*bench, *demo, *site):
        assert limits.check(url, 40) is None, url  # bench depth 40 at most


LIMIT = st.integers(1, 40)
URLS = st.builds(
    lambda segs, params, pad: "http://h.example/" + "/".join(segs)
    + ("?" + "&".join(f"{k}={i}" for i, k in enumerate(params)) if params else "") + pad,
    st.lists(st.sampled_from(["a", "b", "cal", "2024", ""]), max_size=12),
    st.lists(st.sampled_from(["p", "q", "r", "s"]), max_size=12),
    st.text("x", max_size=40))


@settings(max_examples=300, deadline=None)
@given(URLS, st.integers(0, 40), st.tuples(*[LIMIT] * 6), st.integers(0, 5),
       st.integers(1, 10))
def test_blocking_is_monotone_in_each_limit(url: str, level: int, limits: tuple[int, ...],
                                            which: int, more: int) -> None:
    """Raising any one limit never blocks a URL that passed; lowering it never lets one
    through that was blocked."""
    low = TrapLimits(*limits)
    high = dataclasses.replace(low, **{dataclasses.fields(TrapLimits)[which].name:
                                       limits[which] + more})
    if low.check(url, level) is None:
        assert high.check(url, level) is None
    if high.check(url, level) is not None:
        assert low.check(url, level) is not None
