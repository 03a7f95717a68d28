"""worker/extractors/github.py: each kind of GitHub answer (reference-seed-systems.md §5) and the
yields it makes; the recorded Link headers; anonymous contributors; a GitHub Enterprise prefix."""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from shared.config import Settings
from shared.model import FetchedPage, Yield
from worker.extractors import ExtractFailed
from worker.extractors.github import GitHubLinks, api_path, parse_link, read, with_per_page

API = "https://api.github.com"


def user(login: str, uid: int, base: str = API) -> dict[str, Any]:
    api = f"{base}/users/{login}"
    return {"login": login, "id": uid, "node_id": "x", "avatar_url": "a", "gravatar_id": "",
            "url": api, "html_url": f"https://github.com/{login}",
            "following_url": f"{api}/following{{/other_user}}", "repos_url": f"{api}/repos",
            "type": "User", "site_admin": False}


def body(data: Any) -> bytes:
    return json.dumps(data).encode()


def links(yields: tuple[Yield, ...]) -> list[dict[str, Any]]:
    return [y.value for y in yields if y.kind == "link"]


def items(yields: tuple[Yield, ...]) -> list[dict[str, Any]]:
    return [y.value for y in yields if y.kind == "item"]


def test_parse_link_the_recorded_headers() -> None:
    assert parse_link('<https://api.github.com/users?since=46>; rel="next", '
                      '<https://api.github.com/users{?since}>; rel="first"') == {
        "next": "https://api.github.com/users?since=46",
        "first": "https://api.github.com/users{?since}"}
    assert parse_link('<https://api.github.com/user/583231/repos?per_page=100&page=2>; '
                      'rel="next", <https://api.github.com/user/583231/repos?per_page=100'
                      '&page=9>; rel="last"')["next"] == \
        "https://api.github.com/user/583231/repos?per_page=100&page=2"
    middle = ('<https://api.github.com/repositories/364461870/issues?per_page=3&page=3>; '
              'rel="prev", <https://api.github.com/repositories/364461870/issues?per_page=3'
              '&page=5>; rel="next", <https://api.github.com/repositories/364461870/issues?'
              'per_page=3&page=5>; rel="last", <https://api.github.com/repositories/364461870/'
              'issues?per_page=3&page=1>; rel="first"')
    assert set(parse_link(middle)) == {"prev", "next", "last", "first"}
    assert parse_link(middle)["next"].endswith("page=5")
    last = ('<https://api.github.com/repositories/1/contributors?page=1>; rel="prev", '
            '<https://api.github.com/repositories/1/contributors?page=1>; rel="first"')
    assert "next" not in parse_link(last)
    assert parse_link(None) == {} and parse_link("") == {} and parse_link("garbage") == {}


def test_with_per_page() -> None:
    assert with_per_page(f"{API}/users/x/repos", 30) == f"{API}/users/x/repos?per_page=30"
    assert with_per_page(f"{API}/u?per_page=5&page=2", 30) == f"{API}/u?per_page=5&page=2"
    assert with_per_page(f"{API}/users/x/following{{/other_user}}", 7) == \
        f"{API}/users/x/following?per_page=7"


def test_users_list_and_its_next_page_by_since() -> None:
    page = [user("mojombo", 1), user("defunkt", 2), user("wycats", 4)]
    ex = read(f"{API}/users?per_page=3", API, body(page),
              f'<{API}/users?per_page=3&since=4>; rel="next", <{API}/users{{?since}}>; '
              'rel="first"', 100)
    assert items(ex.yields) == [{"_type": "user", **u} for u in page]
    assert links(ex.yields) == [{"url": f"{API}/users?per_page=3&since=4", "rel": "next"}]
    assert ex.links == ()  # a github job follows its yields only
    # The last page: empty, no next.
    assert read(f"{API}/users?since=99", API, b"[]", None, 100).yields == ()


def test_search_users_items() -> None:
    found = {"total_count": 2, "incomplete_results": False,
             "items": [{**user("new", 9), "score": 1.0}, {**user("older", 8), "score": 1.0}]}
    ex = read(f"{API}/search/users?q=type:user&sort=joined&order=desc", API, body(found),
              None, 100)
    assert [i["login"] for i in items(ex.yields)] == ["new", "older"]
    assert all(i["_type"] == "user" for i in items(ex.yields))


def test_profile_links_its_repos_with_per_page() -> None:
    ex = read(f"{API}/users/hugodelval", API, body(user("hugodelval", 7)), None, 30)
    assert items(ex.yields) == [{"_type": "profile", **user("hugodelval", 7)}]
    assert links(ex.yields) == [{"url": f"{API}/users/hugodelval/repos?per_page=30"}]


