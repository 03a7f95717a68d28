"""The job spec (shared/jobspec.py): every error names its field; the newline body with query
parameters and the JSON body map onto equal specs; the stored spec round-trips."""

from __future__ import annotations

import hashlib
import json

import pytest
from aiohttp.test_utils import make_mocked_request

from shared.config import Settings
from shared.errors import InvalidURL
from shared.jobspec import JobSpec, SpecError, ruleset_of, status_view, validate_spec
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
    ({"urls": ["http://a.example/"], "unknownKey": True},
     "Invalid unknownKey: Extra inputs are not permitted"),
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


EXTRACTING = Settings(extractor_kinds=("test-title", "other"), fetcher_kinds=("http", "static"))
PAGE = "http://a.example/"


def _spec(settings: Settings = EXTRACTING, **keys: object) -> JobSpec:
    return validate_spec(json.dumps({"urls": [PAGE], **keys}), settings)


@pytest.mark.parametrize(("keys", "message"), [
    ({"fetcher": "nope"}, "Invalid fetcher: unknown fetcher kind: nope (known: http, static)"),
    ({"fetcher": 3}, "Invalid fetcher: Input should be a valid string"),
    ({"extract": [{"kind": "test-title"}, {"kind": "nope"}]},
     "Invalid extract[1].kind: unknown extractor kind: nope (known: items, test-title, other)"),
    ({"extract": [{"tag": "h1"}]}, "Invalid extract[0].kind: Field required"),
    ({"extract": {"kind": "test-title"}}, "Invalid extract: Input should be a valid array"),
    ({"extract": ["test-title"]}, "Invalid extract[0]: expected a JSON object"),
    ({"extract": [{"kind": "test-title", "tag": "a\x00"}]},
     "Invalid extract[0]: an option holds a NUL character"),
])
def test_fetcher_and_extract_errors_name_their_field(keys: dict[str, object],
                                                     message: str) -> None:
    with pytest.raises(SpecError) as e:
        _spec(**keys)
    assert e.value.message == message
    assert e.value.field == message.split(":")[0].removeprefix("Invalid ")


def test_only_the_built_in_extractor_kind_is_known_by_default() -> None:
    with pytest.raises(SpecError, match=r"^Invalid extract\[0\]\.kind: unknown extractor kind: "
                                        r"test-title \(known: items\)$"):
        _spec(SETTINGS, extract=[{"kind": "test-title"}])


def test_fetcher_and_extract_are_kept_with_their_options() -> None:
    spec = _spec(fetcher="static", extract=[{"kind": "test-title", "tag": "h1",
                                             "opts": {"b": [1, 2], "a": None}}])
    assert spec.fetcher == "static"
    stored = spec.stored()
    assert (stored["fetcher"], stored["extract"]) == (
        "static", [{"kind": "test-title", "tag": "h1", "opts": {"b": [1, 2], "a": None}}])
    shown = status_view(json.dumps(stored, sort_keys=True), [PAGE])
    assert list(shown) == ["urls", "depth", "forceCrawl", "sitemaps", "scope", "fetcher",
                           "extract"]
    assert validate_spec(json.dumps(shown), EXTRACTING) == spec


def test_default_fetcher_and_extract_are_not_stored() -> None:
    """A job that does not use them stores (and /status shows) what it did before them."""
    for spec in (_spec(), _spec(fetcher="http", extract=[])):
        assert spec.fetcher == "http" and spec.extract == ()
        assert list(spec.stored()) == ["depth", "forceCrawl", "sitemaps", "scope"]


def test_links_only_is_ruleset_0() -> None:
    assert _spec().ruleset() == 0
    # Keys that change how the crawl goes, not what a page yields, leave it at 0.
    assert _spec(depth=0, forceCrawl=True, sitemaps=True, fetcher="static",
                 scope={"scope": "host", "deny": ["x"], "maxPages": 3}).ruleset() == 0


def test_the_ruleset_is_a_digest_of_what_changes_a_pages_yield() -> None:
    title = [{"kind": "test-title", "tag": "title"}]
    ruleset = _spec(extract=title).ruleset()
    assert ruleset != 0 and -2**63 <= ruleset < 2**63
    # Stable: the same for the same extractors, whatever else the job asks, and for the same
    # options in another key order (pinned: it is stored in job.ruleset and url_extraction).
    assert _spec(extract=title, depth=0, forceCrawl=True, fetcher="static").ruleset() == ruleset
    assert _spec(extract=[{"tag": "title", "kind": "test-title"}]).ruleset() == ruleset
    assert ruleset == int.from_bytes(hashlib.sha256(
        b'{"extract":[{"kind":"test-title","tag":"title"}]}').digest()[:8], "big", signed=True)
    # Another option, another extractor, or the same extractors in another order: another.
    other = [
        _spec(extract=[{"kind": "test-title", "tag": "h1"}]).ruleset(),
        _spec(extract=[{"kind": "test-title"}]).ruleset(),
        _spec(extract=[*title, {"kind": "other"}]).ruleset(),
        _spec(extract=[{"kind": "other"}, *title]).ruleset(),
    ]
    assert len({ruleset, *other}) == 5 and 0 not in other


