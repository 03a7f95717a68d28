"""The github source end to end (issue 13; reference-seed-systems.md HD-1, HD-2, HD-5, HD-6):
GET /users and /contributors run as jobs through the tiers against the fake GitHub API
(tests/fake_github.py), with its tokens, limits, 304s and faults."""

from __future__ import annotations

import asyncio
import copy
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.config import Settings
from tests.e2e.stack import Stack
from tests.e2e.test_openapi_responses import check
from tests.fake_github import FakeGitHub, Graph, User, make_graph
from worker.github_tokens import token_id

pytestmark = pytest.mark.e2e

TOKENS = ("ghp_fakeTokenA000001", "ghp_fakeTokenB000002")
PER_PAGE = 30
SIMPLE_USER_KEYS = {"login", "id", "node_id", "avatar_url", "gravatar_id", "url", "html_url",
                    "followers_url", "following_url", "gists_url", "starred_url",
                    "subscriptions_url", "organizations_url", "repos_url", "events_url",
                    "received_events_url", "type", "user_view_type", "site_admin"}


def github_settings(settings: Settings, fake: FakeGitHub, **update: Any) -> Settings:
    return settings.model_copy(update={
        "fetcher_kinds": ("http", "github"), "worker_kinds": {"http": 8, "github": 4},
        "github_base_url": fake.base, "github_tokens": TOKENS, "github_per_page": PER_PAGE,
        "github_wait": 30.0, "heartbeat_interval": 0.2, **update})


@pytest.fixture
async def fake() -> AsyncIterator[FakeGitHub]:
    async with FakeGitHub() as f:
        yield f


async def started(settings: Settings, workers: int = 1) -> Stack:
    return await Stack(settings).start(workers=workers)


async def get(stack: Stack, path: str, **params: str) -> tuple[int, Any, Any]:
    return await stack.request("GET", path, **params)


async def closure_of(stack: Stack, user: str, depth: int) -> dict[str, Any]:
    status, body, _ = await get(stack, "/contributors", user=user, depth=str(depth))
    assert status == 200, body
    return dict(body)


def since_values(fake: FakeGitHub) -> list[int]:
    out = []
    for path in fake.hits:
        parts = urlsplit(path)
        if parts.path == "/users":
            assert not re.search(r"(^|&)page=", parts.query), path  # /users pages by since only
            out += [int(v) for v in parse_qs(parts.query).get("since", [])]
    return out


async def test_users_nb(settings: Settings, fake: FakeGitHub) -> None:
    stack = await started(github_settings(settings, fake))
    try:
        ids = [u.id for u in fake.graph.users]
        status, body, _ = await get(stack, "/users")
        assert status == 200, body
        assert [u["id"] for u in body["users"]] == ids[:20] and body["failed"] == []
        check("/users", "get", status, body)
        assert set(body["users"][0]) == SIMPLE_USER_KEYS  # GitHub's objects, minus _type
        for nb in (45, 250):
            status, body, _ = await get(stack, "/users", nb=str(nb))
            assert status == 200, body
            assert [u["id"] for u in body["users"]] == [u.id for u in fake.graph.first_users(nb)]
        assert len({u["id"] for u in body["users"]}) == 250
        # Exactly the pages needed, each once (the first pages of 250 were cached from 20 and
        # 45): one page too many (since = ids[269]) or one fetched twice fails.
        assert sorted(since_values(fake)) == [ids[k * PER_PAGE - 1] for k in range(1, 9)]
        status, body, _ = await get(stack, "/users", nb="45", order="newest")
        assert status == 200, body
        assert [u["id"] for u in body["users"]] == [u.id for u in fake.graph.newest_users(45)]
        for params in ({"nb": "0"}, {"nb": "-1"}, {"nb": "x"}, {"nb": "100001"},
                       {"order": "joined"}, {"nb": "1001", "order": "newest"}):
            status, body, _ = await get(stack, "/users", **params)
            assert status == 400 and body["code"] == "BadRequest", (params, body)
            check("/users", "get", status, body)
    finally:
        await stack.stop()


