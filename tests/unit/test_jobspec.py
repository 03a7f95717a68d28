"""The job spec (shared/jobspec.py): every error names its field; the newline body with query
parameters and the JSON body map onto equal specs; the stored spec round-trips."""

from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import make_mocked_request

from shared.config import Settings
from shared.jobspec import JobSpec, SpecError, status_view, validate_spec
from web_server.routes import newline_spec, query_params

SETTINGS = Settings()  # maxLevel 2, maxDepth 10


def _newline(path_qs: str, body: str) -> JobSpec:
    request = make_mocked_request("POST", path_qs)
    return newline_spec(query_params(request, SETTINGS), body, SETTINGS)


@pytest.mark.parametrize(("path_qs", "body", "data"), [
    ("/", "http://a.example/\n", {"urls": ["http://a.example/"]}),
    ("/?forceCrawl&depth=5&sitemaps=1",
     "https://b.example/docs\n\nB.example/docs\nhttp://a.example/\n",
     {"urls": ["https://b.example/docs", "b.example/docs", "http://a.example/"], "depth": 5,
      "forceCrawl": True, "sitemaps": True}),
    ("/?scope=host&allow=%2Fdocs%2F&allow=%5Ehttps%3F%3A&deny=%5C.pdf%24&maxPages=50",
     "http://c.example/docs/\r\n",
     {"urls": ["http://c.example/docs/"],
      "scope": {"scope": "host", "allow": ["/docs/", "^https?:"], "deny": ["\\.pdf$"],
                "maxPages": 50}}),
    ("/?depth=0&scope=domain", "HTTP://D.example:80/x#f\n", {
        "urls": ["http://d.example/x"], "depth": 0, "forceCrawl": False, "sitemaps": False,
        "scope": {"scope": "domain", "allow": [], "deny": [], "maxPages": None}}),
])
def test_newline_and_query_map_onto_the_spec(path_qs: str, body: str,
                                             data: dict[str, object]) -> None:
    from_json = validate_spec(json.dumps(data), SETTINGS)
    assert _newline(path_qs, body) == from_json
    assert from_json.urls == tuple(dict.fromkeys(from_json.urls))  # deduplicated, in order


@pytest.mark.parametrize(("data", "message"), [
    ({"urls": ["http://a.example/"], "depth": -1}, "Invalid depth: -1 (allowed 0 to 10)"),
    ({"urls": ["http://a.example/"], "depth": 11}, "Invalid depth: 11 (allowed 0 to 10)"),
    ({"urls": ["http://a.example/"], "depth": "3"},
     "Invalid depth: Input should be a valid integer"),
    ({"urls": ["http://a.example/"], "scope": {"maxPages": 0}},
     "Invalid scope.maxPages: Input should be greater than or equal to 1"),
    ({"urls": ["http://a.example/"], "scope": {"maxPages": 2**31}},
     "Invalid scope.maxPages: Input should be less than or equal to 2147483647"),
    ({"urls": ["http://a.example/"], "scope": {"scope": "site"}},
     "Invalid scope.scope: Input should be 'any', 'host' or 'domain'"),
    ({"urls": ["http://a.example/"], "scope": {"deny": ["ok", "a["]}},
     "Invalid scope.deny[1]: a[ (unterminated character set at position 1)"),
    ({"urls": ["http://a.example/"], "scope": {"max_pages": 3}},
     "Invalid scope.max_pages: Extra inputs are not permitted"),
    ({"urls": []}, "Invalid urls: Tuple should have at least 1 item after validation, not 0"),
    ({}, "Invalid urls: Field required"),
    ({"urls": ["http://a.example/", "ftp://x.example/"]},
     "Invalid urls[1]: not an absolute http(s) URL: ftp://x.example/"),
    ({"urls": ["http://a.example/", 3]}, "Invalid urls[1]: Input should be a valid string"),
    ({"urls": "http://a.example/"}, "Invalid urls: Input should be a valid array"),
    ({"urls": ["http://a.example/"], "follow": True},
     "Invalid follow: Extra inputs are not permitted"),
    ({"urls": ["http://a.example/"], "force_crawl": True},
     "Invalid force_crawl: Extra inputs are not permitted"),
    ({"urls": ["http://a.example/"], "forceCrawl": "yes"},
     "Invalid forceCrawl: Input should be a valid boolean"),
    (["http://a.example/"], "Invalid body: expected a JSON object"),
])
def test_every_error_names_its_field(data: object, message: str) -> None:
    with pytest.raises(SpecError) as e:
        validate_spec(json.dumps(data), SETTINGS)
    assert e.value.message == message
    assert e.value.status == 400


def test_a_body_that_is_not_json_is_an_error() -> None:
    with pytest.raises(SpecError, match=r"^Invalid JSON body: ") as e:
        validate_spec("http://a.example/\n", SETTINGS)
    assert e.value.field == "JSON body"


def test_depth_defaults_to_max_level_and_follows_the_settings() -> None:
    assert validate_spec('{"urls": ["a.example"]}', SETTINGS).depth == 2
    deep = Settings(max_level=4, max_depth=20)
    assert validate_spec('{"urls": ["a.example"], "depth": 20}', deep).depth == 20
    assert validate_spec('{"urls": ["a.example"]}', deep).depth == 4


@pytest.mark.parametrize("data", [
    {"urls": ["http://a.example/"]},
    {"urls": ["https://b.example/docs", "http://a.example/"], "depth": 0, "forceCrawl": True,
     "sitemaps": True, "scope": {"scope": "host", "allow": ["/docs/"], "deny": ["\\.pdf$"],
                                 "maxPages": 7}},
])
def test_stored_spec_round_trips(data: dict[str, object]) -> None:
    spec = validate_spec(json.dumps(data), SETTINGS)
    stored = json.dumps(spec.stored(), sort_keys=True)  # jsonb keeps no key order
    assert "urls" not in json.loads(stored)  # the job's URLs are its job_url rows
    shown = status_view(stored, sorted(spec.urls))
    assert list(shown) == ["urls", "depth", "forceCrawl", "sitemaps", "scope"]
    assert list(shown["scope"]) == ["scope", "allow", "deny", "maxPages"]
    again = validate_spec(json.dumps(shown), SETTINGS)
    assert again.model_copy(update={"urls": spec.urls}) == spec
    assert set(again.urls) == set(spec.urls)
