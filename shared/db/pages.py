"""What a fetch found: the ``url`` row of each fetched page (and its version), its links at that
version (``url_links``: one row, written once) and, under a job's rule set, its other yields
(``url_yield``, ``url_extraction``)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import TypeVar

import asyncpg

from shared.db.known import Known
from shared.mime import guess_mime
from shared.model import Extraction, FetchedPage, Yield

CHUNK = 5_000  # URLs (or links) a statement, for a page with very many links
TARGET_KINDS = frozenset({"link", "id"})  # yields naming a URL to follow (``url_yield.target``)
T = TypeVar("T")


async def record_fetches(conn: asyncpg.Connection,
                         fetched: Sequence[tuple[FetchedPage, Extraction]],
                         known: Known[str] | None = None,
                         ids_by_url: Mapping[str, int] | None = None) -> None:
    """Update the pages' ``url`` rows and record their links (``Extraction.links``); set-based,
    a few statements a batch.

    Each answer but a 304 (a failure too) makes a new version of the page (``url.version``),
    recorded with the fetcher kind that made it (``url.fetcher``, NULL for http; a 304 confirms
    the version its own fetcher made, validators are sent for no other), and its links at that
    version: one ``url_links`` row (the distinct link ids, ascending; none for a failure), never
    changed after. A 304 writes no links: its version has them already. The ``url`` rows are
    locked in id order first (``_LOCK_URLS``), so two batches sharing pages cannot deadlock. A
    page extracted under a rule set (``Extraction.ruleset`` != 0) also gets that rule set's
    yields replaced and recorded as extracted at the new version (``_record_yields``): only
    batches holding such pages pay for it. A page fetched for two rule sets in one batch keeps one
    answer and its links once, and its yields per rule set.

    ``ids_by_url``: the ids of the links and of the yields' URLs, from ``link_ids`` earlier in
    the transaction (the worker's commit upserts them before it locks its visits); without it
    they are upserted here, links whose id is in ``known`` not looked up."""
    if not fetched:
        return
    links = {p.url_id: x.links for p, x in fetched}
    by_id = {p.url_id: p for p, _ in fetched}  # the same URL fetched for two jobs: keep one answer
    fresh = sorted(i for i, p in by_id.items() if p.not_modified)
    if fresh:
        await conn.execute(f"""
            WITH {_LOCK_URLS}
            UPDATE url SET crawled_on = now(), fetched_on = now(), error = NULL
            FROM locked k WHERE url.id = k.id""", fresh)
    ids = sorted(i for i, p in by_id.items() if not p.not_modified)
    if not ids:
        return
    ps = [by_id[i] for i in ids]
    await conn.execute(f"""
        WITH {_LOCK_URLS}
        UPDATE url SET mime = coalesce(d.mime, url.mime), status = d.status, error = d.error,
               fetched_on = now(), crawled_on = CASE WHEN d.cacheable THEN now() END,
               final_url = d.final_url,
               redirects = CASE WHEN d.redirects = '' THEN NULL
                                ELSE string_to_array(d.redirects, E'\\n') END,
               etag = d.etag, last_modified = d.last_modified, version = url.version + 1,
               fetcher = d.fetcher
        FROM unnest($1::bigint[], $2::text[], $3::int[], $4::text[], $5::bool[], $6::text[],
                    $7::text[], $8::text[], $9::text[], $10::text[])
             AS d(id, mime, status, error, cacheable, final_url, redirects, etag, last_modified,
                  fetcher)
        JOIN locked k ON k.id = d.id
        WHERE url.id = d.id""",
        ids, [p.mime for p in ps], [p.status for p in ps], [p.error for p in ps],
        [p.cacheable for p in ps], [p.final_url for p in ps],
        ["\n".join(p.redirects) for p in ps], [p.etag for p in ps],
        [p.last_modified for p in ps], [None if p.fetcher == "http" else p.fetcher for p in ps])
    if ids_by_url is None:
        ids_by_url = await link_ids(conn, fetched, known=known)
    await _record_links(conn, ps, links, ids_by_url)
    extracted = {(p.url_id, x.ruleset): x for p, x in fetched if x.ruleset and not p.not_modified}
    if extracted:
        await _record_yields(conn, extracted, ids_by_url)


async def link_ids(conn: asyncpg.Connection,
                   fetched: Sequence[tuple[FetchedPage, Extraction]],
                   also: Iterable[str] = (), known: Known[str] | None = None) -> dict[str, int]:
    """The ids of the links of these pages (a 304's excepted: it writes none), of the URLs
    their link and id yields name, and of ``also`` (MIME type guessed), the missing ones
    inserted: every URL in one sorted order, a chunk a statement (``upsert_urls``).

    The worker's commit calls it before it locks any visit (``visits.lock_pending``): the
    insert of a new URL waits for another transaction inserting the same one, and were that
    wait taken while holding a visit the other transaction is waiting for (to lower its
    level), the two would deadlock."""
    # A page may have hundreds of thousands of links (a 10 MiB body): the work goes in chunks,
    # each statement a few milliseconds of the event loop, URLs in one sorted order throughout.
    link_mime: dict[str, str] = {}
    for p, x in fetched:
        if p.not_modified:
            continue
        async for chunk in _chunks(x.links):
            link_mime.update(chunk)  # the type is guessed from the URL: the same for each page
    named = (u for p, x in fetched if x.ruleset and not p.not_modified
             for u in _targets(x.yields))  # the URLs of link and id yields
    for u in itertools.chain(named, also):
        if u is not None and u not in link_mime:
            link_mime[u] = guess_mime(u)
    urls = sorted(link_mime)  # fast: a page's links come sorted (worker.extractors.lanes)
    ids_by_url: dict[str, int] = {}
    async for some in _chunks(urls):
        ids_by_url.update(await upsert_urls(conn, {u: link_mime[u] for u in some}, known))
    return ids_by_url


async def _record_links(conn: asyncpg.Connection, ps: Sequence[FetchedPage],
                        links: Mapping[int, Sequence[tuple[str, str]]],
                        ids_by_url: Mapping[str, int]) -> None:
    """One ``url_links`` row per page at its new version (``'{}'`` for a page without links, a
    failure: so a version without one is none that was fetched). Pages go whole into one
    statement of at most ``CHUNK`` links (usually the whole batch: one statement); a page of
    more links than that is written a chunk a statement, then sorted and deduplicated in
    place. The pages' url rows are locked already (``_LOCK_URLS``)."""
    pages: list[int] = []
    refer: list[int] = []
    linked: list[int] = []
    for p in ps:  # pages in id order: one order for everyone
        ids: list[int] = []
        async for chunk in _chunks(links[p.url_id]):
            ids += [ids_by_url[u] for u, _ in chunk]
        if pages and len(refer) + len(ids) > CHUNK:
            await conn.execute(_INSERT_LINKS, pages, refer, linked)
            pages, refer, linked = [], [], []
        if len(ids) <= CHUNK:
            pages.append(p.url_id)
            refer += [p.url_id] * len(ids)
            linked += ids
            continue
        await conn.execute(_INSERT_LINKS, [p.url_id], [p.url_id] * CHUNK, ids[:CHUNK])
        for i in range(CHUNK, len(ids), CHUNK):
            await conn.execute(_APPEND_LINKS, p.url_id, ids[i:i + CHUNK])
        await conn.execute(_SORT_LINKS, p.url_id)
    if pages:
        await conn.execute(_INSERT_LINKS, pages, refer, linked)


# The link sets of pages $1 at their current version, from flat (page, link) arrays $2, $3.
_INSERT_LINKS = """
    INSERT INTO url_links (url_id, version, n, links)
    SELECT u.id, u.version, count(DISTINCT l.link),
           coalesce(array_agg(DISTINCT l.link ORDER BY l.link)
                    FILTER (WHERE l.link IS NOT NULL), '{}')
    FROM url u LEFT JOIN unnest($2::bigint[], $3::bigint[]) AS l(refer_id, link)
         ON l.refer_id = u.id
    WHERE u.id = ANY($1::bigint[])
    GROUP BY u.id, u.version
    ORDER BY u.id
    ON CONFLICT DO NOTHING"""
# More links of page $1's set at its current version (a page of more than CHUNK links)...
_APPEND_LINKS = """
    UPDATE url_links l SET links = l.links || $2::bigint[]
    FROM url u WHERE u.id = $1 AND l.url_id = u.id AND l.version = u.version"""
# ... then its set made what every set is: distinct ids, ascending, and their count.
_SORT_LINKS = """
    UPDATE url_links l SET (n, links) = (
        SELECT count(*), coalesce(array_agg(d.x ORDER BY d.x), '{}')
        FROM (SELECT DISTINCT x FROM unnest(l.links) AS x) d)
    FROM url u WHERE u.id = $1 AND l.url_id = u.id AND l.version = u.version"""


def _targets(yields: Sequence[Yield]) -> list[str | None]:
    """Per yield, the URL a link or id yield names (``value["url"]``), else None."""
    out: list[str | None] = []
    for y in yields:
        url = y.value.get("url") if y.kind in TARGET_KINDS else None
        out.append(url if isinstance(url, str) else None)
    return out


async def _record_yields(conn: asyncpg.Connection,
                         extracted: dict[tuple[int, int], Extraction],
                         ids_by_url: Mapping[str, int]) -> None:
    """Replace the ``url_yield`` rows of these (page, rule set)s with the extractions' yields
    (numbered in document order within each kind) and record each page as extracted under its
    rule set at its current version (bumped by the caller in this transaction). The caller's
    UPDATE of the ``url`` rows already holds them, so two transactions writing the same page
    take turns.

    A ``link`` or ``id`` yield (a follow rule's link, an id's URL: ``value["url"]``) also
    records the URL it names (``url_yield.target``; ``ids_by_url``: the caller upserted these
    URLs with the links, in one sorted order, so two transactions never insert them in
    opposite orders): the children of a job following its rules are read from these rows, the
    same for a page answered from the store as for a fresh one."""
    keys = sorted(extracted)
    await conn.execute("""
        DELETE FROM url_yield y USING unnest($1::bigint[], $2::bigint[]) AS d(url_id, ruleset)
        WHERE y.url_id = d.url_id AND y.ruleset = d.ruleset""",
        [k[0] for k in keys], [k[1] for k in keys])
    rows: list[tuple[int, int, str, int, str]] = []
    named: list[str | None] = []  # per row: the URL a link or id yield names
    for url_id, ruleset in keys:
        seq: dict[str, int] = {}
        yields = extracted[url_id, ruleset].yields
        named += _targets(yields)
        for y in yields:
            n = seq[y.kind] = seq.get(y.kind, -1) + 1
            rows.append((url_id, ruleset, y.kind, n, json.dumps(y.value)))
            if len(rows) % CHUNK == 0:  # a page of very many items: let the loop run
                await asyncio.sleep(0)
    for i in range(0, len(rows), CHUNK):
        chunk = rows[i:i + CHUNK]
        await conn.execute("""
            INSERT INTO url_yield (url_id, ruleset, kind, seq, value, target)
            SELECT u, r, k, s, v::jsonb, t
            FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::int[], $5::text[],
                        $6::bigint[])
                 AS d(u, r, k, s, v, t)""",
            *(list(col) for col in zip(*chunk, strict=True)),
            [None if u is None else ids_by_url.get(u) for u in named[i:i + CHUNK]])
    await conn.execute("""
        INSERT INTO url_extraction (url_id, ruleset, version)
        SELECT d.url_id, d.ruleset, u.version
        FROM unnest($1::bigint[], $2::bigint[]) AS d(url_id, ruleset) JOIN url u ON u.id = d.url_id
        ON CONFLICT (url_id, ruleset) DO UPDATE SET version = excluded.version""",
        [k[0] for k in keys], [k[1] for k in keys])


async def _chunks(items: Sequence[T]) -> AsyncIterator[Sequence[T]]:
    """``items`` in chunks of ``CHUNK``, letting the event loop run between two of them."""
    for i in range(0, len(items), CHUNK):
        if i:
            await asyncio.sleep(0)
        yield items[i:i + CHUNK]


async def upsert_urls(conn: asyncpg.Connection, mime_by_url: Mapping[str, str],
                      known: Known[str] | None = None) -> dict[str, int]:
    """Ids of these URLs, inserting the missing ones with the given MIME type (race-free);
    those in ``known`` are taken from it, the others noted in it.

    Existing URLs are found by a plain read and only the rest go through ``INSERT ... ON
    CONFLICT``. Most links of a page are known already, and a read takes no lock: an insert
    of a URL whose row another transaction has just updated (the page it fetched) would wait
    for that transaction, and two such waits in opposite directions are a deadlock. New URLs
    are inserted in one order (sorted), so two transactions adding the same ones cannot
    deadlock either.

    URLs are unique by ``md5(url)::uuid`` (migration 0009: a URL of any length can be stored),
    so every look-up by text goes through that index, then compares the text. A URL whose MD5
    is another stored URL's is not inserted and has no id here.
    """
    found: dict[str, int] = {}
    if known is not None:
        found, mime_by_url = known.split(mime_by_url)
        if not mime_by_url:
            return found
    urls = sorted(mime_by_url)
    rows = await conn.fetch(f"""
        WITH input AS (
            SELECT * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS i(url, mime, n)
        ), existing AS (
            SELECT u.id, u.url FROM input i JOIN url u ON {_SAME_URL}
        ), inserted AS (
            INSERT INTO url (url, mime)
            SELECT i.url, i.mime FROM input i
            WHERE NOT EXISTS (SELECT FROM existing e WHERE e.url = i.url)
            ORDER BY i.n
            ON CONFLICT ((md5(url)::uuid)) DO NOTHING RETURNING id, url
        )
        SELECT id, url FROM existing UNION ALL SELECT id, url FROM inserted""",
        urls, [mime_by_url[u] for u in urls])
    ids = {r["url"]: r["id"] for r in rows}
    rest = [u for u in urls if u not in ids]
    if rest:
        # Inserted by a transaction that committed after this statement's snapshot was taken
        # (the INSERT waited for it): a new statement sees it.
        for r in await conn.fetch(f"""
                SELECT u.id, u.url FROM unnest($1::text[]) AS i(url) JOIN url u ON {_SAME_URL}""",
                rest):
            ids[r["url"]] = r["id"]
    if known is not None:
        known.note(ids)
    return found | ids if found else ids


# The url rows of the ids $1, locked in id order (a CTE the UPDATE joins): an UPDATE ... FROM
# unnest locks rows in whatever order its join yields them, and two batches sharing pages, each
# in its own order, would deadlock.
_LOCK_URLS = """locked AS MATERIALIZED (
            SELECT id FROM url WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE)"""


# A url row with the text of input row i, found through the unique index on its hash.
_SAME_URL = "md5(u.url)::uuid = md5(i.url)::uuid AND u.url = i.url"
