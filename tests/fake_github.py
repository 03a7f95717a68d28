"""A fake GitHub REST API on 127.0.0.1 (reference-seed-systems.md §6): a known user/repo graph,
tokens, primary and secondary rate limits, ETag/304, Link pagination, faults, and hit logs.

``async with FakeGitHub() as fake:`` serves ``fake.graph`` at ``fake.base``. Routes:
``/users`` (``since``, ``per_page``; ``page`` ignored, as on GitHub), ``/users/{login}``,
``/users/{login}/repos`` and ``/user/{id}/repos`` (``page``/``per_page``, Link in the id form),
``/repos/{o}/{r}/contributors`` and ``/repositories/{id}/contributors`` (204 for an empty repo,
``anon=1``), ``/search/users`` (``sort=joined``: newest first, own ``search`` budget, 1000 cap),
``/rate_limit`` (free), ``/robots.txt`` (404, or ``robots_txt``; no auth). Logins are
case-insensitive.

Every answer carries ``X-RateLimit-*``, an ``ETag`` (on 200/204) and a JSON content type. The
budget is per token (per client IP without one); spent → ``limited_status`` with Remaining 0 and
GitHub's message; every ``secondary_every``-th request → 429 with ``Retry-After``; a matching
``If-None-Match`` → 304, free; no ``Authorization`` with ``require_auth`` → 401. The clock is
``time.time() + offset`` (``advance(s)`` moves it, so a reset comes without sleeping).
Faults: ``faults[path]`` (statuses served first; ``RESET`` closes the connection, and aiohttp's
client retries a reset GET once, so give it twice),
``delay[path]`` (seconds before every answer; ``delay["*"]``: every path's),
``truncate[path]`` (that many cut JSON bodies);
``path`` is a path with its query (matched first) or without it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import random
import re
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from tests.servers import serve

RESET = -1  # a fault status: close the connection without an answer
DOCS = "https://docs.github.com/rest"
RATE_DOCS = "https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting"
SECONDARY_MESSAGE = ("You have exceeded a secondary rate limit. Please wait a few minutes before "
                     "you try again.")


# ---------------------------------------------------------------------------------------- graph

@dataclass
class User:
    login: str
    id: int
    type: str = "User"
    repos: list[Repo] = field(default_factory=list)


@dataclass
class Contribution:
    user: User
    contributions: int


@dataclass
class Repo:
    owner: User
    name: str
    id: int
    fork: bool = False
    contributors: list[Contribution] = field(default_factory=list)  # contributions descending
    anonymous: list[tuple[str, str, int]] = field(default_factory=list)  # (email, name, n)

    @property
    def full_name(self) -> str:
        return f"{self.owner.login}/{self.name}"


@dataclass
class Graph:
    """Users (ascending ids with gaps), their repos, and each repo's contributors."""
    users: list[User]

    def __post_init__(self) -> None:
        self.by_login = {u.login.lower(): u for u in self.users}
        self.by_id = {u.id: u for u in self.users}
        self.repos = {r.id: r for u in self.users for r in u.repos}
        self.by_full_name = {r.full_name.lower(): r for r in self.repos.values()}

    def user(self, login: str) -> User:
        return self.by_login[login.lower()]

    def first_users(self, n: int) -> list[User]:
        """What ``/users`` lists first: the n lowest ids (organisations included, as on GitHub)."""
        return self.users[:n]

    def newest_users(self, n: int) -> list[User]:
        """What ``/search/users?q=type:user&sort=joined&order=desc`` lists first."""
        return [u for u in reversed(self.users) if u.type == "User"][:n]

    def contributors_of(self, login: str) -> set[str]:
        """Lower-case logins of every contributor to any repo of ``login`` (forks included)."""
        return {c.user.login.lower() for r in self.user(login).repos for c in r.contributors}

    def closure(self, login: str, depth: int) -> set[str]:
        """The seed's ``close_contributors``: {login} then ``depth`` rounds of contributors of
        the repos of everyone found so far; lower-case, the start user included."""
        found = {login.lower()}
        frontier = set(found)
        for _ in range(depth):
            new = set().union(*(self.contributors_of(u) for u in frontier)) - found
            found |= new
            frontier = new
        return found

    def requests_for(self, login: str, depth: int, per_page: int) -> int:
        """How many API pages a crawl of ``closure(login, depth)`` fetches (each page once)."""
        pages = 1  # the profile
        frontier, seen = {login.lower()}, {login.lower()}
        for _ in range(depth):
            new: set[str] = set()
            for u in frontier:
                repos = self.user(u).repos
                pages += max(1, math.ceil(len(repos) / per_page))
                for r in repos:
                    pages += max(1, math.ceil(len(r.contributors) / per_page))
                    new |= {c.user.login.lower() for c in r.contributors}
            frontier = new - seen
            seen |= new
        return pages