def test_repos_each_links_its_contributors_forks_too() -> None:
    repos = [{"id": 10, "name": "a", "full_name": "u/a", "fork": False,
              "contributors_url": f"{API}/repos/u/a/contributors"},
             {"id": 11, "name": "b", "full_name": "u/b", "fork": True,
              "contributors_url": f"{API}/repos/u/b/contributors"}]
    for url in (f"{API}/users/u/repos?per_page=2", f"{API}/user/583231/repos?page=2&per_page=2"):
        ex = read(url, API, body(repos),
                  f'<{API}/user/583231/repos?per_page=2&page=3>; rel="next"', 2)
        assert items(ex.yields) == [{"_type": "repo", "id": 10, "full_name": "u/a", "fork": False},
                                    {"_type": "repo", "id": 11, "full_name": "u/b", "fork": True}]
        assert links(ex.yields) == [
            {"url": f"{API}/repos/u/a/contributors?per_page=2"},
            {"url": f"{API}/repos/u/b/contributors?per_page=2"},
            {"url": f"{API}/user/583231/repos?page=3&per_page=2", "rel": "next"}]  # canonical


def test_contributors_anonymous_skipped_and_the_id_form() -> None:
    people = [{**user("Alice", 5), "contributions": 40},
              {"email": "x@y", "name": "X", "type": "Anonymous", "contributions": 9},
              {**user("bob", 6), "contributions": 2}]
    ex = read(f"{API}/repos/u/a/contributors?anon=1&per_page=3", API, body(people),
              f'<{API}/repositories/10/contributors?anon=1&per_page=3&page=2>; rel="next"', 3)
    assert items(ex.yields) == [
        {"_type": "contributor", "login": "Alice", "id": 5, "contributions": 40, "repo": "u/a"},
        {"_type": "contributor", "login": "bob", "id": 6, "contributions": 2, "repo": "u/a"}]
    assert links(ex.yields) == [
        {"url": f"{API}/users/Alice/repos?per_page=3"},
        {"url": f"{API}/users/bob/repos?per_page=3"},
        {"url": f"{API}/repositories/10/contributors?anon=1&page=2&per_page=3", "rel": "next"}]
    later = read(f"{API}/repositories/10/contributors?page=2&per_page=3", API,
                 body([{**user("carol", 7), "contributions": 1}]), None, 3)
    assert items(later.yields)[0]["repo"] == "10"


def test_an_empty_repository_204_yields_nothing() -> None:
    assert read(f"{API}/repos/u/empty/contributors", API, b"", None, 30).yields == ()
    assert read(f"{API}/repos/u/empty/contributors", API, None, None, 30).yields == ()


def test_a_github_enterprise_prefix() -> None:
    base = "https://ghe.example.com/api/v3"
    ex = read(f"{base}/users/octo", base, body(user("octo", 3, base)), None, 50)
    assert items(ex.yields)[0]["_type"] == "profile"
    assert links(ex.yields) == [{"url": f"{base}/users/octo/repos?per_page=50"}]


@pytest.mark.parametrize(("url", "data"), [
    (f"{API}/users/x", b"{not json"),
    (f"{API}/users/x", body([1, 2])),               # a profile must be an object
    (f"{API}/users", body({"message": "hi"})),      # a list must be a list
    (f"{API}/users/x/repos", body([1])),            # of objects
    (f"{API}/search/users", body([])),
    (f"{API}/gists", body([])),                     # no answer known there
])
def test_wrong_shapes_fail(url: str, data: bytes) -> None:
    with pytest.raises(ExtractFailed):
        read(url, API, data, None, 30)


async def test_the_extractor_reads_the_link_header_of_2xx_json() -> None:
    x = GitHubLinks(Settings(github_base_url=API, github_per_page=30))
    headers = CIMultiDictProxy(CIMultiDict({"Link": f'<{API}/users?since=4>; rel="next"'}))
    page = FetchedPage(1, 200, "application/json", None, True, body=b"[]", headers=headers)
    assert x.accepts(page)
    ex = await x.extract(page, f"{API}/users")
    assert links(ex.yields) == [{"url": f"{API}/users?since=4", "rel": "next"}]
    assert not x.accepts(FetchedPage(1, 404, "application/json", "HTTP 404", True, body=b"{}"))
    assert not x.accepts(FetchedPage(1, 204, None, None, True))


@pytest.mark.parametrize(("url", "base", "path"), [
    ("https://api.github.com/users/x", "https://api.github.com", "/users/x"),
    ("https://API.github.com/users/x/", "https://api.github.com/", "/users/x"),
    ("https://api.github.com", "https://api.github.com", "/"),
    ("https://ghe.example.com/api/v3/users/x", "https://ghe.example.com/api/v3/", "/users/x"),
    ("https://ghe.example.com/api/v3", "https://ghe.example.com/api/v3", "/"),
    ("https://ghe.example.com/api/v30/users", "https://ghe.example.com/api/v3", None),
    ("https://other.example.com/api/v3/users", "https://ghe.example.com/api/v3", None),
    ("http://api.github.com/users/x", "https://api.github.com", None),
    ("https://[::1/users", "https://api.github.com", None),
])
def test_api_path_is_the_one_reading_of_under_the_base(url: str, base: str,
                                                       path: str | None) -> None:
    # The fetcher (None: refused, no request) and the extractor read it alike.
    assert api_path(url, base) == path
