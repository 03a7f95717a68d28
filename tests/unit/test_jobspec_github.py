"""The ``github`` source in the job spec (issue 13, plan §2.3): what a GitHub spec derives
(its URL, levels, maxPages, fetcher), every way one is refused (each a 400 naming its field),
one shared rule set for all GitHub jobs, and a web job's stored spec as before."""

from __future__ import annotations

import json

import pytest

from shared.config import Settings
from shared.jobspec import (
    SpecError,
    follow_mode,
    github_depth_cap,
    ruleset_of,
    status_view,
    validate_spec,
)

BASE = "http://127.0.0.1:4321/api/v3"  # a GitHub Enterprise-like path prefix
SETTINGS = Settings(fetcher_kinds=("http", "github"), github_base_url=BASE, github_per_page=30)


def spec(github: dict[str, object], **rest: object) -> dict[str, object]:
    return {"source": "github", "github": github, **rest}


@pytest.mark.parametrize(("github", "urls", "depth", "max_pages"), [
    ({"users": 45}, [f"{BASE}/users?per_page=30"], 1, 2),
    ({"users": 20}, [f"{BASE}/users?per_page=20"], 1, 1),
    ({"users": 250}, [f"{BASE}/users?per_page=30"], 1, 9),
    ({"users": 60, "order": "id"}, [f"{BASE}/users?per_page=30"], 1, 2),
    ({"users": 45, "order": "newest"},
     [f"{BASE}/search/users?order=desc&per_page=30&q=type%3Auser&sort=joined"], 1, 2),
    ({"contributors": "HugoDelval"}, [f"{BASE}/users/hugodelval"], 3, None),
    ({"contributors": "a-b", "depth": 0}, [f"{BASE}/users/a-b"], 1, None),
    ({"contributors": "hub", "depth": 2}, [f"{BASE}/users/hub"], 5, None),
])
def test_a_github_spec_derives_its_url_levels_and_pages(
        github: dict[str, object], urls: list[str], depth: int, max_pages: int | None) -> None:
    job = validate_spec(spec(github), SETTINGS)
    assert list(job.urls) == urls
    assert (job.max_level, job.scope.max_pages, job.fetcher) == (depth, max_pages, "github")
    stored = job.stored()
    assert stored["source"] == "github" and stored["fetcher"] == "github"
    assert stored["github"] == (  # what was asked, with its defaults
        {"users": github["users"], "order": github.get("order", "id")} if "users" in github
        else {"contributors": str(github["contributors"]).lower(),
              "depth": github.get("depth", 1)})
    assert follow_mode(stored) == "rules"
    # /status shows it back, and it POSTs again as the same job.
    shown = status_view(stored, urls)
    assert validate_spec(json.dumps(shown), SETTINGS) == job


@pytest.mark.parametrize(("data", "field", "fragment"), [
    ({"source": "github"}, "github", "required"),
    ({"github": {"users": 3}, "urls": ["http://a.example/"]}, "github", '"source": "github"'),
    ({"fetcher": "github", "urls": ["http://a.example/"]}, "fetcher", '"source": "github"'),
    (spec({"users": 3}, fetcher="http"), "fetcher", "not http"),
    (spec({"users": 3}, urls=["http://a.example/"]), "urls", "derived from github"),
    (spec({"users": 3}, depth=4), "depth", "derived from github (1)"),
    (spec({"users": 3}, scope={"maxPages": 7}), "scope.maxPages", "derived from github (1)"),
    (spec({"users": 3}, follow={"linkRegex": "x"}), "follow", "its pages yield"),
    (spec({"users": 3}, ids={"regex": "(x)", "urlFormat": "http://a.example/{}"}), "ids",
     "its pages yield"),
    (spec({}), "github", "exactly one of users, contributors"),
    (spec({"users": 3, "contributors": "hub"}), "github", "exactly one"),
    (spec({"users": 0}), "github.users", "greater than or equal to 1"),
    (spec({"users": 100_001}), "github.users", "less than or equal to 100000"),
    (spec({"users": "7"}), "github.users", "valid integer"),
    (spec({"users": 1001, "order": "newest"}), "github", "1000 at most"),
    (spec({"users": 3, "order": "joined"}), "github.order", "'id' or 'newest'"),
    (spec({"contributors": "hub", "order": "newest"}), "github", "order goes with users"),
    (spec({"contributors": "-hub"}), "github.contributors", "not a GitHub login"),
    (spec({"contributors": "a--b"}), "github.contributors", "not a GitHub login"),
    (spec({"contributors": "a" * 40}), "github.contributors", "not a GitHub login"),
    (spec({"contributors": "hub", "depth": -1}), "github.depth", "greater than or equal to 0"),
    (spec({"contributors": "hub", "depth": 5}), "github.depth", "5 (allowed 0 to 4)"),
    (spec({"contributors": "hub", "token": "x"}), "github.token", "Extra inputs"),
    ({"source": "gitlab", "urls": ["http://a.example/"]}, "source", "unknown source: gitlab"),
])
def test_each_bad_github_spec_is_a_400_naming_its_field(
        data: dict[str, object], field: str, fragment: str) -> None:
    with pytest.raises(SpecError) as e:
        validate_spec(json.dumps(data), SETTINGS)
    assert e.value.field == field, str(e.value)
    assert fragment in str(e.value)


def test_without_a_github_fetcher_the_source_is_refused() -> None:
    with pytest.raises(SpecError, match="Invalid source: the server has no github fetcher"):
        validate_spec(json.dumps(spec({"users": 3})), Settings())


def test_the_depth_cap_follows_max_depth() -> None:
    assert [github_depth_cap(d) for d in (0, 1, 2, 3, 10)] == [0, 0, 0, 1, 4]
    shallow = Settings(fetcher_kinds=("http", "github"), max_level=0, max_depth=0)
    assert validate_spec(json.dumps(spec({"contributors": "hub", "depth": 0})),
                         shallow).max_level == 1  # the profile and its repository lists
    deep = Settings(fetcher_kinds=("http", "github"), max_depth=21)
    assert validate_spec(json.dumps(spec({"contributors": "hub", "depth": 10})),
                         deep).max_level == 21


def test_github_jobs_share_one_rule_set_apart_from_web_jobs() -> None:
    users = validate_spec(json.dumps(spec({"users": 5})), SETTINGS)
    closure = validate_spec(json.dumps(spec({"contributors": "hub", "depth": 2})), SETTINGS)
    newest = validate_spec(json.dumps(spec({"users": 5, "order": "newest"})), SETTINGS)
    assert users.ruleset() == closure.ruleset() == newest.ruleset() != 0
    assert users.ruleset() == ruleset_of({"source": "github"})
    saving = validate_spec(json.dumps(spec({"users": 5}, save=[{"kind": "warc"}])), SETTINGS)
    assert saving.ruleset() not in (0, users.ruleset())


def test_a_web_jobs_stored_spec_is_unchanged() -> None:
    web = validate_spec(json.dumps({"urls": ["http://a.example/"]}), SETTINGS)
    assert web.source == "web" and web.github is None
    assert web.stored() == {"depth": 2, "forceCrawl": False, "sitemaps": False,
                            "scope": {"scope": "any", "allow": [], "deny": [], "maxPages": None}}
    assert web.ruleset() == 0 and follow_mode(web.stored()) == "html"
    explicit = validate_spec(json.dumps({"urls": ["http://a.example/"], "source": "web"}),
                             SETTINGS)
    assert explicit.stored() == web.stored() and explicit.ruleset() == 0