def make_graph(seed: int = 13, n_users: int = 300) -> Graph:
    """A deterministic graph: ids with gaps; ``hub`` owns 35 repos (more than a page of 30), one of
    them ``hub/big`` with 40 contributors, two of them empty (204); ``MixedCase`` contributes to
    hub's repos under its mixed-case login; ``loner`` has no repos; ``hugodelval`` (the seed's
    default user) has a few; two organisations appear in ``/users`` but not in user search."""
    rng = random.Random(seed)
    names = ["mojombo", "defunkt", "pjhyett", "wycats", "hub", "MixedCase", "loner",
             "hugodelval", "acme-org", "octo-org"]
    users: list[User] = []
    uid = 0
    for i in range(n_users):
        uid += rng.choice((1, 1, 1, 2, 3, 7))
        login = names[i] if i < len(names) else f"u{uid}"
        users.append(User(login, uid, "Organization" if login.endswith("-org") else "User"))
    people = [u for u in users if u.type == "User" and u.login not in ("loner",)]
    by = {u.login: u for u in users}
    repo_id = [100000]

    def repo(owner: User, name: str, contributors: list[User], fork: bool = False) -> Repo:
        repo_id[0] += rng.choice((1, 2, 5))
        counts = rng.sample(range(1, 5000), len(contributors))  # distinct: a total order
        r = Repo(owner, name, repo_id[0], fork,
                 sorted((Contribution(u, n) for u, n in zip(contributors, counts, strict=True)),
                        key=lambda c: -c.contributions))
        owner.repos.append(r)
        return r

    def some(k: int, owner: User) -> list[User]:
        others = rng.sample([u for u in people if u is not owner], k)
        return [owner, *others] if rng.random() < 0.7 else others

    hub = by["hub"]
    repo(hub, "big", rng.sample([u for u in people if u is not hub], 40))
    repo(hub, "empty-a", [])
    repo(hub, "empty-b", [])
    for k in range(32):
        contributors = some(rng.randint(1, 2), hub)
        if k == 3:
            contributors.append(by["MixedCase"])
        r = repo(hub, f"lib{k:02d}", contributors, fork=k % 5 == 0)
        if k % 8 == 0:
            r.anonymous.append((f"anon{k}@example.com", f"Anon {k}", 1))
    repo(by["MixedCase"], "Tools", some(1, by["MixedCase"]))
    repo(by["hugodelval"], "github-crawler", [by["hugodelval"], *rng.sample(people, 3)])
    repo(by["hugodelval"], "dotfiles", [by["hugodelval"]])
    for u in users[len(names):]:
        for k in range(rng.choice((0, 0, 1, 1, 1, 2))):
            repo(u, f"r{k}", some(rng.randint(0, 2), u), fork=rng.random() < 0.2)
    return Graph(users)


# ---------------------------------------------------------------------------------------- server

@dataclass
class Budget:
    used: int = 0
    reset_at: float = 0.0


@dataclass
class Seen:
    path_qs: str
    status: int
    headers: dict[str, str]  # Authorization, User-Agent, Cookie, If-None-Match as sent


