"""worker/fetchers/github.py against the fake GitHub API (tests/fake_github.py) and PostgreSQL:
a token on every request, switching tokens on a limit without deferring, all spent -> no
request and a ``retry_after`` near the earliest reset, the per-token bound across two fetchers,
a 304 that spends nothing, no request off the base URL, the raw answer redacted, a refused
token paused, a cut JSON body worth another try, and no token in any log line."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from shared.config import Settings
from shared.db import api_tokens
from shared.model import FetchedPage
from tests.fake_github import FakeGitHub
from worker.fetchers import FETCHERS, FetchRequest, Validators
from worker.fetchers.github import GitHubFetcher
from worker.github_tokens import token_id
from worker.sources.github import GitHub

A, B = "ghp_fakeTokenA000001", "ghp_fakeTokenB000002"


@pytest.fixture
async def fake() -> AsyncIterator[FakeGitHub]:
    async with FakeGitHub() as f:
        yield f


def github_settings(settings: Settings, fake: FakeGitHub, tokens: tuple[str, ...] = (A, B),
                    **more: object) -> Settings:
    return settings.model_copy(update={"github_base_url": fake.base, "github_tokens": tokens,
                                       "github_per_page": 30, **more})


def request(settings: Settings, url: str, *, validators: Validators | None = None,
            keep_raw: bool = False, url_id: int = 1) -> FetchRequest:
    source = GitHub(settings)
    return FetchRequest(url_id, url, validators, source.request_headers(url), source.wants_body,
                        keep_raw, source.policy)


async def fetch(f: GitHubFetcher, settings: Settings, path: str, *,
                validators: Validators | None = None, keep_raw: bool = False) -> FetchedPage:
    return await f.fetch(request(settings, f"{settings.github_base_url}{path}",
                                 validators=validators, keep_raw=keep_raw), None)


async def states(settings: Settings) -> dict[str, api_tokens.TokenState]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return {s.token_id: s for s in await api_tokens.states(conn) if s.resource == "core"}
    finally:
        await conn.close()


async def test_every_request_carries_a_token_and_nothing_shows_it(
        settings: Settings, fake: FakeGitHub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    s = github_settings(settings, fake)
    assert FETCHERS.create("github", s, concurrency=4).kind == "github"
    async with GitHubFetcher(s, 4) as f:
        pages = [await fetch(f, s, p, keep_raw=True)
                 for p in ("/users/hub", "/users/hub/repos?per_page=30", "/users?per_page=5")]
        logging.getLogger("test").warning("oops %s", A)  # a slip anywhere: blanked out
    assert [p.status for p in pages] == [200, 200, 200]
    assert all(p.fetcher == "github" and p.body for p in pages)
    assert len(fake.log) == 3
    assert all(seen.headers["Authorization"] in (f"Bearer {A}", f"Bearer {B}")
               for seen in fake.log)
    assert fake.auth[""] == 0
    for p in pages:
        assert p.raw is not None
        sent = {k.lower(): v for k, v in p.raw.request_headers}
        assert sent["authorization"] == "Bearer ***"
        assert sent["accept"] == "application/vnd.github+json"
    assert A not in caplog.text and B not in caplog.text and "oops ***" in caplog.text
    assert token_id(A) in caplog.text  # the ids are what the log names


async def test_switches_tokens_on_a_limit_then_defers_until_the_earliest_reset(
        settings: Settings) -> None:
    async with FakeGitHub(budget=3, reset_window=30.0) as fake:
        s = github_settings(settings, fake)
        async with aiohttp.ClientSession() as http:  # A spent elsewhere, unknown to the store
            for _ in range(3):
                async with http.get(f"{fake.base}/users/hub",
                                    headers={"Authorization": f"Bearer {A}"}) as r:
                    assert r.status == 200
        fake.reset_counters()
        async with GitHubFetcher(s, 4) as f:
            got = [await fetch(f, s, f"/users?per_page=1&since={i}") for i in range(3)]
            assert [p.status for p in got] == [200, 200, 200]  # A's 403, then B: no defer
            assert fake.limited == 1 and fake.used == {B: 3}
            t = await states(s)
            assert (t[token_id(A)].remaining, t[token_id(B)].remaining) == (0, 0)
            hits = sum(fake.hits.values())
            spent = await fetch(f, s, "/users?since=9")
            assert sum(fake.hits.values()) == hits  # no request: every token is spent
            assert spent.status is None and spent.error == "no GitHub token free (core)"
            assert spent.retry_after is not None and 25 <= spent.retry_after <= 33  # + the skew
            decision = GitHub(s).policy.decide(spent, 1)
            assert decision.defer is not None and not decision.retry
            # After the reset (on the fake's clock, and the store's), B is taken again.
            fake.advance(31)
            conn = await asyncpg.connect(s.database_url)
            try:
                await conn.execute("UPDATE api_token SET reset_at = now() - interval '3 s'")
            finally:
                await conn.close()
            assert (await fetch(f, s, "/users?since=9")).status == 200


async def test_a_403_at_a_reset_gitHub_has_not_reached_pauses_the_token(
        settings: Settings) -> None:
    """GitHub's clock behind ours: its 403 says Remaining 0 with a Reset already past here. The
    token is paused (not freed again at once), and a fetch sends one request per token."""
    async with FakeGitHub(budget=2, reset_window=30.0) as fake:
        fake.advance(-60)  # the fake's window ends 30 s before our now
        await fake.spend(A, 2, login="hub")
        await fake.spend(B, 2, login="hub")
        fake.reset_counters()
        s = github_settings(settings, fake, tokens=(A,))
        async with GitHubFetcher(s, 4) as f:
            pages = [await fetch(f, s, "/users/hub") for _ in range(3)]
        assert fake.limited == 1  # no burst of 403s
        for p in pages:  # deferred: the policy waits for the token
            assert p.status is None and p.error == "no GitHub token free (core)" and not p.sent
            assert p.retry_after is not None and p.retry_after >= 1
        paused = (await states(s))[token_id(A)].paused_until
        assert paused is not None
        fake.reset_counters()
        s = github_settings(settings, fake, tokens=(A, B))
        async with GitHubFetcher(s, 4) as f:
            page = await fetch(f, s, "/users/hub")
        assert fake.limited == 1 and fake.auth == {B: 1} and page.status is None


async def test_the_bound_per_token_holds_across_fetchers(settings: Settings,
                                                         fake: FakeGitHub) -> None:
    s = github_settings(settings, fake, (A,), github_token_concurrency=2)
    fake.delay["/users/hub"] = 0.2
    async with GitHubFetcher(s, 4) as f1, GitHubFetcher(s, 4) as f2:
        pages = await asyncio.gather(*(fetch(f, s, "/users/hub") for f in (f1, f2) * 4))
    assert [p.status for p in pages] == [200] * 8
    assert 1 <= fake.max_inflight <= 2 and fake.used[A] == 8


async def test_a_304_spends_nothing(settings: Settings, fake: FakeGitHub) -> None:
    s = github_settings(settings, fake, (A,))
    async with GitHubFetcher(s, 4) as f:
        first = await fetch(f, s, "/users/hub/repos?per_page=30")
        assert first.status == 200 and first.etag
        before = (await states(s))[token_id(A)].remaining
        again = await fetch(f, s, "/users/hub/repos?per_page=30",
                            validators=Validators(first.etag))
        assert again.status == 304 and again.not_modified
        assert (await states(s))[token_id(A)].remaining == before
    assert fake.used[A] == 1 and sum(fake.not_modified.values()) == 1


async def test_no_request_off_the_base_url(settings: Settings, fake: FakeGitHub) -> None:
    s = github_settings(settings, fake)
    async with FakeGitHub() as other, GitHubFetcher(s, 4) as f:
        page = await f.fetch(request(s, f"{other.base}/users/hub"), None)
        prefixed = settings.model_copy(update={"github_base_url": f"{fake.base}/api/v3",
                                               "github_tokens": (A,)})
        async with GitHubFetcher(prefixed, 4) as g:
            outside = await g.fetch(request(prefixed, f"{fake.base}/users/hub"), None)
        assert not other.hits and not fake.hits
    for p in (page, outside):
        assert p.status is None and p.permanent and "not under githubBaseUrl" in (p.error or "")


async def test_a_refused_token_is_paused_and_the_next_one_used(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    async with FakeGitHub(valid_tokens={B}) as fake:
        s = github_settings(settings, fake)
        async with GitHubFetcher(s, 4) as f:
            pages = [await fetch(f, s, "/users/hub") for _ in range(3)]
        assert [p.status for p in pages] == [200] * 3
        assert fake.auth[A] == 1 and fake.auth[B] == 3  # A asked once, then left alone
        paused = (await states(s))[token_id(A)].paused_until
        assert paused is not None
    assert f"{token_id(A)} refused (401)" in caplog.text and A not in caplog.text


async def test_every_token_refused_fails_the_page_for_good(settings: Settings) -> None:
    async with FakeGitHub(valid_tokens=set()) as fake:
        s = github_settings(settings, fake)
        async with GitHubFetcher(s, 4) as f:
            pages = [await fetch(f, s, "/users/hub") for _ in range(2)]
        assert fake.auth == {A: 1, B: 1}  # each asked once, then none again
        for p in pages:
            assert p.status is None and p.permanent and not p.sent
            assert p.error == "every GitHub token refused (401)"
            assert not GitHub(s).policy.decide(p, 1).retry
        assert all(t.limit == 0 and t.paused_until for t in (await states(s)).values())


async def test_a_cut_json_body_is_worth_another_try(settings: Settings,
                                                    fake: FakeGitHub) -> None:
    s = github_settings(settings, fake)
    fake.truncate["/users/hub/repos"] = 1
    async with GitHubFetcher(s, 4) as f:
        cut = await fetch(f, s, "/users/hub/repos")
        assert cut.status is None and cut.error == "invalid JSON (cut short?)"
        assert not cut.cacheable
        d = GitHub(s).policy.decide(cut, 1)
        assert d.retry and d.defer is None
        assert (await fetch(f, s, "/users/hub/repos")).status == 200


async def test_an_empty_repository_and_a_missing_user(settings: Settings,
                                                      fake: FakeGitHub) -> None:
    s = github_settings(settings, fake)
    empty = next(r for r in fake.graph.repos.values() if not r.contributors and not r.anonymous)
    async with GitHubFetcher(s, 4) as f:
        no_content = await fetch(f, s, f"/repos/{empty.full_name}/contributors")
        missing = await fetch(f, s, "/users/no-such-user-13")
    assert no_content.status == 204 and no_content.error is None
    assert missing.status == 404 and missing.error is not None and missing.cacheable


async def test_the_token_store_unavailable_defers(settings: Settings, fake: FakeGitHub) -> None:
    s = github_settings(settings, fake)
    async with GitHubFetcher(s, 4) as f:
        conn = await asyncpg.connect(s.database_url)
        try:
            await conn.execute("ALTER TABLE api_token RENAME TO api_token_away")
            down = await fetch(f, s, "/users/hub")
            await conn.execute("ALTER TABLE api_token_away RENAME TO api_token")
        finally:
            await conn.close()
        assert down.status is None and down.error == "GitHub token store unavailable"
        assert down.retry_after == 5.0 and not fake.hits
        assert GitHub(s).policy.decide(down, 1).defer == 5.0
        assert (await fetch(f, s, "/users/hub")).status == 200


async def test_without_tokens_requests_go_unauthenticated(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    async with FakeGitHub(require_auth=False) as fake:
        s = github_settings(settings, fake, ())
        async with GitHubFetcher(s, 4) as f:
            page = await fetch(f, s, "/users/hub")
        assert page.status == 200 and fake.auth == {"": 1}
        assert "Authorization" not in fake.log[0].headers
        assert set(await states(s)) == {"anonymous"}
        assert (await states(s))["anonymous"].limit == 60
    assert "no GitHub token" in caplog.text