async def test_newest_is_never_answered_from_the_cache(settings: Settings,
                                                        fake: FakeGitHub) -> None:
    """`order=newest` asks the search again each time (never a cached page): a user who joined
    since the last answer is in the next one."""
    stack = await started(github_settings(settings, fake))
    try:
        status, body, _ = await get(stack, "/users", nb="45", order="newest")
        assert status == 200, body
        assert [u["id"] for u in body["users"]] == [u.id for u in fake.graph.newest_users(45)]
        g = fake.graph
        g.users.append(User("newcomer", g.users[-1].id + 5))
        g.__post_init__()
        status, body, _ = await get(stack, "/users", nb="45", order="newest")
        assert status == 200 and body["failed"] == [], body
        assert [u["id"] for u in body["users"]] == [u.id for u in g.newest_users(45)]
        assert body["users"][0]["login"] == "newcomer"
    finally:
        await stack.stop()


async def test_contributors_closure(settings: Settings, fake: FakeGitHub) -> None:
    stack = await started(github_settings(settings, fake))
    g, hub = fake.graph, fake.graph.user("hub")
    try:
        log = []
        for depth in (0, 1, 2):
            fake.reset_counters()
            body = await closure_of(stack, "HUB", depth)
            log += fake.log
            assert set(body["close_contributors"]) == g.closure("hub", depth), depth
            assert body["close_contributors"] == sorted(body["close_contributors"])
            assert body["failed"] == []
            assert max(fake.served.values()) == 1  # no page fetched twice within one job
        assert "mixedcase" in body["close_contributors"]
        assert (await closure_of(stack, "hugodelval", 1))["close_contributors"] == [
            "hugodelval", "u277", "u505", "u613"]
        status, body, _ = await get(stack, "/contributors")  # the seed's defaults
        assert (status, body["close_contributors"]) == (200, sorted(g.closure("hugodelval", 1)))
        fake.reset_counters()
        await closure_of(stack, "hub", 1)  # cached: nothing fetched again
        assert not fake.served
        big = g.by_full_name["hub/big"]  # every page of a list, by its Link (id form) pages
        assert any(s.path_qs.startswith(f"/user/{hub.id}/repos?") and "page=2" in s.path_qs
                   and s.status == 200 for s in log)
        assert any(s.path_qs.startswith(f"/repositories/{big.id}/contributors?")
                   and "page=2" in s.path_qs and s.status == 200 for s in log)
        assert any(s.path_qs.startswith("/repos/hub/empty-a/contributors") and s.status == 204
                   for s in log)
        status, body, _ = await get(stack, "/contributors", user="nobody-here", depth="1")
        assert status == 404 and body["message"] == "GitHub user 'nobody-here' not found", body
        check("/contributors", "get", status, body)
        for params in ({"user": "-bad"}, {"user": "a" * 40}, {"depth": "-1"}, {"depth": "x"},
                       {"depth": "1000000"}):
            status, body, _ = await get(stack, "/contributors", **params)
            assert status == 400, (params, body)
    finally:
        await stack.stop()


async def test_rate_limit_waits_or_switches(settings: Settings) -> None:
    pages = make_graph().requests_for("hub", 1, PER_PAGE)  # 39: one budget is enough
    async with FakeGitHub(budget=pages, reset_window=1.0) as fake:
        await fake.spend(TOKENS[0], pages)  # the store does not know: a real 403 comes
        fake.reset_counters()
        stack = await started(github_settings(settings, fake, github_tokens=TOKENS[:1]))
        try:
            body = await closure_of(stack, "hub", 1)
            assert set(body["close_contributors"]) == fake.graph.closure("hub", 1)
            assert body["failed"] == []
            assert fake.limited >= 1  # GitHub said 403 Remaining 0 mid-crawl: waited for Reset
            assert sum(fake.served.values()) == pages  # then each page once
        finally:
            await stack.stop()
    async with FakeGitHub(budget=25, reset_window=3600.0) as fake:
        stack = await started(github_settings(settings, fake))
        try:
            body = await closure_of(stack, "hub", 1)  # two tokens' budgets, no reset: switches
            assert set(body["close_contributors"]) == fake.graph.closure("hub", 1)
            assert body["failed"] == []
            assert sum(fake.used.values()) > 25 and all(0 < fake.used[t] <= 25 for t in TOKENS)
        finally:
            await stack.stop()


