"""What a worker's commits know without asking PostgreSQL (``Known``, ``Facts``), and where in
the server's WAL a transaction starts (``where``)."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

import asyncpg

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Server:
    """Where a transaction starts: its server process and the WAL's positions then."""
    backend: tuple[int, datetime]  # the process's pid and start: a pid may be reused
    inserted: int                  # pg_current_wal_insert_lsn(), in bytes
    flushed: int                   # pg_current_wal_flush_lsn(): on disk up to there


async def where(conn: asyncpg.Connection) -> Server:
    row = await conn.fetchrow("""
        SELECT a.pid, a.backend_start,
               (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint AS inserted,
               (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint AS flushed
        FROM pg_stat_get_activity(pg_backend_pid()) a""")
    return Server((row["pid"], row["backend_start"]), row["inserted"], row["flushed"])


class Known(Generic[K]):
    """Numbers read from or written to PostgreSQL that stay true once durable, by key, as this
    process has seen them committed: a worker's commits use them instead of asking again.

    * URL -> the id of its ``url`` row (``pages.upsert_urls``): a ``url`` row is never deleted
      and its text never changes. Most links of a page were on pages before it: their look-up
      was most of ``upsert_urls``' time.
    * (job, url) -> a level the job's visit of it has at most (``visits._insert_first``): a
      visit is deleted only with its job and its level only goes down, so a child at that level
      or deeper is neither a new visit nor a shorter path. Most links of a page are visited
      already: they were most of the rows inserted (to conflict) and updated (to no effect).

    Durable, not only committed: with ``synchronous_commit=off`` (``harvester up``'s embedded
    PostgreSQL) a server crash loses the last commits; a lost row's id may then go to another
    URL, a lost visit be missing. So a transaction's facts are noted (``note``), kept aside once
    it has committed (``committed``), and used only once the WAL is on disk past the point
    where the next transaction started (``begin``, given ``where``: that point is past the
    commit). An earlier attempt's notes are dropped at ``begin``; the facts kept aside are
    dropped when a transaction runs on a server process not seen before (after a crash every
    connection is new; so are the pool's replacements of idle ones, which costs hits only).

    Bounded: two generations of at most ``size`` keys each; a key found in the older one moves
    to the newer, the older is dropped when the newer cannot take a batch more. ``size`` 0
    keeps nothing."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._new: dict[K, int] = {}
        self._old: dict[K, int] = {}
        self._noted: dict[K, int] = {}
        # (the WAL position past their commit, or None: not known yet; the facts)
        self._staged: collections.deque[tuple[int | None, Mapping[K, int]]] = (
            collections.deque())
        self._backends: set[tuple[int, datetime]] = set()

    def __len__(self) -> int:
        return len(self._new) + len(self._old)

    def split(self, keyed: Mapping[K, V]) -> tuple[dict[K, int], dict[K, V]]:
        """The numbers known of these keys, and the rest of ``keyed``."""
        # comprehensions over the few keys asked: a set operation with a dict's keys() costs
        # as much as the dict has keys
        new, old = self._new, self._old
        found = {k: new[k] for k in keyed if k in new}
        if len(found) == len(keyed):
            return found, {}
        rest = {k: v for k, v in keyed.items() if k not in found}
        if old and (older := {k: old[k] for k in rest if k in old}):
            self._keep(older)  # found in the older generation: into the newer
            found |= older
            rest = {k: v for k, v in rest.items() if k not in older}
        return found, rest

    def get(self, key: K) -> int | None:
        found = self._new.get(key)
        return self._old.get(key) if found is None else found

    def begin(self, server: Server) -> None:
        """A transaction (or another attempt of one) starts there."""
        self._noted = {}
        staged = self._staged
        if server.backend not in self._backends:
            if len(self._backends) >= 1024:
                self._backends.clear()
            self._backends.add(server.backend)
            staged.clear()
            return
        # the latest commits (at the right end) are marked: they are before this start
        for i in range(len(staged) - 1, -1, -1):
            if staged[i][0] is not None:
                break
            staged[i] = (server.inserted, staged[i][1])
        while staged and (at := staged[0][0]) is not None and at <= server.flushed:
            new = self._new
            self._keep({k: v for k, v in staged.popleft()[1].items() if k not in new})

    def note(self, facts: Mapping[K, int]) -> None:
        """The transaction read or wrote these."""
        if self.size:
            self._noted.update(facts)

    def committed(self) -> None:
        """The transaction has committed: keep what it noted aside until it is durable."""
        if self._noted:
            self._staged.append((None, self._noted))
            self._noted = {}

    def clear(self) -> None:
        """Forget everything (a batch failed on its data: perhaps on a fact)."""
        self._new, self._old, self._noted = {}, {}, {}
        self._staged.clear()

    def _keep(self, facts: Mapping[K, int]) -> None:
        if not facts or not self.size:
            return
        if len(facts) > self.size:
            facts = dict(itertools.islice(facts.items(), self.size))
        if len(self._new) + len(facts) > self.size:
            self._old, self._new = self._new, {}
        self._new.update(facts)


class Facts:
    """A worker's two ``Known``: the ids of URLs and the levels of its jobs' visits, begun and
    committed with each commit's transaction."""

    def __init__(self, size: int) -> None:
        self.urls: Known[str] = Known(size)
        self.visits: Known[tuple[int, int]] = Known(size)

    async def begin(self, conn: asyncpg.Connection) -> None:
        server = await where(conn)
        self.urls.begin(server)
        self.visits.begin(server)

    def committed(self) -> None:
        self.urls.committed()
        self.visits.committed()

    def clear(self) -> None:
        self.urls.clear()
        self.visits.clear()
