"""``shared.db.pages.KnownUrls``: the worker's cache of URL ids (issue 15). Ids are used only
once durable (``settle`` seconds after their commit, and never across a new server process),
and the cache is bounded by two generations of ``size`` URLs."""

from __future__ import annotations

from shared.db.pages import KnownUrls


def test_ids_are_used_only_settle_seconds_after_their_commit() -> None:
    known = KnownUrls(10, settle=0.7)
    known.committed({"http://h/a": 1}, now=100.0)
    assert known.split({"http://h/a": "text/html"}) == ({}, {"http://h/a": "text/html"})
    known.committed({}, now=100.6)
    assert len(known) == 0
    known.committed({"http://h/b": 2}, now=100.7)  # a's commit is 0.7 s old: durable
    assert known.split({"http://h/a": "", "http://h/b": ""}) == ({"http://h/a": 1},
                                                                  {"http://h/b": ""})


def test_nothing_is_used_before_the_servers_durability_is_known() -> None:
    known = KnownUrls(10)
    known.committed({"http://h/a": 1}, now=0.0)
    known.committed({}, now=1e9)
    assert len(known) == 0
    known.settle = 0.0
    known.committed({}, now=1e9)
    assert known.split({"http://h/a": ""})[0] == {"http://h/a": 1}


def test_a_new_server_process_drops_the_ids_not_yet_durable() -> None:
    # After a crash every connection is new, and an asynchronous commit of the last moments
    # may be lost with the ids it took: they must never be used.
    known = KnownUrls(10, settle=1.0)
    known.connected(41)
    known.committed({"http://h/a": 1}, now=0.0)
    known.committed({"http://h/b": 2}, now=5.0)  # a is durable now, b not yet
    known.connected(41)  # the same backend: nothing dropped
    known.connected(42)  # a new one: b is dropped, a kept
    known.committed({}, now=100.0)
    assert known.split({"http://h/a": "", "http://h/b": ""}) == ({"http://h/a": 1},
                                                                  {"http://h/b": ""})


def test_two_generations_bound_it_and_a_hit_moves_to_the_newer() -> None:
    known = KnownUrls(2, settle=0.0)
    known.committed({"a": 1, "b": 2})  # generation 1 full
    known.committed({"c": 3})  # c opens generation 2; a, b are the older
    assert known.split({"a": ""})[0] == {"a": 1}  # a moves to the newer: now full (c, a)
    known.committed({"d": 4})  # the newer is full: (c, a) becomes the older, b is dropped
    assert len(known) == 3
    found, rest = known.split({"a": "", "b": "", "c": "", "d": ""})
    assert found == {"a": 1, "c": 3, "d": 4} and rest == {"b": ""}


def test_size_0_keeps_nothing() -> None:
    known = KnownUrls(0, settle=0.0)
    known.committed({"a": 1})
    known.committed({"b": 2})
    assert len(known) == 0 and known.split({"a": ""}) == ({}, {"a": ""})
