"""What a worker's commits know without asking PostgreSQL (``Known``), and when a commit is durable
(``durable_after``)."""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Hashable, Mapping
from typing import Generic, TypeVar

import asyncpg

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


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
    URL, a lost visit be missing. So a transaction's facts are noted (``note``; ``begin`` at
    each attempt drops an earlier attempt's), kept aside once it has committed (``committed``)
    for ``settle`` seconds (PostgreSQL's bound on an asynchronous commit's delay,
    ``durable_after``; None: not known yet, kept aside until it is) and only then used. A
    transaction on a server process not seen before (``connected``; after a crash every
    connection is new) drops those kept aside.

    Bounded: two generations of at most ``size`` keys each; a key found in the older one moves
    to the newer, the older is dropped when the newer cannot take a batch more. ``size`` 0
    keeps nothing."""

    def __init__(self, size: int, settle: float | None = None) -> None:
        self.size = size
        self.settle = settle
        self._new: dict[K, int] = {}
        self._old: dict[K, int] = {}
        self._noted: dict[K, int] = {}
        self._staged: collections.deque[tuple[float, Mapping[K, int]]] = collections.deque()
        self._backends: set[int] = set()

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

    def begin(self, backend: int) -> None:
        """A transaction (or another attempt of one) starts on the server process ``backend``
        (``get_server_pid()``)."""
        self._noted = {}
        if backend not in self._backends:
            if len(self._backends) >= 1024:
                self._backends.clear()
            self._backends.add(backend)
            self._staged.clear()

    def note(self, facts: Mapping[K, int]) -> None:
        """The transaction read or wrote these."""
        if self.size:
            self._noted.update(facts)

    def committed(self, now: float | None = None) -> None:
        """The transaction has committed: keep what it noted aside until it is durable."""
        now = time.monotonic() if now is None else now
        if self._noted:
            self._staged.append((now, self._noted))
            self._noted = {}
        staged = self._staged
        while staged and self.settle is not None and staged[0][0] <= now - self.settle:
            new = self._new
            self._keep({k: v for k, v in staged.popleft()[1].items() if k not in new})

    def _keep(self, facts: Mapping[K, int]) -> None:
        if not facts or not self.size:
            return
        if len(facts) > self.size:
            facts = dict(itertools.islice(facts.items(), self.size))
        if len(self._new) + len(facts) > self.size:
            self._old, self._new = self._new, {}
        self._new.update(facts)


async def durable_after(conn: asyncpg.Connection) -> float:
    """Seconds after which a commit of this session is on disk: 0 unless ``synchronous_commit``
    is off, else three times ``wal_writer_delay`` (PostgreSQL's bound), and 100 ms more."""
    row = await conn.fetchrow("""
        SELECT current_setting('synchronous_commit') AS sync,
               (SELECT setting::float8 / 1000 FROM pg_settings
                WHERE name = 'wal_writer_delay') AS delay""")
    return 0.0 if row["sync"] != "off" else 3 * row["delay"] + 0.1
