"""The fake GitHub API itself: shapes, pagination, limits, 304, faults (the e2e tests lean on it)."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest

from tests.fake_github import RESET, FakeGitHub, make_graph

TOKEN = "ghp_fakeTokenA000001"


async def get(s: aiohttp.ClientSession, url: str, token: str | None = TOKEN,
              **headers: str) -> tuple[int, Any, Any]:
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with s.get(url, headers=headers) as r:
        text = await r.text()
        return r.status, (await r.json() if text and r.status != 304 else None), r.headers


def next_link(headers: Any) -> str | None:
    m = re.search(r'<([^>]+)>; rel="next"', headers.get("Link", ""))
    return m[1] if m else None


def test_graph_has_what_the_tests_need() -> None:
    g = make_graph()
    assert len(g.users) == 300
    ids = [u.id for u in g.users]
    assert ids == sorted(ids) and ids[-1] - ids[0] + 1 > len(ids)  # gaps
    hub = g.user("HUB")
    assert len(hub.repos) == 35
    assert len(g.by_full_name["hub/big"].contributors) == 40
    assert sum(not r.contributors for r in hub.repos) == 2
    assert "mixedcase" in g.closure("hub", 1)
    assert g.closure("loner", 2) == {"loner"}
    assert g.closure("hub", 0) == {"hub"}
    assert g.closure("hub", 1) < g.closure("hub", 2)
    assert [u.id for u in g.newest_users(3)] == sorted(
        (u.id for u in g.users if u.type == "User"), reverse=True)[:3]


async def test_users_pages_by_since_and_ignores_page() -> None:
    async with FakeGitHub() as fake, aiohttp.ClientSession() as s:
        url: str | None = f"{fake.base}/users?per_page=30&page=7"
        seen: list[int] = []
        while url:
            status, body, headers = await get(s, url)
            assert status == 200
            seen += [u["id"] for u in body]
            assert headers["X-RateLimit-Resource"] == "core"
            url = next_link(headers)
            if url:
                assert "page=" not in url.replace("per_page=", "")
                assert url.endswith(f"since={body[-1]['id']}")
        assert seen == [u.id for u in fake.graph.users]
        assert list(body) == []  # the last page is empty and has no next
        assert list(fake.simple_user(fake.graph.users[0]))[:4] == ["login", "id", "node_id",
                                                                   "avatar_url"]


async def test_repos_and_contributors_link_in_id_form_and_204() -> None:
    async with FakeGitHub() as fake, aiohttp.ClientSession() as s:
        hub = fake.graph.user("hub")
        status, body, headers = await get(s, f"{fake.base}/users/Hub/repos?per_page=30")
        assert status == 200 and len(body) == 30
        assert next_link(headers) == f"{fake.base}/user/{hub.id}/repos?per_page=30&page=2"
        status, body2, headers = await get(s, next_link(headers) or "")
        assert len(body2) == 5 and next_link(headers) is None
        big = fake.graph.by_full_name["hub/big"]
        status, body, headers = await get(s, f"{fake.base}/repos/hub/BIG/contributors")
        assert len(body) == 30 and [c["contributions"] for c in body] == sorted(
            (c["contributions"] for c in body), reverse=True)
        assert next_link(headers) == f"{fake.base}/repositories/{big.id}/contributors?page=2"
        status, body, headers = await get(s, f"{fake.base}/repos/hub/empty-a/contributors")
        assert status == 204 and body is None
        status, body, _ = await get(s, f"{fake.base}/users/nobody-here")
        assert status == 404 and body["message"] == "Not Found"
        lib0 = fake.graph.by_full_name["hub/lib00"]
        status, body, _ = await get(s, f"{fake.base}/repositories/{lib0.id}/contributors?anon=1")
        assert any(e["type"] == "Anonymous" for e in body)


async def test_limits_304_auth_and_faults() -> None:
    async with FakeGitHub(budget=3, reset_window=100, secondary_every=0) as fake, \
            aiohttp.ClientSession() as s:
        url = f"{fake.base}/users/hub"
        status, _, headers = await get(s, url)
        assert headers["X-RateLimit-Remaining"] == "2"
        etag = headers["ETag"]
        status, _, headers = await get(s, url, **{"If-None-Match": etag})
        assert status == 304 and headers["X-RateLimit-Remaining"] == "2"
        await get(s, url + "x")
        await get(s, url + "y")
        status, body, headers = await get(s, url)
        assert status == 403 and headers["X-RateLimit-Remaining"] == "0"
        assert "rate limit" in body["message"] and fake.limited == 1
        status, _, _ = await get(s, url, token="ghp_fakeTokenB000002")  # another token's budget
        assert status == 200
        fake.advance(101)
        status, _, _ = await get(s, url)
        assert status == 200
        status, body, _ = await get(s, url, token=None)
        assert status == 401 and fake.auth[""] == 1
        assert fake.used[TOKEN] == 4 and fake.served[url.removeprefix(fake.base)] == 3
        fake.faults["/users/hub"] = [500, RESET, RESET]  # aiohttp's client retries a reset once
        assert (await get(s, url))[0] == 500
        with pytest.raises(aiohttp.ClientError):
            await get(s, url)
        fake.truncate["/users/hub"] = 1
        async with s.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            with pytest.raises(ValueError):
                await r.json()
        assert fake.max_inflight >= 1


async def test_secondary_limit_and_search() -> None:
    async with FakeGitHub(secondary_every=2, retry_after=3, limited_status=429) as fake, \
            aiohttp.ClientSession() as s:
        url = f"{fake.base}/search/users?q=type:user&sort=joined&order=desc&per_page=5"
        status, body, headers = await get(s, url)
        assert status == 200 and headers["X-RateLimit-Resource"] == "search"
        assert [u["id"] for u in body["items"]] == [u.id for u in fake.graph.newest_users(5)]
        assert "page=2" in (next_link(headers) or "")
        status, body, headers = await get(s, url)
        assert status == 429 and headers["Retry-After"] == "3" and fake.secondary == 1
        status, body, _ = await get(s, f"{fake.base}/rate_limit")
        assert body["resources"]["search"]["used"] == 1
