"""Issue 14's spec keys (shared/jobspec.py): ``order``, ``priority``, ``priorities``,
``fingerprint``, ``bloom``, ``sessions``: defaults, bounds and their 400s naming the field;
left out of the stored spec at their defaults (a default job stores what it did before);
which of them make the rule set; /status shows them back in the model's order; job URLs lose
ignored parameters; ``shared.ordering`` matches ``harvester_rank``'s formula."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.config import Settings
from shared.jobspec import JobSpec, SpecError, ruleset_of, status_view, validate_spec
from shared.ordering import compile_rules, rank, url_priority

SETTINGS = Settings()
U = "http://a.example/"


def v(data: dict[str, Any], settings: Settings = SETTINGS) -> JobSpec:
    return validate_spec(json.dumps(data), settings)


def spec(**extra: Any) -> dict[str, Any]:
    return {"urls": [U], **extra}


def test_defaults_are_left_out_of_the_stored_spec() -> None:
    plain = v(spec(), SETTINGS)
    assert (plain.order, plain.priority, plain.priorities) == ("bfs", 0, ())
    assert plain.fingerprint is None and plain.bloom is None and plain.sessions is None
    explicit = v(spec(order="bfs", priority=0, priorities=[]), SETTINGS)
    assert explicit.stored() == plain.stored()
    assert not {"order", "priority", "priorities", "fingerprint", "bloom",
                "sessions"} & set(plain.stored())
    assert plain.ruleset() == 0


def test_the_new_keys_stored_and_shown_back() -> None:
    data = spec(order="priority", priority=-3,
                priorities=[{"pattern": "/hot", "priority": 9}],
                fingerprint={"ignoreParams": ["utm_*"], "includeHeaders": ["Accept-Language"]},
                bloom={"capacity": 5000}, sessions={"pool": "acme", "blockStatus": [403]})
    s = v(data, SETTINGS)
    stored = s.stored()
    assert stored["order"] == "priority" and stored["priority"] == -3
    assert stored["priorities"] == [{"pattern": "/hot", "priority": 9}]
    assert stored["fingerprint"] == {"ignoreParams": ["utm_*"], "keepFragment": False,
                                     "includeHeaders": ["accept-language"]}
    assert stored["bloom"] == {"capacity": 5000, "errorRate": 0.01}
    assert stored["sessions"] == {"pool": "acme", "blockStatus": [403], "blockPatterns": [],
                                  "bench": 300.0, "concurrency": 1}
    view = status_view(json.loads(json.dumps(stored)), [U])
    again = v(view, SETTINGS)  # POSTs back as the same job
    assert again.stored() == stored
    assert list(view)[-6:] == ["order", "priority", "priorities", "fingerprint", "bloom",
                               "sessions"]


def test_fingerprint_and_sessions_make_the_rule_set_order_and_bloom_do_not() -> None:
    base = v(spec(order="lifo", priority=4, bloom={}), SETTINGS)
    assert base.ruleset() == 0
    fp = v(spec(fingerprint={"ignoreParams": ["sid"]}), SETTINGS).ruleset()
    pool_a = v(spec(sessions={"pool": "a"}), SETTINGS).ruleset()
    pool_a2 = v(spec(sessions={"pool": "a", "bench": 10}), SETTINGS).ruleset()
    pool_b = v(spec(sessions={"pool": "b"}), SETTINGS).ruleset()
    assert 0 not in (fp, pool_a, pool_b)
    assert pool_a == pool_a2 != pool_b  # by pool only
    assert ruleset_of({"sessions": {"pool": "a", "concurrency": 3}}) == pool_a


def test_job_urls_lose_their_ignored_params() -> None:
    s = v({"urls": ["http://a.example/x?utm_source=1&id=2", "http://a.example/x?id=2",
                                "http://a.example/y?UTM_medium=z"],
                       "fingerprint": {"ignoreParams": ["utm_*"]}}, SETTINGS)
    assert s.urls == ("http://a.example/x?id=2", "http://a.example/y")


def test_job_urls_keep_their_fragment_only_with_keep_fragment() -> None:
    urls = ["http://a.example/p#a", "HTTP://A.example:80/p#b", "http://a.example/p",
            "http://a.example/p#a", "http://a.example/q?utm_x=1&id=2#s"]
    kept = v({"urls": urls, "fingerprint": {"keepFragment": True}}, SETTINGS)
    assert kept.urls == ("http://a.example/p#a", "http://a.example/p#b", "http://a.example/p",
                         "http://a.example/q?id=2&utm_x=1#s")
    assert kept.stored()["fingerprint"]["keepFragment"] is True
    assert kept.ruleset() not in (0, v({"urls": urls}, SETTINGS).ruleset())
    both = v({"urls": urls, "fingerprint": {"keepFragment": True, "ignoreParams": ["utm_*"]}},
             SETTINGS)
    assert both.urls[-1] == "http://a.example/q?id=2#s"
    for plain in (v({"urls": urls}, SETTINGS),
                  v({"urls": urls, "fingerprint": {"keepFragment": False}}, SETTINGS)):
        assert plain.urls == ("http://a.example/p", "http://a.example/q?id=2&utm_x=1")
    view = status_view(json.loads(json.dumps(kept.stored())), list(kept.urls))
    assert v(view, SETTINGS).urls == kept.urls  # POSTs back as the same job


@pytest.mark.parametrize(("extra", "field", "problem"), [
    ({"order": "random"}, "order", "Input should be 'bfs', 'fifo', 'lifo' or 'priority'"),
    ({"priority": 11}, "priority", "less than or equal to 10"),
    ({"priority": -11}, "priority", "greater than or equal to -10"),
    ({"priorities": [{"pattern": "x", "priority": 1}]}, "priorities",
     'only with "order": "priority" (order is bfs)'),
    ({"order": "priority", "priorities": [{"pattern": "(", "priority": 1}]},
     "priorities[0].pattern", "missing )"),
    ({"order": "priority", "priorities": [{"pattern": "x", "priority": 1001}]},
     "priorities[0].priority", "less than or equal to 1000"),
    ({"fingerprint": {"keepFragment": 1}}, "fingerprint.keepFragment", "valid boolean"),
    ({"fingerprint": {"ignoreParams": ["a=b"]}}, "fingerprint.ignoreParams[0]", "a=b"),
    ({"fingerprint": {"includeHeaders": ["Bad Header"]}}, "fingerprint.includeHeaders[0]",
     "not a header name"),
    ({"fingerprint": {"other": 1}}, "fingerprint.other", "Extra inputs"),
    ({"bloom": {"capacity": 10}}, "bloom.capacity", "greater than or equal to 1000"),
    ({"bloom": {"errorRate": 0.9}}, "bloom.errorRate", "less than or equal to 0.5"),
    ({"sessions": {}}, "sessions.pool", "Field required"),
    ({"sessions": {"pool": "a b"}}, "sessions.pool", "a b"),
    ({"sessions": {"pool": "a", "blockStatus": [99]}}, "sessions.blockStatus[0]",
     "greater than or equal to 100"),
    ({"sessions": {"pool": "a", "concurrency": 0}}, "sessions.concurrency",
     "greater than or equal to 1"),
])
def test_bad_values_are_400s_naming_the_field(extra: dict[str, Any], field: str,
                                              problem: str) -> None:
    with pytest.raises(SpecError) as e:
        v(spec(**extra), SETTINGS)
    assert e.value.field == field
    assert problem in str(e.value)


def test_ranks_follow_the_sql_formula() -> None:
    assert [rank("fifo", 5, 9, s) for s in (1, 2)] == [1, 2]
    assert [rank("lifo", 5, 9, s) for s in (1, 2)] == [-1, -2]
    assert rank("bfs", 1, 0, 7) > rank("bfs", 0, 0, 10**9)
    assert rank("priority", 0, 5, 10**9) < rank("priority", 0, 1, 1) < rank("priority", 0, -2, 1)
    rules = compile_rules([{"pattern": "/a", "priority": 3}, {"pattern": "a", "priority": 1}])
    assert [url_priority(rules, u) for u in ("http://h/a", "http://h/xa", "http://h/x")] == [
        3, 1, 0]
