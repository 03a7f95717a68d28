"""Id crawls and follow rules in the frontier, on a real PostgreSQL (shared/db: idsets, jobs,
pages, visits, bodies): id sets uploaded in chunks and seeded into a job (explored first: never
queued, even when found again; known queued once), the children of follow modes ``rules`` and
``both`` read from the stored yields' targets, the job's yields by kind, body refs and the
``db`` output's bodies."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from shared.config import Settings
from shared.db import bodies, idsets, jobs, pages, visits
from shared.errors import BadRequest
from shared.jobspec import ruleset_of, validate_spec
from shared.mime import guess_mime
from shared.model import Extraction, FetchedPage, Yield
from shared.scope import Scope
from tests.results import JOB_RESULT

H = "http://h.example"


async def url_id(db: asyncpg.Connection, url: str) -> int:
    return (await pages.upsert_urls(db, {url: ""}))[url]


async def test_an_id_set_is_usable_once_its_upload_is_finished(db: asyncpg.Connection) -> None:
    async with db.transaction():
        s = await idsets.create_set(db)
        await idsets.add_members(db, s, ["a", "b"])
        await idsets.add_members(db, s, [])
        await idsets.add_members(db, s, ["b", "c"])
        assert not await idsets.usable(db, s)
        await idsets.finish_set(db, s, 4)
    assert await idsets.usable(db, s)
    assert await db.fetchrow("SELECT count, complete FROM id_set WHERE id = $1", s) == (4, True)
    assert sorted(r["ident"] for r in await db.fetch(
        "SELECT ident FROM id_set_member WHERE set_id = $1", s)) == ["a", "b", "b", "c"]
    other = await idsets.create_set(db)
    assert not await idsets.usable(db, other)
    await db.execute("DELETE FROM id_set WHERE id = $1", other)
    assert not await idsets.usable(db, other)


async def test_job_yields_of_one_kind_and_body_refs(db: asyncpg.Connection) -> None:
    a, b = await url_id(db, f"{H}/a"), await url_id(db, f"{H}/b")
    ref = {"output": "files", "file": "job-1/files/a", "offset": 0, "length": 3}
    rows = [(7, a, "item", 0, {"t": 1}), (7, a, "item", 1, {"t": 2}), (7, a, "body", 0, ref),
            (7, b, "item", 0, {"t": 3}), (7, b, "link", 0, {"url": f"{H}/a"}),
            (8, a, "body", 0, {**ref, "file": "job-8/files/a"})]
    await db.executemany(
        "INSERT INTO job_yield (job_id, url_id, kind, seq, value) VALUES ($1, $2, $3, $4, $5)",
        [(*r[:4], json.dumps(r[4])) for r in rows])
    every = await jobs.job_yields(db, 7)
    assert [(y.url, y.kind, y.seq) for _, y in every] == [
        (f"{H}/a", "body", 0), (f"{H}/a", "item", 0), (f"{H}/a", "item", 1),
        (f"{H}/b", "item", 0), (f"{H}/b", "link", 0)]
    items = await jobs.job_yields(db, 7, kind="item")
    assert [(y.url, y.seq, y.value) for _, y in items] == [
        (f"{H}/a", 0, {"t": 1}), (f"{H}/a", 1, {"t": 2}), (f"{H}/b", 0, {"t": 3})]
    first = await jobs.job_yields(db, 7, kind="item", limit=2)
    rest = await jobs.job_yields(db, 7, after=first[-1][0], kind="item")
    assert [y for _, y in first + rest] == [y for _, y in items]
    assert [y.value for _, y in await jobs.job_yields(db, 7, kind="link")] == [{"url": f"{H}/a"}]
    assert await jobs.job_yields(db, 7, kind="id") == []
    assert await jobs.body_ref(db, 7, f"{H}/a") == ref
    assert await jobs.body_ref(db, 8, f"{H}/a") == {**ref, "file": "job-8/files/a"}
    assert await jobs.body_ref(db, 7, f"{H}/b") is None
    assert await jobs.body_ref(db, 7, f"{H}/nowhere") is None


async def test_bodies_are_stored_once_per_digest(db: asyncpg.Connection) -> None:
    data = b"\x00body\xff"
    digest = hashlib.sha256(data).digest()
    assert await bodies.get_body(db, digest) is None
    await bodies.put_body(db, digest, data)
    await bodies.put_body(db, digest, data)
    assert await bodies.get_body(db, digest) == data
    assert await db.fetchval("SELECT count(*) FROM body") == 1


RULES = 5  # a rule set's id, as shared.jobspec.ruleset_of gives one




async def record(db: asyncpg.Connection, url: str, links: tuple[str, ...] = (),
                 yields: tuple[Yield, ...] = (), ruleset: int = RULES) -> int:
    (page,) = await ids(db, url)
    async with db.transaction():
        await pages.record_fetches(db, [(
            FetchedPage(page, 200, "text/html", None, cacheable=True),
            Extraction(tuple((u, guess_mime(u)) for u in links), yields, ruleset))])
    return page


async def ids(db: asyncpg.Connection, *urls: str) -> list[int]:
    found = await pages.upsert_urls(db, {u: "" for u in urls})
    return [found[u] for u in urls]


async def targets(db: asyncpg.Connection, page: int) -> list[tuple[str, int, str | None]]:
    return [(r["kind"], r["seq"], r["url"]) for r in await db.fetch("""
        SELECT y.kind, y.seq, u.url FROM url_yield y LEFT JOIN url u ON u.id = y.target
        WHERE y.url_id = $1 ORDER BY y.kind, y.seq""", page)]


async def test_link_and_id_yields_record_their_target_url(db: asyncpg.Connection) -> None:
    page = await record(db, f"{H}/p", links=(f"{H}/html",), yields=(
        Yield("link", {"url": f"{H}/c"}), Yield("item", {"url": f"{H}/not-a-target"}),
        Yield("id", {"id": "7", "url": f"{H}/item?id=7"}), Yield("link", {"url": f"{H}/p"}),
        Yield("link", {"href": "no url key"}), Yield("id", {"id": "8", "url": f"{H}/x.png"})))
    assert await targets(db, page) == [
        ("id", 0, f"{H}/item?id=7"), ("id", 1, f"{H}/x.png"),
        ("item", 0, None), ("link", 0, f"{H}/c"), ("link", 1, f"{H}/p"), ("link", 2, None)]
    mimes = dict(await db.fetch("SELECT url, mime FROM url WHERE url = ANY($1::text[])",
                                [f"{H}/c", f"{H}/x.png", f"{H}/not-a-target"]))
    assert mimes == {f"{H}/c": "text/html", f"{H}/x.png": "image/png"}  # guessed; items: none
    # Re-extraction replaces the yields and their targets.
    await record(db, f"{H}/p", yields=(Yield("link", {"url": f"{H}/d"}),))
    assert await targets(db, page) == [("link", 0, f"{H}/d")]


async def test_many_targets_are_upserted_in_chunks(db: asyncpg.Connection) -> None:
    n = pages.CHUNK * 2 + 3
    page = await record(db, f"{H}/many", yields=tuple(
        Yield("id", {"id": str(i), "url": f"{H}/item?id={i}"}) for i in range(n)))
    assert await db.fetchval(
        "SELECT count(*) FROM url_yield WHERE url_id = $1 AND target IS NOT NULL", page) == n
    assert await db.fetchval("""
        SELECT count(*) FROM url_yield y JOIN url u ON u.id = y.target
        WHERE y.url_id = $1 AND u.url = $2 || (y.value->>'id')""", page, f"{H}/item?id=") == n


async def follow_job(db: asyncpg.Connection, url: str, follow: str, ruleset: int = RULES,
                     max_level: int = 2**31 - 2) -> int:
    """A job of this follow mode and rule set (the columns create_job writes from a spec)."""
    async with db.transaction():
        job, _ = await jobs.create_job(db, [url], max_level, False)
        await db.execute("UPDATE job SET follow = $2, ruleset = $3 WHERE id = $1",
                         job, follow, 0 if follow == "html" else ruleset)
    return job


async def process(db: asyncpg.Connection, job: int, *urls: str,
                  outcome: visits.Outcome = "fetched") -> list[str]:
    """One completion transaction for these visits of the job; returns the URLs queued."""
    keys = [(job, u) for u in await ids(db, *urls)]
    async with db.transaction():
        locked = await visits.lock_pending(db, keys)
        queued = await visits.complete(db, locked, {k: outcome for k in keys})
    by_id = {r["id"]: r["url"] for r in await db.fetch(
        "SELECT id, url FROM url WHERE id = ANY($1::bigint[])", [u for _, u in queued])}
    return sorted(by_id[u] for _, u in queued)


async def result(db: asyncpg.Connection, job: int) -> list[str]:
    return sorted(r["url"] for r in await db.fetch(
        f"SELECT u.url FROM {JOB_RESULT} JOIN url u ON u.id = job_result.url_id "
        "WHERE job_result.job_id = $1",
        job))


async def test_children_follow_the_jobs_mode(db: asyncpg.Connection) -> None:
    p = f"{H}/p"
    await record(db, p, links=(f"{H}/a", f"{H}/b"), yields=(
        Yield("link", {"url": f"{H}/c"}), Yield("link", {"url": f"{H}/a"}),
        Yield("id", {"id": "7", "url": f"{H}/item?id=7"}), Yield("item", {"url": f"{H}/i"}),
        Yield("link", {"url": f"{H}/style.css"})))
    html, rules, both = [await follow_job(db, p, m) for m in ("html", "rules", "both")]
    other = await follow_job(db, p, "rules", ruleset=RULES + 1)  # no yields under its rule set
    locked = await visits.lock_pending(db, [(j, (await ids(db, p))[0])
                                            for j in (html, rules, both)])
    assert sorted(x.follow for x in locked) == ["both", "html", "rules"]
    assert await process(db, html, p) == [f"{H}/a", f"{H}/b"]
    assert await process(db, rules, p) == [f"{H}/a", f"{H}/c", f"{H}/item?id=7",
                                           f"{H}/style.css"]
    assert await process(db, both, p) == [f"{H}/a", f"{H}/b", f"{H}/c", f"{H}/item?id=7",
                                          f"{H}/style.css"]
    assert await process(db, other, p) == []
    # The result stays the page's HTML links, whatever the job follows.
    for job in (html, rules, both, other):
        assert await result(db, job) == [f"{H}/a", f"{H}/b"]
    # Cached (answered from the store) gives the same children as fetched.
    again = await follow_job(db, p, "rules")
    assert await process(db, again, p, outcome="cached") == [
        f"{H}/a", f"{H}/c", f"{H}/item?id=7", f"{H}/style.css"]
    levels = dict(await db.fetch("""
        SELECT u.url, v.level FROM job_visit v JOIN url u ON u.id = v.url_id
        WHERE v.job_id = $1""", rules))
    assert levels == {p: 0, f"{H}/a": 1, f"{H}/c": 1, f"{H}/item?id=7": 1, f"{H}/style.css": 1}


async def test_a_rules_child_found_again_is_not_queued_again(db: asyncpg.Connection) -> None:
    p, c = f"{H}/p", f"{H}/c"
    await record(db, p, yields=(Yield("link", {"url": c}),))
    await record(db, c, yields=(Yield("link", {"url": p}), Yield("link", {"url": c}),
                                Yield("id", {"id": "1", "url": f"{H}/item?id=1"})))
    job = await follow_job(db, p, "rules")
    assert await process(db, job, p) == [c]
    assert await process(db, job, c) == [f"{H}/item?id=1"]
    assert await process(db, job, c) == []  # a duplicate delivery: nothing pending any more


async def test_rules_children_respect_depth_scope_and_max_pages(db: asyncpg.Connection) -> None:
    p = f"{H}/p"
    await record(db, p, yields=tuple(Yield("link", {"url": u}) for u in (
        f"{H}/1", f"{H}/2", f"{H}/3", "http://elsewhere.example/x")))
    shallow = await follow_job(db, p, "rules", max_level=1)
    assert await process(db, shallow, p) == []
    async with db.transaction():
        capped, _ = await jobs.create_job(db, [p], 5, False, scope=Scope("host"), max_pages=3)
        await db.execute("UPDATE job SET follow = 'rules', ruleset = $2 WHERE id = $1",
                         capped, RULES)
    assert await process(db, capped, p) == [f"{H}/1", f"{H}/2"]  # in scope, 3 pages in all


FMT = f"{H}/item?id={{}}"
SETTINGS = Settings()


async def id_set(db: asyncpg.Connection, idents: list[str]) -> UUID:
    async with db.transaction():
        s = await idsets.create_set(db)
        for i in range(0, len(idents), 5000):
            await idsets.add_members(db, s, idents[i:i + 5000])
        await idsets.finish_set(db, s, len(idents))
    return s


async def id_job(db: asyncpg.Connection, **ids: Any) -> int:
    """A job from a spec with ``ids`` (uuids given as such), created as the web server does."""
    ids = {"regex": r"id=(\w+)", "urlFormat": FMT,
           **{k: str(v) if isinstance(v, UUID) else v for k, v in ids.items()}}
    maxpages = ids.pop("maxPages", None)
    body = {"ids": ids, **({"scope": {"maxPages": maxpages}} if maxpages else {})}
    spec = validate_spec(json.dumps(body), SETTINGS)
    async with db.transaction():
        job, _ = await jobs.create_job(db, spec.urls, spec.max_level, spec.force_crawl,
                                       spec.scope.as_scope(), spec.scope.max_pages, spec.sitemaps,
                                       spec.stored())
    return job


def item(ident: str) -> str:
    return FMT.format(ident)


async def pending_urls(db: asyncpg.Connection, job: int) -> list[str]:
    return sorted(r["url"] for r in await db.fetch(
        "SELECT u.url FROM job_pending p JOIN url u ON u.id = p.url_id WHERE p.job_id = $1", job))


async def job_counters(db: asyncpg.Connection, job: int) -> dict[str, tuple[int, bool]]:
    return {r["url"]: (r["pending"], r["completed"]) for r in await db.fetch("""
        SELECT u.url, ju.pending, ju.completed_on IS NOT NULL AS completed
        FROM job_url ju JOIN url u ON u.id = ju.url_id WHERE ju.job_id = $1""", job)}


async def ids_found(db: asyncpg.Connection, url: str, *idents: str) -> None:
    await record(db, url, yields=tuple(Yield("id", {"id": i, "url": item(i)}) for i in idents),
                 ruleset=ruleset_of(validate_spec(json.dumps(
                     {"ids": {"regex": r"id=(\w+)", "urlFormat": FMT}, "urls": [H]}),
                     SETTINGS).stored()))


async def test_seed_job_queues_known_ids_once_and_never_explored_ones(
        db: asyncpg.Connection) -> None:
    explored = await id_set(db, ["e1", "e2", "both", "e1"])
    known = await id_set(db, ["k1", "k2", "both", "k1", "k3", "s1"])
    job = await id_job(db, seeds=["s1", "e1"], known=known, explored=explored)
    assert await db.fetchval("SELECT follow FROM job WHERE id = $1", job) == "rules"
    # Seeds are job URLs, fetched even when explored; known ids are queued from the first one.
    assert await pending_urls(db, job) == [item(i) for i in ("e1", "k1", "k2", "k3", "s1")]
    assert await job_counters(db, job) == {item("s1"): (4, False), item("e1"): (1, False)}
    # Found again: explored ids are never queued, nor known ones already pending or visited.
    await ids_found(db, item("k1"), "e2", "both", "k2", "s1", "new")
    assert await process(db, job, item("k1")) == [item("new")]
    await ids_found(db, item("new"), "k1", "new", "e2", "k3")
    assert await process(db, job, item("new")) == []
    for ident in ("s1", "e1", "k2", "k3"):
        await ids_found(db, item(ident), "e1", "e2", "both")
        assert await process(db, job, item(ident)) == []
    assert await job_counters(db, job) == {item("s1"): (0, True), item("e1"): (0, True)}
    assert not await pending_urls(db, job)


async def test_a_job_given_only_known_ids_starts_from_the_least_unexplored_one(
        db: asyncpg.Connection) -> None:
    known = await id_set(db, ["b", "c", "a", "d"])
    explored = await id_set(db, ["a"])
    job = await id_job(db, known=known, explored=explored)
    assert await job_counters(db, job) == {item("b"): (3, False)}
    assert await pending_urls(db, job) == [item(i) for i in ("b", "c", "d")]


async def test_seeded_ids_count_against_max_pages(db: asyncpg.Connection) -> None:
    known = await id_set(db, [f"k{i}" for i in range(10)])
    explored = await id_set(db, ["k0", "k1"])
    job = await id_job(db, seeds=["s"], known=known, explored=explored, maxPages=5)
    assert await pending_urls(db, job) == [item(i) for i in ("k2", "k3", "k4", "k5", "s")]
    assert await db.fetchval("SELECT visits FROM job WHERE id = $1", job) == 5
    assert await job_counters(db, job) == {item("s"): (5, False)}
    await ids_found(db, item("s"), "k9", "other")
    assert await process(db, job, item("s")) == []  # the cap is reached


async def test_seed_job_memory_is_chunked(db: asyncpg.Connection) -> None:
    n = 12_345
    known = await id_set(db, [f"{i:06d}" for i in range(n)])
    explored = await id_set(db, [f"{i:06d}" for i in range(0, 2 * n, 2)])  # every other id
    sizes: list[int] = []

    def log(q: Any) -> None:
        sizes.extend(len(a) for a in q.args if isinstance(a, list))

    db.add_query_logger(log)
    try:
        job = await id_job(db, known=known, explored=explored)
    finally:
        db.remove_query_logger(log)
    assert sizes and max(sizes) <= 5000
    assert await db.fetchval("SELECT count(*) FROM job_pending WHERE job_id = $1", job) == n // 2
    assert await db.fetchval("SELECT sum(pending) FROM job_url WHERE job_id = $1", job) == n // 2
    assert await db.fetchval(
        "SELECT count(*) FROM job_visit WHERE job_id = $1", job) == n // 2 + n


async def test_a_job_following_html_links_runs_no_rules_statement(db: asyncpg.Connection) -> None:
    p = f"{H}/p"
    await record(db, p, links=(f"{H}/a",), yields=(Yield("link", {"url": f"{H}/c"}),),
                 ruleset=0)
    job = await follow_job(db, p, "html")
    statements: list[str] = []

    def log(q: Any) -> None:
        statements.append(q.query)

    db.add_query_logger(log)
    try:
        assert await process(db, job, p) == [f"{H}/a"]  # not the rules' link
    finally:
        db.remove_query_logger(log)
    # Today's statements: the children from the links alone (lock_pending reads job.follow).
    assert statements and not [s for s in statements if "url_yield" in s]
    assert [s for s in statements if "url_links" in s] == [
        s for s in statements if "INSERT INTO job_page" in s or visits._LINKS_SQL in s]


async def test_a_rule_may_follow_any_type_the_html_links_never_images(
        db: asyncpg.Connection) -> None:
    p = f"{H}/p"
    await record(db, p, links=(f"{H}/a.png", f"{H}/b"), yields=(
        Yield("link", {"url": f"{H}/c.png"}), Yield("id", {"id": "s.css", "url": f"{H}/s.css"})))
    html, rules, both = [await follow_job(db, p, m) for m in ("html", "rules", "both")]
    assert await process(db, html, p) == [f"{H}/b"]
    assert await process(db, rules, p) == [f"{H}/c.png", f"{H}/s.css"]
    assert await process(db, both, p) == [f"{H}/b", f"{H}/c.png", f"{H}/s.css"]
    # A job following rules fetches what they found, whatever its type; others never fetch it.
    (png,) = await ids(db, f"{H}/c.png")
    html_png = await follow_job(db, f"{H}/c.png", "html")
    cached = {p.job_id: p.cached for p in await visits.plan(
        db, [(rules, png), (both, png), (html_png, png)], 3600.0)}
    assert cached == {rules: False, both: False, html_png: True}


async def test_a_job_whose_known_ids_are_all_explored_is_refused(
        db: asyncpg.Connection) -> None:
    known = await id_set(db, ["a", "b"])
    explored = await id_set(db, ["b", "a", "c"])
    before = await db.fetchval("SELECT count(*) FROM job")
    with pytest.raises(BadRequest) as e:
        await id_job(db, known=known, explored=explored)
    assert e.value.message == "Invalid ids.known: every known id is explored"
    assert await db.fetchval("SELECT count(*) FROM job") == before  # nothing created
    # With a URL or a seed to fetch, the job is made (and no known id is queued).
    job = await id_job(db, seeds=["s"], known=known, explored=explored)
    assert await pending_urls(db, job) == [item("s")]


async def test_ids_that_make_no_url_are_counted_and_logged(
        db: asyncpg.Connection, caplog: pytest.LogCaptureFixture) -> None:
    known = await id_set(db, ["80", "x", "99999"])
    fmt = "http://h.example:{}/"  # refused by the spec; seed_job must still not drop silently
    async with db.transaction():
        job, ids = await jobs.create_job(db, [f"{H}/start"], 5, False)
        with caplog.at_level(logging.WARNING, logger="shared.db.idsets"):
            queued = await idsets.seed_job(db, job, ids[0], fmt, known, None)
    assert queued == 1
    assert [r.getMessage() for r in caplog.records if r.name == "shared.db.idsets"] == [
        f"job {job}: 2 ids of set {known} make no URL under {fmt}: left out"]
