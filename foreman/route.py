"""Routing a planned visit (pure, no I/O): what becomes of it, decided by one rule for the two
callers that plan visits, the feeder's planning claim (``foreman/feeder.py`` ``feed``: a
``fetch`` goes straight to its kind's work queue, anything else to the URL queue) and the
foreman (``foreman/schedule.py`` ``Foreman._process``, which answers the rest)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal, NamedTuple

from shared.db.visits import Planned
from shared.scope import denied
from shared.traps import TrapLimits

if TYPE_CHECKING:
    from shared.config import Settings

# fetch: to a worker of its job's fetcher kind; store: answered from the stored page (cached,
# a type never fetched, a re-expansion); drop: its job cancelled or its URL denied now; hold:
# its job paused; trap: a link that is a crawler trap, blocked unfetched.
Route = Literal["fetch", "store", "drop", "hold", "trap"]
TRAPS_MAX = 10_000  # jobs whose trap limits a JobTraps keeps (then it starts afresh)


class Routed(NamedTuple):
    """A visit's route, and for a ``trap`` why it is one (``TrapLimits.check``'s reason)."""

    to: Route
    why: str | None = None


def stale(p: Planned) -> Literal["drop", "hold"] | None:
    """What a visit whose job changed since it was queued gets instead of its work: ``drop``
    (its job cancelled, or its URL refused by the job's deny list now), ``hold`` (its job
    paused), or None (it is worked on). A running job without deny patterns never calls it."""
    if p.state == "cancelled" or (p.deny and denied(p.deny, p.url)):
        return "drop"
    return "hold" if p.state == "paused" else None


def route(p: Planned, limits: TrapLimits) -> Routed:
    """Where the visit ``p`` goes, its job's trap limits ``limits``: a changed job's visit
    (``stale``) first, then a link that is a trap (level above 0, not a re-expansion), then a
    stored answer, else a fetch."""
    if (p.state != "running" or p.deny) and (act := stale(p)):
        return Routed(act)
    if p.level and not p.reexpand and (why := limits.check(p.url, p.level)):
        return Routed("trap", why)
    return Routed("store" if p.cached else "fetch")


class JobTraps:
    """Each job's trap limits (its spec never changes), kept by a foreman for its pull loops and
    its feeder: a plan reads a job's spec "traps" only while the job is not in here. Only ever
    added to; when it grows too big it is replaced, not cleared, so a batch planned against the
    old one (``known``) still finds there every job the plan left out."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._jobs: dict[int, TrapLimits] = {}

    def known(self) -> dict[int, TrapLimits]:
        """The limits to plan a batch against (its ``known_traps``), then ``learn`` into."""
        if len(self._jobs) >= TRAPS_MAX:
            self._jobs = {}
        return self._jobs

    def learn(self, known: dict[int, TrapLimits], planned: Iterable[Planned]) -> None:
        """Add the limits of the jobs whose traps the plan read (not in ``known``)."""
        for p in planned:
            if p.job_id not in known:
                known[p.job_id] = TrapLimits.of(p.traps, self._settings)
