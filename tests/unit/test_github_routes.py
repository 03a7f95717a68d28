"""GET /users and /contributors parameters become github job specs (web_server/github.py); every
bad one is a 400 naming it."""

from __future__ import annotations

import pytest

from shared.config import Settings
from shared.errors import BadRequest
from web_server.github import contributors_spec, users_spec

S = Settings(fetcher_kinds=("http", "github"), github_base_url="http://127.0.0.1:9",
             github_per_page=30, max_depth=10)


def test_users_defaults_and_pages() -> None:
    spec = users_spec({}, S)
    assert spec.stored()["github"] == {"users": 20, "order": "id"}
    assert spec.urls == ("http://127.0.0.1:9/users?per_page=20",)
    assert (spec.fetcher, spec.scope.max_pages) == ("github", 1)
    spec = users_spec({"nb": "250"}, S)
    assert (spec.urls, spec.scope.max_pages) == (("http://127.0.0.1:9/users?per_page=30",), 9)
    newest = users_spec({"nb": "45", "order": "newest"}, S)
    assert "/search/users?" in newest.urls[0] and newest.stored()["github"]["order"] == "newest"


def test_contributors_defaults_case_and_depth_cap() -> None:
    spec = contributors_spec({}, S)
    assert spec.stored()["github"] == {"contributors": "hugodelval", "depth": 1}
    assert spec.max_level == 3
    spec = contributors_spec({"user": "MixedCase", "depth": "4"}, S)
    assert spec.urls == ("http://127.0.0.1:9/users/mixedcase",) and spec.max_level == 9


@pytest.mark.parametrize(("route", "query", "message"), [
    ("users", {"nb": "0"}, "Invalid nb: 0 (allowed 1 to 100000)"),
    ("users", {"nb": "x"}, "Invalid nb: x"),
    ("users", {"nb": "9" * 5000}, "Invalid nb: 9"),
    ("users", {"order": "joined"}, "Invalid order: joined (use id or newest)"),
    ("users", {"nb": "1001", "order": "newest"}, "Invalid nb: 1001 (at most 1000"),
    ("contributors", {"user": "-x"}, "Invalid user: -x (a GitHub login)"),
    ("contributors", {"user": "a\x00b"}, "Invalid user: a"),
    ("contributors", {"depth": "5"}, "Invalid depth: 5 (allowed 0 to 4)"),
    ("contributors", {"depth": "-1"}, "Invalid depth: -1"),
])
def test_bad_parameters_are_400(route: str, query: dict[str, str], message: str) -> None:
    build = users_spec if route == "users" else contributors_spec
    with pytest.raises(BadRequest) as e:
        build(query, S)
    assert e.value.message.startswith(message), e.value.message


def test_no_github_fetcher_is_400() -> None:
    with pytest.raises(BadRequest, match="no github fetcher"):
        users_spec({}, Settings())
