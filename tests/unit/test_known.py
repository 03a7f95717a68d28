"""``shared.db.known.Known``: what a worker's commits know without asking PostgreSQL (issue 15):
URL ids, visits' levels. A fact is used only once durable: once the WAL is flushed past the
point where a transaction after its commit started, and never across a new server process; the
cache is bounded by two generations of ``size`` keys."""

from __future__ import annotations

from datetime import datetime

from shared.db.known import Known, Server

T0 = datetime(2026, 11, 30)
ONE, OTHER = (41, T0), (42, T0)


def at(inserted: int, flushed: int, backend: tuple[int, datetime] = ONE) -> Server:
    return Server(backend, inserted, flushed)


def learned(known: Known[str], facts: dict[str, int], server: Server) -> None:
    """One transaction starting at ``server``, noting ``facts``, committed."""
    known.begin(server)
    known.note(facts)
    known.committed()


def test_a_fact_is_used_once_the_wal_is_flushed_past_a_later_start() -> None:
    known: Known[str] = Known(10)
    known.begin(at(100, 100))  # the first transaction on the process: nothing kept before
    learned(known, {"http://h/a": 1}, at(100, 100))
    assert known.split({"http://h/a": "text/html"}) == ({}, {"http://h/a": "text/html"})
    known.begin(at(200, 150))  # a's commit is before 200, not yet flushed
    assert known.get("http://h/a") is None
    known.begin(at(300, 199))
    assert known.get("http://h/a") is None
    known.begin(at(300, 200))  # flushed up to 200: a's commit is on disk
    assert known.get("http://h/a") == 1
    assert known.split({"http://h/a": "", "http://h/b": ""}) == ({"http://h/a": 1},
                                                                  {"http://h/b": ""})


def test_an_attempt_that_did_not_commit_leaves_nothing() -> None:
    known: Known[str] = Known(10)
    known.begin(at(0, 0))
    known.note({"http://h/a": 1})  # this attempt fails (a deadlock, say): no committed()
    learned(known, {"http://h/b": 2}, at(10, 10))  # the next attempt
    known.begin(at(20, 20))
    known.begin(at(20, 20))
    assert known.get("http://h/a") is None and known.get("http://h/b") == 2


def test_a_new_server_process_drops_the_facts_not_yet_durable() -> None:
    # After a crash every connection is new, and an asynchronous commit of the last moments
    # may be lost with the ids it took: its facts must never be used, even when the WAL
    # written after the crash passes their position.
    known: Known[str] = Known(10)
    known.begin(at(0, 0))
    learned(known, {"http://h/a": 1}, at(10, 10))
    known.begin(at(20, 20))  # a is durable
    learned(known, {"http://h/b": 2}, at(20, 20))
    known.begin(at(30, 25))  # b's commit is before 30, not flushed
    known.begin(at(30, 25, OTHER))  # a new server process: b dropped
    known.begin(at(90, 90, OTHER))
    known.begin(at(90, 90, (41, datetime(2026, 12, 1))))  # pid 41 again, another process
    assert known.get("http://h/a") == 1 and known.get("http://h/b") is None


def test_clear_forgets_everything() -> None:
    known: Known[str] = Known(10)
    known.begin(at(0, 0))
    learned(known, {"a": 1}, at(0, 0))
    known.begin(at(5, 5))
    learned(known, {"b": 2}, at(5, 5))
    known.clear()
    known.begin(at(9, 9))
    assert len(known) == 0 and known.get("b") is None


def test_two_generations_bound_it_and_a_hit_moves_to_the_newer() -> None:
    known: Known[str] = Known(2)
    known.begin(at(0, 0))
    for facts, lsn in (({"a": 1, "b": 2}, 1), ({"c": 3}, 2)):
        learned(known, facts, at(lsn, lsn))
    known.begin(at(3, 3))  # generation 1 (a, b) full; c opened generation 2
    assert known.split({"a": ""})[0] == {"a": 1}  # a moves to the newer: now full (c, a)
    learned(known, {"d": 4}, at(3, 3))
    known.begin(at(4, 4))  # the newer is full: (c, a) becomes the older, b is dropped
    assert len(known) == 3
    found, rest = known.split({"a": "", "b": "", "c": "", "d": ""})
    assert found == {"a": 1, "c": 3, "d": 4} and rest == {"b": ""}


def test_size_0_keeps_nothing() -> None:
    known: Known[str] = Known(0)
    known.begin(at(0, 0))
    learned(known, {"a": 1}, at(0, 0))
    known.begin(at(9, 9))
    assert len(known) == 0 and known.split({"a": ""}) == ({}, {"a": ""})