async def test_secondary_429_retry_after(settings: Settings) -> None:
    async with FakeGitHub(secondary_every=5, retry_after=1, limited_status=429) as fake:
        stack = await started(github_settings(settings, fake))
        try:
            body = await closure_of(stack, "hub", 1)
            assert set(body["close_contributors"]) == fake.graph.closure("hub", 1)
            assert fake.secondary > 0 and body["failed"] == []  # waited, never an attempt lost
        finally:
            await stack.stop()


async def test_second_crawl_is_304_and_free(settings: Settings, fake: FakeGitHub) -> None:
    stack = await started(github_settings(settings, fake, cache_max_age=0.0))
    try:
        first = await closure_of(stack, "hub", 1)
        served, used = sum(fake.served.values()), sum(fake.used.values())
        assert served > 30
        fake.reset_counters()
        second = await closure_of(stack, "hub", 1)
        assert first["close_contributors"] == second["close_contributors"]
        assert sum(fake.not_modified.values()) == served and not fake.served
        assert sum(fake.used.values()) == 0 < used  # a 304 costs no budget
    finally:
        await stack.stop()


async def test_token_sent_never_shown(settings: Settings, fake: FakeGitHub,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake.faults["/users/hub"] = [500]  # an error answer is logged too
    stack = await started(github_settings(settings, fake))
    try:
        body = await closure_of(stack, "hub", 1)
        job = body["jobId"]
        status, users, _ = await get(stack, "/users", nb="45")
        texts = [repr(body), repr(users)]
        for path in (f"/status/{job}", f"/result/{job}", f"/items/{job}", "/workers",
                     "/jobs", "/openapi.json"):
            status, answer, _ = await get(stack, path)
            assert status == 200, (path, answer)
            texts.append(repr(answer))
        status, answer, _ = await get(stack, f"/result/{job}", status="failed")
        texts.append(repr(answer))
        texts += [r.getMessage() + repr(r.args) + (r.exc_text or "") for r in caplog.records]
        assert fake.log and fake.auth[""] == 0
        assert {s.headers["Authorization"] for s in fake.log} <= {f"Bearer {t}" for t in TOKENS}
        for token in TOKENS:
            assert not [t for t in texts if token in t]
    finally:
        await stack.stop()


@pytest.mark.parametrize("workers", [1, 3])
async def test_fan_out(settings: Settings, fake: FakeGitHub, workers: int) -> None:
    stack = await started(github_settings(settings, fake), workers=workers)
    try:
        body = await closure_of(stack, "hub", 2)
        assert set(body["close_contributors"]) == fake.graph.closure("hub", 2)
        assert body["failed"] == [] and max(fake.served.values()) == 1
        assert fake.max_inflight <= len(TOKENS) * 4  # githubTokenConcurrency per token
        if workers == 3:
            deadline = time.monotonic() + 10
            while True:  # the heartbeat after the crawl carries every worker's numbers
                _, listed, _ = await get(stack, "/workers")
                fetched = [(w.get("stats") or {}).get("fetchedByKind", {}).get("github", 0)
                           for w in listed["workers"]]
                if len(fetched) == 3 and all(fetched) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert len(fetched) == 3 and all(n > 0 for n in fetched), listed
            check("/workers", "get", 200, listed)
    finally:
        await stack.stop()


def without_repo(graph: Graph, full_name: str) -> Graph:
    g = copy.deepcopy(graph)
    g.by_full_name[full_name.lower()].contributors.clear()
    return g


async def test_failures_listed(settings: Settings, fake: FakeGitHub) -> None:
    broken = "/repos/hub/big/contributors"
    fake.faults[broken] = [500] * 10
    stack = await started(github_settings(settings, fake))
    try:
        body = await closure_of(stack, "hub", 1)
        assert set(body["close_contributors"]) == without_repo(fake.graph, "hub/big").closure(
            "hub", 1)
        assert [(urlsplit(f["url"]).path, f["status"], f["attempts"]) for f in body["failed"]] \
            == [(broken, 500, 3)]
    finally:
        await stack.stop()


async def test_every_token_refused_is_failed_and_shown(settings: Settings) -> None:
    """Revoked tokens: the job ends with its pages failed for that reason (not deferred hour
    after hour), and /workers shows each token's state by its id, never the token."""
    async with FakeGitHub(valid_tokens=set()) as fake:
        stack = await started(github_settings(settings, fake))
        try:
            status, body, _ = await get(stack, "/contributors", user="hub", depth="1")
            assert status == 200 and body["failed"], body
            assert {f["reason"] for f in body["failed"]} == {"every GitHub token refused (401)"}
            assert fake.auth == {t: 1 for t in TOKENS}
            status, listed, _ = await get(stack, "/workers")
            check("/workers", "get", status, listed)
            shown = {(t["id"], t["resource"]): t for t in listed["apiTokens"]}
            for token in TOKENS:
                state = shown[(token_id(token), "core")]
                assert state["refused"] and state["pausedUntil"], state
                assert token not in repr(listed)
        finally:
            await stack.stop()


async def test_robots_not_read_for_the_api(settings: Settings, fake: FakeGitHub) -> None:
    """An authenticated API client is bound by the API's terms and rate limits, not robots.txt
    (as octokit and PyGithub): a github job never asks for it, even where it refuses all; a web
    job on that host still obeys it."""
    fake.robots_txt = "User-agent: *\nDisallow: /\n"
    stack = await started(github_settings(settings, fake, robots=True))
    try:
        body = await closure_of(stack, "hub", 1)
        assert set(body["close_contributors"]) == fake.graph.closure("hub", 1)
        assert body["failed"] == [] and not fake.hits["/robots.txt"]
        url = f"{fake.base}/users/loner"  # not fetched yet
        job = await stack.post_job([url])  # the web source
        await stack.wait_complete(job)
        blocked = await stack.result(job, status="blocked")
        assert list(blocked) == [url] and "robots" in str(blocked[url]["reason"]), blocked
        assert fake.hits["/robots.txt"] == 1 and not fake.hits["/users/loner"]
    finally:
        await stack.stop()


async def test_sync_then_202(settings: Settings, fake: FakeGitHub) -> None:
    stack = await started(github_settings(settings, fake, github_wait=0.0))
    try:
        status, body, headers = await get(stack, "/contributors", user="hub", depth="1")
        assert status == 202, body
        check("/contributors", "get", status, body)
        job = body["jobId"]
        assert headers["Location"] == f"/result/{job}" == body["result"]
        assert body["status"] == f"/status/{job}"
        seen = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, answer, _ = await get(stack, f"/result/{job}")
            seen.add(status)
            if status == 200:
                break
            assert status == 202 and answer == {"jobId": job, "pending": 1}, answer
            check("/result/{jobId}", "get", status, answer)
            await asyncio.sleep(0.05)
        assert status == 200 and set(answer["close_contributors"]) == \
            fake.graph.closure("hub", 1)
        assert answer["jobId"] == job and answer["failed"] == []
        check("/result/{jobId}", "get", status, answer)
        check("/contributors", "get", status, answer)
        status, answer, _ = await get(stack, "/result/999999", status="failed")
        assert status == 404
    finally:
        await stack.stop()