@pytest.mark.parametrize("keys", [
    {},
    {"fetcher": "static", "depth": 1},
    {"extract": [{"kind": "test-title", "tag": "h1", "n": 1.5, "é": ["ü", {"z": 0, "a": 1}]}]},
    {"extract": [{"kind": "other"}, {"kind": "test-title"}]},
])
def test_ruleset_of_the_stored_spec_is_the_specs(keys: dict[str, object]) -> None:
    spec = _spec(**keys)
    # As read back from job.spec (jsonb: keys in its own order, text through json).
    stored = json.loads(json.dumps(spec.stored(), sort_keys=True, ensure_ascii=True))
    assert ruleset_of(stored) == spec.ruleset()
    assert ruleset_of({"depth": 2}) == 0  # a spec stored before the key existed


def test_a_webhook_needs_an_http_url_and_the_servers_secret() -> None:
    body = {"urls": ["http://a.example/"], "webhook": "http://127.0.0.1:9/done"}
    signed = Settings(webhook_secret="k")
    spec = validate_spec(json.dumps(body), signed)
    assert spec.webhook == "http://127.0.0.1:9/done"
    assert spec.stored()["webhook"] == "http://127.0.0.1:9/done"
    assert spec.ruleset() == 0  # where to say it is done changes no page's yields
    assert "webhook" not in validate_spec(json.dumps(body | {"webhook": None}), signed).stored()
    with pytest.raises(SpecError, match="^Invalid webhook: the server has no webhookSecret"):
        validate_spec(json.dumps(body), SETTINGS)
    with pytest.raises(SpecError, match="^Invalid webhook: not an absolute http"):
        validate_spec(json.dumps(body | {"webhook": "ftp://a.example/"}), signed)


LONG = "http://a.example/" + "a" * 2031  # 2048 characters: the default maxURLLength


def test_a_job_url_longer_than_max_url_length_is_refused_naming_where() -> None:
    """A job URL (canonical) longer than the job's ``traps.maxUrlLength``, else the server's
    ``maxURLLength``, is a 400 naming its index (JSON) or line (newline body), never echoing
    it; one at the limit is taken. Indexes are the client's, duplicates before it counted."""
    assert len(LONG) == SETTINGS.max_url_length
    assert validate_spec(json.dumps({"urls": [LONG]}), SETTINGS).urls == (LONG,)
    assert _newline("/", LONG + "\n").urls == (LONG,)
    data = {"urls": [PAGE, PAGE, LONG + "b"]}
    with pytest.raises(SpecError) as e:
        validate_spec(json.dumps(data), SETTINGS)
    assert e.value.message == "Invalid urls[2]: 2049 characters long (at most 2048: maxURLLength)"
    with pytest.raises(SpecError, match=r"^Invalid urls\[0\]: 2049 .* \(at most 2048: "):
        validate_spec({"urls": (LONG + "b",)}, SETTINGS)  # a dict too (the github routes)
    with pytest.raises(InvalidURL) as line:
        _newline("/", f"{PAGE}\n\n  {LONG}b  \n")
    assert line.value.message == ("Invalid URL: line 3 is 2049 characters long (at most 2048: "
                                  "maxURLLength)")
    # The job's own limit, lower or higher than the server's.
    with pytest.raises(SpecError) as e:
        validate_spec(json.dumps({"urls": [PAGE + "abc"], "traps": {"maxUrlLength": 19}}),
                      SETTINGS)
    assert e.value.message == ("Invalid urls[0]: 20 characters long (at most 19: "
                               "traps.maxUrlLength)")
    roomy = {"urls": [LONG + "b"], "traps": {"maxUrlLength": 4096}}
    assert validate_spec(json.dumps(roomy), SETTINGS).urls == (LONG + "b",)
    assert validate_spec(json.dumps({"urls": [LONG]}),
                         Settings(max_url_length=4096)).urls == (LONG,)
    # Measured canonical: "é" is "%C3%A9", 6 characters.
    with pytest.raises(SpecError, match=r"^Invalid urls\[0\]: 2053 characters long"):
        validate_spec(json.dumps({"urls": [LONG[:-1] + "é"]}), SETTINGS)


def test_a_seed_whose_url_is_too_long_is_refused_naming_it() -> None:
    """``ids.seeds`` become job URLs: each bounded as the job's ``urls`` are."""
    ids = {"urlFormat": "http://a.example/id/{}", "regex": "id/(\\w+)", "seeds": ["x", "y" * 40]}
    with pytest.raises(SpecError) as e:
        validate_spec(json.dumps({"ids": ids, "traps": {"maxUrlLength": 50}}), SETTINGS)
    assert e.value.message == ("Invalid ids.seeds[1]: 60 characters long (at most 50: "
                               "traps.maxUrlLength)")
    assert len(validate_spec(json.dumps({"ids": ids}), SETTINGS).urls) == 2
