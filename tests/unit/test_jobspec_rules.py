"""Issue 11's job spec keys (shared/jobspec.py): follow, ids, items, save. Every error names its
field; follow/ids(regex, urlFormat)/save enter the rule set, seeds and id sets do not; specs
without them keep their digests."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest

from shared.config import Settings
from shared.ids import id_url
from shared.jobspec import (
    INT32_MAX,
    UNBOUNDED_DEPTH,
    ExtractSpec,
    FilesSpec,
    IdSpec,
    ItemsSpec,
    JobSpec,
    SaveSpec,
    SpecError,
    TarSpec,
    WarcSpec,
    follow_mode,
    reads_any_body,
    ruleset_of,
    status_view,
    validate_spec,
)

SETTINGS = Settings(output_kinds=("test-files",))
PAGE = "http://a.example/"
FMT = "http://a.example/item?id={}"
IDS = {"regex": r"id=(\d+)", "urlFormat": FMT}
ITEMS = {"kind": "items", "fields": {"title": {"css": "title"}}}


def _spec(settings: Settings = SETTINGS, **keys: object) -> JobSpec:
    return validate_spec(json.dumps({"urls": [PAGE], **keys}), settings)


@pytest.mark.parametrize(("keys", "message"), [
    ({"follow": True}, "Invalid follow: expected a JSON object"),
    ({"follow": {"linkRegex": "a("}},
     "Invalid follow.linkRegex: a( (missing ), unterminated subpattern at position 1)"),
    ({"follow": {"linkRegex": "(a)(b)"}},
     ("Invalid follow.linkRegex: (a)(b) has 2 capture groups (at most 1: use (?:...) for the "
     "others)")),
    ({"follow": {"linkRegex": "a" * 1001}}, "Invalid follow.linkRegex: longer than 1000 characters"),
    ({"follow": {"css": ["a", "a["]}},
     "Invalid follow.css[1]: a[: Can't parse CSS selector."),
    ({"follow": {"link_regex": "x"}}, "Invalid follow.link_regex: Extra inputs are not permitted"),
    ({"follow": {"html": "yes"}}, "Invalid follow.html: Input should be a valid boolean"),
    ({"follow": {"attr": ""}}, "Invalid follow.attr: String should have at least 1 character"),
    ({"ids": {"urlFormat": FMT}}, "Invalid ids.regex: Field required"),
    ({"ids": {"regex": "x"}}, "Invalid ids.urlFormat: Field required"),
    ({"ids": {**IDS, "urlFormat": "http://a.example/item"}},
     "Invalid ids.urlFormat: http://a.example/item must hold exactly one {}"),
    ({"ids": {**IDS, "urlFormat": "http://a.example/{}/{}"}},
     "Invalid ids.urlFormat: http://a.example/{}/{} must hold exactly one {}"),
    ({"ids": {**IDS, "urlFormat": "ftp://a.example/{}"}},
     "Invalid ids.urlFormat: not an absolute http(s) URL: ftp://a.example/{}"),
    # Hosts ignore case and fragments are dropped: ids there would share a URL.
    ({"ids": {**IDS, "urlFormat": "http://{}.a.example/"}},
     "Invalid ids.urlFormat: http://{}.a.example/ must hold {} in its path or query"),
    ({"ids": {**IDS, "urlFormat": "http://a.example/x#{}"}},
     "Invalid ids.urlFormat: http://a.example/x#{} must hold {} in its path or query"),
    ({"save": [{"kind": "files", "pattern": "{host}/{path}"}]},
     ("Invalid save[0].pattern: {host}/{path} (no unique field: give one of {id}, {urlhash}, "
      "{urlid}, {sha1}, {sha256} whole (not sliced), or two pages may get the same name)")),
    ({"ids": {**IDS, "regex": "(a)(b)"}},
     "Invalid ids.regex: (a)(b) has 2 capture groups (at most 1: use (?:...) for the others)"),
    ({"ids": {**IDS, "seeds": ["1", ""]}}, "Invalid ids.seeds[1]: empty id"),
    ({"ids": {**IDS, "seeds": ["a\nb"]}}, "Invalid ids.seeds[0]: id holds a NUL or line break"),
    ({"ids": {**IDS, "seeds": [".."]}}, "Invalid ids.seeds[0]: id '..' is not allowed"),
    ({"ids": {**IDS, "known": "nope"}}, ("Invalid ids.known: Input should be a valid UUID, "
     "invalid character: found `n` at 0")),
    ({"extract": [{"kind": "items"}]}, "Invalid extract[0].fields: Field required"),
    ({"extract": [{"kind": "items", "fields": {}}]},
     "Invalid extract[0].fields: Dictionary should have at least 1 item after validation, not 0"),
    ({"extract": [{"kind": "items", "fields": {"_type": {"css": "a"}}}]},
     ("Invalid extract[0].fields: field name '_type' is empty, starts with '_' or is url or seq "
     "(GET /items' columns)")),
    ({"extract": [{"kind": "items", "fields": {"url": {"css": "a"}}}]},
     ("Invalid extract[0].fields: field name 'url' is empty, starts with '_' or is url or seq "
     "(GET /items' columns)")),
    ({"extract": [{"kind": "items", "fields": {"t": {}}}]},
     "Invalid extract[0].fields.t: give exactly one of css, xpath, regex"),
    ({"extract": [{"kind": "items", "fields": {"t": {"css": "a", "xpath": "//a"}}}]},
     "Invalid extract[0].fields.t: give exactly one of css, xpath, regex"),
    ({"extract": [ITEMS, {"kind": "items", "fields": {"t": {"xpath": "//a["}}}]},
     "Invalid extract[1].fields.t.xpath: //a[: Invalid expression"),
    ({"extract": [{"kind": "items", "fields": {"t": {"css": "a["}}}]},
     "Invalid extract[0].fields.t.css: a[: Can't parse CSS selector."),
    ({"extract": [{"kind": "items", "fields": {"t": {"regex": "(", "type": "int"}}}]},
     "Invalid extract[0].fields.t.regex: ( (missing ), unterminated subpattern at position 0)"),
    ({"extract": [{"kind": "items", "fields": {"t": {"css": "a", "type": "date"}}}]},
     "Invalid extract[0].fields.t.type: Input should be 'str', 'int', 'float' or 'bool'"),
    ({"extract": [{"kind": "items", "fields": {"t": {"css": "a", "take": "last"}}}]},
     "Invalid extract[0].fields.t.take: Input should be 'first' or 'all'"),
    ({"extract": [{"kind": "items", "fields": {"t": {"css": "a"}}, "each": "p["}]},
     "Invalid extract[0].each: p[: Can't parse CSS selector."),
    ({"extract": [{"kind": "items", "fields": {"t": {"css": "a"}}, "what": 1}]},
     "Invalid extract[0].what: Extra inputs are not permitted"),
    ({"save": [{"kind": "s3"}]},
     "Invalid save[0].kind: unknown output kind: s3 (known: warc, files, tar, db, test-files)"),
    ({"save": {"kind": "warc"}}, "Invalid save: Input should be a valid array"),
    ({"save": [{"kind": "warc", "maxSize": 1000}]},
     "Invalid save[0].maxSize: Input should be greater than or equal to 1048576"),
    ({"save": [{"kind": "warc", "prefix": "../x"}]},
     "Invalid save[0].prefix: String should match pattern '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'"),
    ({"save": [{"kind": "tar", "compression": "xz"}]},
     "Invalid save[0].compression: Input should be 'none', 'gz' or 'bz2'"),
    ({"save": [{"kind": "files", "pattern": "/etc/{id}"}]},
     ("Invalid save[0].pattern: /etc/{id} (an absolute path (names are relative to the output "
     "directory))")),
    ({"save": [{"kind": "files", "pattern": "{nope}"}]},
     ("Invalid save[0].pattern: {nope} (unknown field {nope} (known: id, 0, host, path, ext, "
     "urlhash, urlid, sha1, sha256))")),
    ({"save": [{"kind": "db", "x": 1}]}, "Invalid save[0].x: Extra inputs are not permitted"),
    ({"save": [{"kind": "test-files", "dir": "a\x00"}]},
     "Invalid save[0]: an option holds a NUL character"),
    ({"depth": 11, "follow": {"linkRegex": "x"}}, "Invalid depth: 11 (allowed 0 to 10)"),
    ({"urls": [], "ids": IDS}, "Invalid urls: give urls, ids.seeds or ids.known"),
])
def test_every_new_key_error_names_its_field(keys: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError) as e:
        _spec(**keys)
    assert e.value.message == message
    assert e.value.status == 400
    assert e.value.field == message.split(": ")[0].removeprefix("Invalid ")


def test_a_full_spec_validates_stores_and_posts_back() -> None:
    known = uuid.uuid4()
    spec = _spec(follow={"linkRegex": r'href="(/p/\d+)"', "css": ["a.next"], "html": True},
                 ids={**IDS, "seeds": ["7", "a b"], "known": str(known)},
                 extract=[{"kind": "items", "name": "product", "each": "div.p",
                           "fields": {"price": {"css": ".price", "type": "float",
                                               "default": 0.0},
                                      "tags": {"xpath": "//li/text()", "take": "all"},
                                      "sku": {"regex": r"sku=(\w+)", "attr": "href"}}}],
                 save=[{"kind": "warc", "maxSize": 1 << 20}, {"kind": "files",
                                                             "pattern": "{id[:2]}/{id}.xml"},
                       {"kind": "tar", "compression": "gz"}, {"kind": "db"},
                       {"kind": "test-files", "dir": "/tmp/x"}])
    assert spec.ids is not None and spec.ids.known == known
    # Seeds are job URLs too, after the given ones.
    assert spec.urls == (PAGE, id_url(FMT, "7"), id_url(FMT, "a b"))
    assert spec.depth == UNBOUNDED_DEPTH  # every reachable page or id
    stored = json.loads(json.dumps(spec.stored(), sort_keys=True))
    assert stored["follow"] == {"linkRegex": 'href="(/p/\\d+)"', "css": ["a.next"],
                                "attr": "href", "html": True}
    assert stored["ids"]["known"] == str(known) and stored["ids"]["explored"] is None
    assert stored["save"][0] == {"kind": "warc", "maxSize": 1 << 20}  # options as given
    shown = status_view(stored, list(spec.urls))
    assert list(shown)[-3:] == ["follow", "ids", "save"]
    assert list(shown["follow"]) == ["linkRegex", "css", "attr", "html"]
    assert list(shown["ids"]) == ["regex", "urlFormat", "seeds", "known", "explored"]
    assert validate_spec(json.dumps(shown), SETTINGS) == spec


def test_depth_with_follow_or_ids_defaults_to_unbounded_an_explicit_one_applies() -> None:
    assert _spec(follow={"linkRegex": "x"}).depth == UNBOUNDED_DEPTH
    assert _spec(ids=IDS).depth == UNBOUNDED_DEPTH
    assert _spec(ids=IDS, depth=3).depth == 3
    assert _spec(follow={}, depth=0).depth == 0
    assert _spec().depth == 2
    with pytest.raises(SpecError, match=r"^Invalid depth: 2147483646 \(allowed 0 to 10\)$"):
        _spec(depth=UNBOUNDED_DEPTH)  # unbounded only for follow/ids
    assert UNBOUNDED_DEPTH == INT32_MAX - 1


def test_urls_may_be_empty_with_seeds_or_a_known_set() -> None:
    spec = validate_spec(json.dumps({"ids": {**IDS, "seeds": ["1"]}}), SETTINGS)
    assert spec.urls == ("http://a.example/item?id=1",)
    known = str(uuid.uuid4())
    assert validate_spec(json.dumps({"urls": [], "ids": {**IDS, "known": known}}),
                         SETTINGS).urls == ()
    with pytest.raises(SpecError, match=r"^Invalid urls: Field required$"):
        validate_spec("{}", SETTINGS)


def test_new_keys_at_default_are_not_stored() -> None:
    for spec in (_spec(), _spec(save=[]), _spec(extract=[])):
        assert list(spec.stored()) == ["depth", "forceCrawl", "sitemaps", "scope"]


def test_follow_ids_and_save_enter_the_rule_set_seeds_and_sets_do_not() -> None:
    base = _spec().ruleset()
    assert base == 0
    follow = _spec(follow={"linkRegex": "x"}).ruleset()
    ids = _spec(ids=IDS).ruleset()
    save = _spec(save=[{"kind": "warc"}]).ruleset()
    items = _spec(extract=[ITEMS]).ruleset()
    assert len({base, follow, ids, save, items}) == 5
    assert _spec(follow={"linkRegex": "y"}).ruleset() != follow
    assert _spec(ids={**IDS, "regex": r"(\d+)"}).ruleset() != ids
    assert _spec(ids={**IDS, "urlFormat": "http://b.example/{}"}).ruleset() != ids
    assert _spec(save=[{"kind": "files"}]).ruleset() != save
    # Where a crawl starts does not change what a page yields.
    assert _spec(ids={**IDS, "seeds": ["1", "2"], "known": str(uuid.uuid4()),
                      "explored": str(uuid.uuid4())}).ruleset() == ids
    # Pinned: the digest of the projected keys.
    assert ids == int.from_bytes(hashlib.sha256(
        b'{"ids":{"regex":"id=(\\\\d+)","urlFormat":"http://a.example/item?id={}"}}'
    ).digest()[:8], "big", signed=True)
    stored = json.loads(json.dumps(_spec(ids={**IDS, "seeds": ["1"]}, save=[{"kind": "db"}],
                                         follow={"css": ["a"]}).stored(), sort_keys=True))
    assert ruleset_of(stored) == _spec(ids=IDS, save=[{"kind": "db"}],
                                       follow={"css": ["a"]}).ruleset()


def test_old_specs_keep_their_digests() -> None:
    """Specs stored before issue 11 hold none of its keys: their rule sets do not change."""
    old = {"depth": 2, "forceCrawl": False, "sitemaps": False,
           "extract": [{"kind": "test-title", "tag": "title"}]}
    assert ruleset_of(old) == int.from_bytes(hashlib.sha256(
        b'{"extract":[{"kind":"test-title","tag":"title"}]}').digest()[:8], "big", signed=True)
    assert ruleset_of({"depth": 2}) == 0


def test_follow_mode() -> None:
    assert follow_mode({"depth": 2}) == "html"
    assert follow_mode({"extract": [ITEMS], "save": [{"kind": "warc"}]}) == "html"
    assert follow_mode({"follow": {"linkRegex": "x", "html": False}}) == "rules"
    assert follow_mode({"ids": IDS}) == "rules"
    assert follow_mode({"follow": {"css": ["a"], "html": True}, "ids": IDS}) == "both"
    assert follow_mode(_spec(follow={"html": True}).stored()) == "both"


def test_reads_any_body() -> None:
    assert not reads_any_body({"depth": 2})
    assert not reads_any_body({"save": [{"kind": "warc"}], "extract": [{"kind": "x"}]})
    assert not reads_any_body({"save": [{"kind": "db"}]})
    for stored in ({"follow": {"linkRegex": "x"}}, {"ids": IDS}, {"extract": [ITEMS]},
                   {"save": [{"kind": "files"}]}, {"save": [{"kind": "tar"}]}):
        assert reads_any_body(stored), stored


def test_option_models_read_the_stored_options() -> None:
    """What the worker does with a stored entry: validate it again, read its options."""
    entry = {"kind": "tar", "compression": "gz", "maxSize": 1 << 21}
    save = SaveSpec.model_validate(entry, context={"outputs": ("tar",)})
    tar = TarSpec.model_validate(save.options())
    assert (tar.pattern, tar.compression, tar.max_size) == ("{host}/{urlhash}", "gz", 1 << 21)
    assert WarcSpec.model_validate({}).max_size == 10**9
    assert FilesSpec.model_validate({}).pattern == "{host}/{urlhash}"
    rule = ExtractSpec.model_validate(ITEMS, context={"extractors": ("items",)})
    items = ItemsSpec.model_validate_json(json.dumps(rule.model_extra))
    assert items.fields["title"].css == "title" and items.fields["title"].take == "first"
    ids = IdSpec.model_validate_json(json.dumps({**IDS, "seeds": ["1"]}))
    assert ids.url_format == FMT and ids.seeds == ("1",)
