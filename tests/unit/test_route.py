"""Routing a planned visit (foreman/route.py ``route``): the one rule the feeder's planning
claim and the foreman both apply, each route and which wins when several apply."""

from __future__ import annotations

import dataclasses

import pytest

from foreman.route import JobTraps, Route, route, stale
from shared.config import Settings
from shared.db.visits import Planned
from shared.traps import TrapLimits

LIMITS = TrapLimits(max_path_depth=4)
DEEP = "http://h.example/a/b/c/d/e/f"  # 6 segments: a trap at level 1 or more


def visit(url: str = "http://h.example/p", **kw: object) -> Planned:
    return dataclasses.replace(Planned(1, 2, url, reexpand=False, cached=False, level=1), **kw)


@pytest.mark.parametrize(("p", "want"), [
    (visit(), "fetch"),
    (visit(cached=True), "store"),
    (visit(reexpand=True, cached=True), "store"),
    (visit(state="paused"), "hold"),
    (visit(state="cancelled"), "drop"),
    (visit(deny=("/p$",)), "drop"),  # its URL refused by the job's deny list now
    (visit(deny=("/other",)), "fetch"),  # deny patterns that do not match it
    (visit(DEEP), "trap"),
    # which wins: a changed job before a trap, a trap before a stored answer
    (visit(DEEP, state="cancelled"), "drop"),
    (visit(DEEP, state="paused", cached=True), "hold"),
    (visit(DEEP, cached=True), "trap"),
    # a job URL (level 0) and a re-expansion are never checked for traps
    (visit(DEEP, level=0), "fetch"),
    (visit(DEEP, reexpand=True, cached=True), "store"),
    (visit(state="cancelled", cached=True), "drop"),
])
def test_each_route(p: Planned, want: Route) -> None:
    assert route(p, LIMITS).to == want
    # a trap carries its reason (the foreman blocks it with that), nothing else does
    assert (route(p, LIMITS).why == LIMITS.check(p.url, p.level)) if want == "trap" \
        else route(p, LIMITS).why is None


def test_stale_is_none_for_a_running_job_whose_deny_list_allows_the_url() -> None:
    assert stale(visit(deny=("/other",))) is None
    assert stale(visit(state="paused", deny=("/p$",))) == "drop"  # denied beats paused


def test_job_traps_reads_each_jobs_limits_once_and_starts_afresh_when_too_big(
        monkeypatch: pytest.MonkeyPatch) -> None:
    traps = JobTraps(Settings())
    known = traps.known()
    traps.learn(known, [visit(traps='{"maxPathDepth": 4}'), visit(job_id=7)])
    assert known[1].max_path_depth == 4 and known[7] == TrapLimits.of(None, Settings())
    traps.learn(known, [visit(traps=None)])  # known: a later plan read no traps for it
    assert known[1].max_path_depth == 4
    monkeypatch.setattr("foreman.route.TRAPS_MAX", 2)
    fresh = traps.known()
    assert fresh == {} and known[1].max_path_depth == 4  # a batch planned on the old one
