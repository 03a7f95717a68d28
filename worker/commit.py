"""Committing finished visits: a visit's effects (its page, what it yields, its children, its
completion) go into PostgreSQL in one transaction with the frontier's, many visits a batch,
and its messages are settled only after that transaction commits."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import asyncpg
from nats.aio.msg import Msg

from shared import bus, metrics
from shared.bus import Settle, Verdict
from shared.config import Settings
from shared.db import pages, visits
from shared.db.known import Facts
from shared.db.pool import RETRYABLE, in_transaction
from shared.model import Extraction, FetchedPage
from shared.seen import SeenFilter

log = logging.getLogger(__name__)

Key = tuple[int, int]
NOTHING = Extraction()


@dataclass(slots=True)
class Done:
    """A visit ready to commit: fetched (``page`` set) or to answer from the store."""
    key: Key
    msgs: list[Msg]
    page: FetchedPage | None = None
    attempts: int = 0
    reason: str | None = None  # not fetched, and why (robots.txt)
    failure: str | None = None  # not processed: failed for good, and why (an exception)
    extra: tuple[str, ...] = ()  # URLs to follow that are not links on the page (sitemaps)
    extraction: Extraction = NOTHING  # what the page yields (its links ...), when fetched
    settled: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class Committer:
    """Gathers finished visits and commits them in batches, then settles their messages."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.pool = pool
        self.queue: asyncio.Queue[Done] = asyncio.Queue()
        # The Bloom filters of jobs with ``bloom`` (a job without one never touches them).
        self.seen = SeenFilter(settings.bloom_jobs)
        # What the commits need not ask PostgreSQL again: the ids of URLs, the levels of visits.
        self.known = Facts(settings.commit_cache)

    async def submit(self, done: Done) -> None:
        await self.queue.put(done)
        await done.settled

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            deadline = time.monotonic() + self.settings.batch_wait
            while len(batch) < self.settings.batch_size:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), timeout))
                except TimeoutError:
                    break
            await self._commit(batch)

    async def _commit(self, batch: list[Done]) -> None:
        """Commit a batch, then settle its messages. A batch that fails with a data error
        (``_data_error``) is committed again in halves, down to the one visit at fault, which
        is recorded as failed with the error: one visit that cannot be stored never holds back
        the others, nor comes back forever. Any other error (PostgreSQL away, a schema older
        than the code, a bug) is no visit's fault: the whole batch is redelivered later."""
        await self._resolve(batch, await self._attempt(batch))

    async def _attempt(self, batch: list[Done]) -> Exception | None:
        start = time.monotonic()
        try:
            await self._transaction(batch)
        except Exception as e:  # noqa: BLE001 - judged by _resolve
            return e
        metrics.COMMIT_SECONDS.observe(time.monotonic() - start)
        metrics.COMMIT_BATCH.observe(len(batch))
        _count(batch)
        return None

    async def _resolve(self, batch: list[Done], error: Exception | None) -> None:
        """Settle a batch whose transaction ended with ``error`` (None: it committed)."""
        if error is None:
            verdict = Settle(Verdict.ACK)
        elif not _data_error(error):
            log.warning("commit of %d visits failed (%s); they will be redelivered",
                        len(batch), describe(error), exc_info=not _expected(error))
            verdict = Settle(Verdict.RETRY, 2.0)
        elif len(batch) == 1:
            verdict = await self._fail(batch[0], error)
        else:
            log.warning("commit of %d visits failed (%s); committing them in halves",
                        len(batch), describe(error))
            self.known.clear()  # were it a fact known wrongly, it is not used again
            halves = (batch[:len(batch) // 2], batch[len(batch) // 2:])
            errors = [await self._attempt(h) for h in halves]
            if errors[0] is None or errors[1] is None:
                for h, e in zip(halves, errors, strict=True):
                    await self._resolve(h, e)
                return
            # Not one visit's fault (or more than one): splitting further would blame them all.
            log.warning("both halves of %d visits failed (%s); they will be redelivered",
                        len(batch), describe(errors[1]))
            verdict = Settle(Verdict.RETRY, 2.0)
        await bus.settle_all((d.msgs for d in batch), verdict)
        for d in batch:
            if not d.settled.done():
                d.settled.set_result(None)

    async def _fail(self, done: Done, error: Exception) -> Settle:
        """Record a visit that cannot be committed as failed, with the error as its reason."""
        if isinstance(error, asyncpg.PostgresError):
            log.error("visit %s cannot be stored (%s); recorded as failed", done.key, error)
        else:  # a bug: keep its traceback
            log.error("visit %s cannot be stored; recorded as failed", done.key, exc_info=error)
        failed = replace(done, page=None, extra=(), reason=None, extraction=NOTHING,
                         failure=f"not stored: {describe(error)}")
        try:
            await self._transaction([failed])
        except Exception as e:  # noqa: BLE001 - PostgreSQL away, or worse: the visit comes back
            log.warning("visit %s not recorded as failed either (%s); it will be redelivered",
                        done.key, e)
            return Settle(Verdict.RETRY, 5.0)
        return Settle(Verdict.ACK)

    async def _transaction(self, batch: list[Done]) -> None:
        keys = [d.key for d in batch]
        fetched = {d.key: (d.page, d.extraction) for d in batch if d.page is not None}
        tries = {d.key: d.attempts for d in batch}
        reasons = {d.key: r for d in batch if (r := d.reason or d.failure)}
        extra_urls = {d.key: d.extra for d in batch if d.extra}
        outcomes: dict[Key, visits.Outcome] = {d.key: _outcome(d) for d in batch}

        async def work(conn: asyncpg.Connection) -> None:
            await self.known.begin(conn)
            # Every URL the batch names, before a visit is locked (``pages.link_ids``): then
            # the commit waits for another's new URL holding no visit that one may wait for.
            ids = await pages.link_ids(conn, list(fetched.values()),
                                       (u for us in extra_urls.values() for u in us),
                                       self.known.urls)
            locked = await visits.lock_pending(conn, keys)
            live = {p.key for p in locked}
            await pages.record_fetches(conn, [f for k, f in fetched.items() if k in live],
                                       ids_by_url=ids)
            extra = {k: [ids[u] for u in us] for k, us in extra_urls.items()}
            await visits.complete(conn, locked, outcomes, attempts=tries, reasons=reasons,
                                  extra=extra, seen=self.seen, known=self.known.visits)

        await in_transaction(self.pool, work)
        self.known.committed()


# Classes of SQLSTATE for errors in the data stored: data exceptions, integrity constraints,
# program limits exceeded (a value too large for an index, say). Only these are blamed on the
# visits of a batch; the rest (PostgreSQL out of reach, conflicts, a schema older than the
# code, ...) are retried with the whole batch.
_DATA_SQLSTATE = frozenset({"22", "23", "54"})


def _data_error(e: Exception) -> bool:
    """Whether the batch's data is at fault: a PostgreSQL data error, a value asyncpg cannot
    send, a URL whose MD5 is another stored URL's (no id from ``pages.upsert_urls``), or a
    yield's value JSON cannot encode (a set, bytes: a plug-in's, past the pipeline's check)."""
    if isinstance(e, asyncpg.PostgresError):
        return (e.sqlstate or "")[:2] in _DATA_SQLSTATE
    return isinstance(e, asyncpg.exceptions._base.DataError | KeyError) or _in_json(e)


def _in_json(e: Exception) -> bool:
    """A TypeError or ValueError raised by the json module (encoding a value), not a bug
    elsewhere that happens to raise one."""
    if not isinstance(e, TypeError | ValueError):
        return False
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and _JSON_DIR in Path(tb.tb_frame.f_code.co_filename).parents


_JSON_DIR = Path(json.__file__).parent


def _expected(e: Exception) -> bool:
    """An error that is not a bug: no traceback in the log."""
    return isinstance(e, (*RETRYABLE, asyncpg.PostgresError))


def _count(batch: list[Done]) -> None:
    """The metrics of a committed batch: fetches by kind and status class, pages parsed (a
    few dict lookups per visit, no await). Latency and bytes are counted at the fetch."""
    for d in batch:
        page = d.page
        if page is None:
            continue
        status = None if page.error is not None else page.status
        metrics.FETCHES.labels(page.fetcher, metrics.status_class(status)).inc()
        if d.extraction is not NOTHING:
            metrics.PAGES_PARSED.inc()


def _outcome(done: Done) -> visits.Outcome:
    if done.failure:
        return "abandoned"
    return "fetched" if done.page is not None else "blocked" if done.reason else "cached"


def describe(e: BaseException) -> str:
    """An exception as a failure reason: its type and message, on one bounded line."""
    text = f"{type(e).__name__}: {e}".rstrip(": ").replace("\x00", "\\x00")
    return " ".join(text.split())[:500]
