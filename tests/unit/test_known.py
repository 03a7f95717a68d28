"""``shared.db.known.Known``: what a worker's commits know without asking PostgreSQL (issue 15):
URL ids, visits' levels. A fact is used only once durable (``settle`` seconds after its
transaction committed, and never across a new server process), and the cache is bounded by two
generations of ``size`` keys."""

from __future__ import annotations

from shared.db.known import Known


def learned(known: Known[str], facts: dict[str, int], at: float, backend: int = 1) -> None:
    """One transaction on ``backend`` noting ``facts``, committed at ``at``."""
    known.begin(backend)
    known.note(facts)
    known.committed(now=at)


def test_facts_are_used_only_settle_seconds_after_their_commit() -> None:
    known: Known[str] = Known(10, settle=0.7)
    learned(known, {"http://h/a": 1}, at=100.0)
    assert known.split({"http://h/a": "text/html"}) == ({}, {"http://h/a": "text/html"})
    known.committed(now=100.6)
    assert len(known) == 0 and known.get("http://h/a") is None
    learned(known, {"http://h/b": 2}, at=100.7)  # a's commit is 0.7 s old: durable
    assert known.split({"http://h/a": "", "http://h/b": ""}) == ({"http://h/a": 1},
                                                                  {"http://h/b": ""})
    assert known.get("http://h/a") == 1


def test_an_attempt_that_did_not_commit_leaves_nothing() -> None:
    known: Known[str] = Known(10, settle=0.0)
    known.begin(1)
    known.note({"http://h/a": 1})  # this attempt fails (a deadlock, say): no committed()
    learned(known, {"http://h/b": 2}, at=5.0)  # the next attempt
    assert known.get("http://h/a") is None and known.get("http://h/b") == 2


def test_nothing_is_used_before_the_servers_durability_is_known() -> None:
    known: Known[str] = Known(10)
    learned(known, {"http://h/a": 1}, at=0.0)
    known.committed(now=1e9)
    assert len(known) == 0
    known.settle = 0.0
    known.committed(now=1e9)
    assert known.split({"http://h/a": ""})[0] == {"http://h/a": 1}


def test_a_new_server_process_drops_the_facts_not_yet_durable() -> None:
    # After a crash every connection is new, and an asynchronous commit of the last moments
    # may be lost with the ids it took: they must never be used.
    known: Known[str] = Known(10, settle=1.0)
    learned(known, {"http://h/a": 1}, at=0.0, backend=41)
    learned(known, {"http://h/b": 2}, at=5.0, backend=41)  # a is durable now, b not yet
    known.begin(41)  # the same backend: nothing dropped
    known.begin(42)  # a new one: b is dropped, a kept
    known.committed(now=100.0)
    assert known.split({"http://h/a": "", "http://h/b": ""}) == ({"http://h/a": 1},
                                                                  {"http://h/b": ""})


def test_two_generations_bound_it_and_a_hit_moves_to_the_newer() -> None:
    known: Known[str] = Known(2, settle=0.0)
    learned(known, {"a": 1, "b": 2}, at=0.0)  # generation 1 full
    learned(known, {"c": 3}, at=1.0)  # c opens generation 2; a, b are the older
    assert known.split({"a": ""})[0] == {"a": 1}  # a moves to the newer: now full (c, a)
    learned(known, {"d": 4}, at=2.0)  # the newer is full: (c, a) becomes the older, b dropped
    assert len(known) == 3
    found, rest = known.split({"a": "", "b": "", "c": "", "d": ""})
    assert found == {"a": 1, "c": 3, "d": 4} and rest == {"b": ""}


def test_size_0_keeps_nothing() -> None:
    known: Known[str] = Known(0, settle=0.0)
    learned(known, {"a": 1}, at=0.0)
    learned(known, {"b": 2}, at=1.0)
    assert len(known) == 0 and known.split({"a": ""}) == ({}, {"a": ""})