class FakeGitHub:
    """See the module docstring. Counters are plain attributes; ``reset_counters()`` clears them."""

    def __init__(self, graph: Graph | None = None, *, budget: int = 5000, anon_budget: int = 60,
                 search_budget: int = 30, reset_window: float = 3600.0,
                 limited_status: int = 403, require_auth: bool = True,
                 secondary_every: int = 0, retry_after: int = 1,
                 valid_tokens: Collection[str] | None = None) -> None:
        self.graph = graph or make_graph()
        self.budget, self.anon_budget, self.search_budget = budget, anon_budget, search_budget
        self.reset_window = reset_window
        self.limited_status = limited_status
        self.require_auth = require_auth
        self.secondary_every = secondary_every
        self.retry_after = retry_after
        self.valid_tokens = None if valid_tokens is None else set(valid_tokens)
        self.offset = 0.0
        self.faults: dict[str, list[int]] = {}
        self.delay: dict[str, float] = {}
        self.truncate: dict[str, int] = {}
        self.robots_txt: str | None = None
        self.base = ""
        self._runner: web.AppRunner | None = None
        self._budgets: dict[tuple[str, str], Budget] = {}
        self._counted = 0  # requests seen by the secondary limit
        self.reset_counters()

    def reset_counters(self) -> None:
        self.hits: Counter[str] = Counter()          # every request, by path_qs
        self.served: Counter[str] = Counter()        # 200/204 answers, by path_qs
        self.not_modified: Counter[str] = Counter()  # 304 answers, by path_qs
        self.limited = 0                             # primary-limit answers (403/429)
        self.secondary = 0                           # secondary-limit answers (429 + Retry-After)
        self.auth: Counter[str] = Counter()          # requests by token ("" without one)
        self.used: Counter[str] = Counter()          # budget spent, by token ("" without one)
        self.log: list[Seen] = []
        self.inflight = 0
        self.max_inflight = 0

    # -- lifecycle

    async def __aenter__(self) -> Self:
        self._runner, self.base = await serve(self._handle)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def spend(self, token: str, n: int, login: str = "loner") -> None:
        """Spend ``n`` of ``token``'s budget outside Harvester (another client of the account),
        fetching user ``login``."""
        async with aiohttp.ClientSession() as http:
            for _ in range(n):
                async with http.get(f"{self.base}/users/{login}",
                                    headers={"Authorization": f"Bearer {token}"}) as r:
                    assert r.status == 200

    # -- clock

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    # -- JSON shapes (GitHub's field order)

    def simple_user(self, u: User) -> dict[str, Any]:
        api = f"{self.base}/users/{u.login}"
        return {
            "login": u.login, "id": u.id, "node_id": f"MDQ6VXNlcj{u.id}",
            "avatar_url": f"https://avatars.githubusercontent.com/u/{u.id}?v=4", "gravatar_id": "",
            "url": api, "html_url": f"https://github.com/{u.login}",
            "followers_url": f"{api}/followers", "following_url": f"{api}/following{{/other_user}}",
            "gists_url": f"{api}/gists{{/gist_id}}", "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
            "subscriptions_url": f"{api}/subscriptions", "organizations_url": f"{api}/orgs",
            "repos_url": f"{api}/repos", "events_url": f"{api}/events{{/privacy}}",
            "received_events_url": f"{api}/received_events", "type": u.type,
            "user_view_type": "public", "site_admin": False,
        }

    def profile(self, u: User) -> dict[str, Any]:
        return {**self.simple_user(u), "name": u.login.title(), "company": None, "blog": "",
                "location": None, "email": None, "hireable": None, "bio": None,
                "twitter_username": None, "public_repos": len(u.repos), "public_gists": 0,
                "followers": 0, "following": 0, "created_at": _date(u.id),
                "updated_at": _date(u.id + 1)}

    def repo_json(self, r: Repo) -> dict[str, Any]:
        api = f"{self.base}/repos/{r.full_name}"
        return {
            "id": r.id, "node_id": f"MDEwOlJlcG9zaXRvcn{r.id}", "name": r.name,
            "full_name": r.full_name, "private": False, "owner": self.simple_user(r.owner),
            "html_url": f"https://github.com/{r.full_name}", "description": None, "fork": r.fork,
            "url": api, "forks_url": f"{api}/forks", "contributors_url": f"{api}/contributors",
            "languages_url": f"{api}/languages", "stargazers_url": f"{api}/stargazers",
            "commits_url": f"{api}/commits{{/sha}}", "issues_url": f"{api}/issues{{/number}}",
            "created_at": _date(r.id), "updated_at": _date(r.id + 1), "pushed_at": _date(r.id + 2),
            "clone_url": f"https://github.com/{r.full_name}.git", "homepage": None, "size": 0,
            "stargazers_count": 0, "watchers_count": 0, "language": None, "forks_count": 0,
            "archived": False, "disabled": False, "open_issues_count": 0, "license": None,
            "forks": 0, "open_issues": 0, "watchers": 0, "default_branch": "main",
        }

    # -- request handling

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path_qs] += 1
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            delay = self._lookup(self.delay, request) or self.delay.get("*")
            if delay:
                await asyncio.sleep(delay)
            response = await self._answer(request)
        finally:
            self.inflight -= 1
        self.log.append(Seen(request.path_qs, response.status, {
            k: request.headers[k] for k in ("Authorization", "User-Agent", "Cookie",
                                            "If-None-Match") if k in request.headers}))
        return response

    @staticmethod
    def _lookup(table: dict[str, Any], request: web.Request) -> Any:
        if request.path_qs in table:
            return table[request.path_qs]
        return table.get(request.path)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/robots.txt":  # none unless a test sets one
            if self.robots_txt is None:
                return web.Response(status=404, text="")
            return web.Response(text=self.robots_txt)
        faults = self._lookup(self.faults, request)
        if faults:
            status = faults.pop(0)
            if status == RESET:
                if request.transport:
                    request.transport.abort()
                return web.Response(status=500)
            return _json(status, {"message": "Server Error", "documentation_url": DOCS})
        token, error = self._token(request)
        self.auth[token] += 1
        if error is not None:
            return error
        resource = "search" if request.path.startswith("/search/") else "core"
        if request.path == "/rate_limit":
            return _json(200, self._rate_limit(token))
        key = (token or f"ip:{request.remote}", resource)
        b = self._budget(key)
        limit = self._limit(token, resource)
        if b.used >= limit:
            self.limited += 1
            return _json(self.limited_status, {
                "message": f"API rate limit exceeded for {request.remote}.",
                "documentation_url": RATE_DOCS}, self._rate_headers(key, resource))
        if self.secondary_every:
            self._counted += 1
            if self._counted % self.secondary_every == 0:
                self.secondary += 1
                return _json(429, {"message": SECONDARY_MESSAGE, "documentation_url": RATE_DOCS},
                             {**self._rate_headers(key, resource),
                              "Retry-After": str(self.retry_after)})
        status, body, link = self._route(request)
        payload = b"" if status == 204 else json.dumps(body).encode()
        etag = '"' + hashlib.sha1(payload).hexdigest() + '"'
        if not token:
            etag = "W/" + etag
        if status in (200, 204) and request.headers.get("If-None-Match") == etag:
            self.not_modified[request.path_qs] += 1
            return web.Response(status=304, headers={**self._rate_headers(key, resource),
                                                     "ETag": etag})
        b.used += 1
        self.used[token] += 1
        headers = self._rate_headers(key, resource)
        if status in (200, 204):
            self.served[request.path_qs] += 1
            headers["ETag"] = etag
            headers["Cache-Control"] = "private, max-age=60, s-maxage=60"
        if link:
            headers["Link"] = link
        cut = self._lookup(self.truncate, request)
        if cut and status == 200:
            self.truncate[request.path_qs if request.path_qs in self.truncate
                          else request.path] = cut - 1
            payload = payload[: len(payload) // 2]
        if status == 204:
            return web.Response(status=204, headers=headers)
        return web.Response(status=status, body=payload, headers=headers,
                            content_type="application/json", charset="utf-8")

    def _token(self, request: web.Request) -> tuple[str, web.Response | None]:
        value = request.headers.get("Authorization", "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "basic":
            token = base64.b64decode(token).decode().partition(":")[2]
        elif scheme.lower() not in ("bearer", "token"):
            token = ""
        token = token.strip()
        if not token and self.require_auth:
            return "", _json(401, {"message": "Requires authentication", "documentation_url": DOCS})
        if token and self.valid_tokens is not None and token not in self.valid_tokens:
            return token, _json(401, {"message": "Bad credentials", "documentation_url": DOCS})
        return token, None

    def _limit(self, token: str, resource: str) -> int:
        if resource == "search":
            return self.search_budget
        return self.budget if token else self.anon_budget

    def _budget(self, key: tuple[str, str]) -> Budget:
        b = self._budgets.setdefault(key, Budget())
        if self.now() >= b.reset_at:  # a new window starts with the first request after a reset
            b.used, b.reset_at = 0, self.now() + self.reset_window
        return b

    def _rate_headers(self, key: tuple[str, str], resource: str) -> dict[str, str]:
        b = self._budgets[key]
        limit = self._limit(key[0] if not key[0].startswith("ip:") else "", resource)
        return {"X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": str(max(0, limit - b.used)),
                "X-RateLimit-Used": str(b.used), "X-RateLimit-Reset": str(math.ceil(b.reset_at)),
                "X-RateLimit-Resource": resource,
                "X-GitHub-Media-Type": "github.v3; format=json",
                "X-GitHub-Api-Version-Selected": "2022-11-28",
                "X-GitHub-Request-Id": f"FAKE:{len(self.log)}"}

    def _rate_limit(self, token: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for resource in ("core", "search"):
            key = (token or "ip:127.0.0.1", resource)
            b = self._budget(key)
            limit = self._limit(token, resource)
            out[resource] = {"limit": limit, "remaining": max(0, limit - b.used),
                             "reset": math.ceil(b.reset_at), "used": b.used}
        return {"resources": out, "rate": out["core"]}

    # -- routes: (status, body, Link header)

    def _route(self, request: web.Request) -> tuple[int, Any, str | None]:
        path, q = request.path, request.query
        if path == "/users":
            return self._users(q)
        if path == "/search/users":
            return self._search(q)
        if m := re.fullmatch(r"/users/([^/]+)", path):
            u = self.graph.by_login.get(m[1].lower())
            return (200, self.profile(u), None) if u else _not_found()
        if m := re.fullmatch(r"/users/([^/]+)/repos", path):
            return self._repos(self.graph.by_login.get(m[1].lower()), q)
        if m := re.fullmatch(r"/user/(\d+)/repos", path):
            return self._repos(self.graph.by_id.get(int(m[1])), q)
        if m := re.fullmatch(r"/repos/([^/]+)/([^/]+)/contributors", path):
            return self._contributors(self.graph.by_full_name.get(f"{m[1]}/{m[2]}".lower()), q)
        if m := re.fullmatch(r"/repositories/(\d+)/contributors", path):
            return self._contributors(self.graph.repos.get(int(m[1])), q)
        return _not_found()

    def _users(self, q: Any) -> tuple[int, Any, str | None]:
        since, per_page = _int(q.get("since"), 0), _per_page(q)
        page = [u for u in self.graph.users if u.id > since][:per_page]
        link = f'<{self.base}/users{{?since}}>; rel="first"'
        if page:
            params = {"per_page": per_page} if "per_page" in q else {}
            nxt = f"{self.base}/users?{urlencode({**params, 'since': page[-1].id})}"
            link = f'<{nxt}>; rel="next", ' + link
        return 200, [self.simple_user(u) for u in page], link

    def _search(self, q: Any) -> tuple[int, Any, str | None]:
        users = [u for u in self.graph.users
                 if "type:user" not in q.get("q", "") or u.type == "User"]
        if q.get("sort") == "joined":
            users.sort(key=lambda u: u.id, reverse=q.get("order", "desc") == "desc")
        page, per_page = _int(q.get("page"), 1), _per_page(q)
        if page * per_page > 1000 + per_page:
            return 422, {"message": "Only the first 1000 search results are available",
                         "documentation_url": DOCS}, None
        total = len(users)
        users = users[:1000]
        items = [{**self.simple_user(u), "score": 1.0}
                 for u in users[(page - 1) * per_page: page * per_page]]
        return 200, {"total_count": total, "incomplete_results": False, "items": items}, \
            self._page_links("/search/users", q, page, per_page, len(users))

    def _repos(self, u: User | None, q: Any) -> tuple[int, Any, str | None]:
        if u is None:
            return _not_found()
        repos = [] if q.get("type") == "member" else list(u.repos)
        sort = q.get("sort", "full_name")
        if sort == "full_name":
            repos.sort(key=lambda r: r.name.lower(), reverse=q.get("direction") == "desc")
        else:
            repos.sort(key=lambda r: r.id, reverse=q.get("direction", "desc") == "desc")
        page, per_page = _int(q.get("page"), 1), _per_page(q)
        return 200, [self.repo_json(r) for r in repos[(page - 1) * per_page: page * per_page]], \
            self._page_links(f"/user/{u.id}/repos", q, page, per_page, len(repos))

    def _contributors(self, r: Repo | None, q: Any) -> tuple[int, Any, str | None]:
        if r is None:
            return _not_found()
        entries: list[dict[str, Any]] = [{**self.simple_user(c.user),
                                          "contributions": c.contributions}
                                         for c in r.contributors]
        if q.get("anon") in ("1", "true"):
            entries += [{"email": e, "name": n, "type": "Anonymous", "contributions": k}
                        for e, n, k in r.anonymous]
            entries.sort(key=lambda e: -int(e["contributions"]))
        if not entries:
            return 204, None, None
        page, per_page = _int(q.get("page"), 1), _per_page(q)
        return 200, entries[(page - 1) * per_page: page * per_page], \
            self._page_links(f"/repositories/{r.id}/contributors", q, page, per_page, len(entries))

    def _page_links(self, path: str, q: Any, page: int, per_page: int, total: int) -> str | None:
        last = max(1, math.ceil(total / per_page))
        params = {k: v for k, v in q.items() if k != "page"}

        def url(p: int) -> str:
            return f"{self.base}{path}?{urlencode({**params, 'page': p})}"

        rels = []
        if page > 1:
            rels.append((url(page - 1), "prev"))
        if page < last:
            rels += [(url(page + 1), "next"), (url(last), "last")]
        if page > 1:
            rels.append((url(1), "first"))
        return ", ".join(f'<{u}>; rel="{r}"' for u, r in rels) or None


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), headers=headers,
                        content_type="application/json", charset="utf-8")


def _not_found() -> tuple[int, Any, None]:
    return 404, {"message": "Not Found", "documentation_url": DOCS, "status": "404"}, None


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _per_page(q: Any) -> int:
    return min(100, max(1, _int(q.get("per_page"), 30)))


def _date(n: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_200_000_000 + n * 3600))
