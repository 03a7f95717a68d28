"""A visit waiting for its host's turn gives its worker concurrency slot to others meanwhile
(``worker.pipeline.Pipeline._wait_start``, issue 14): with many polite hosts most visits wait
for a start up to ``politenessHorizon`` away, and ``concurrency`` slots held by sleeping visits
capped a 1,000-host crawl at slots / mean wait. The slot is taken again before the request, so
requests in flight stay within ``concurrency``; at most ``WAITING_PER_SLOT`` x concurrency
visits wait without one; a visit whose host was paused meanwhile does not take it again."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from shared.config import Settings

# isort: off
from worker.pipeline import AWAY, WAITING_PER_SLOT, Pipeline, _Hold  # first: worker.gate
from worker.gate import Slot  # imported first meets an import cycle
# isort: on


class Gate:
    """The host gate's ``wait_start``: sleeps the slot's wait; ``paused`` is its answer."""

    def __init__(self, paused: datetime | None = None) -> None:
        self.paused = paused

    async def wait_start(self, slot: Slot) -> datetime | None:
        await asyncio.sleep(slot.wait)
        return self.paused


def slot(wait: float) -> Slot:
    now = datetime.now(UTC)
    return Slot("http://h.example", now, wait, now + timedelta(seconds=wait))


def pipeline(concurrency: int, gate: Gate | None = None) -> Pipeline:
    return Pipeline(Settings(), None, gate or Gate(), None, None,  # type: ignore[arg-type]
                    concurrency)


async def held(p: Pipeline) -> _Hold:
    """A visit's hold, as the worker's serve loop takes it before dispatching the visit."""
    await p.slots.acquire()
    return _Hold(p.slots)


async def test_a_waiting_visit_frees_its_slot_and_takes_it_back_for_the_request() -> None:
    p = pipeline(1)
    hold = await held(p)
    waiting = asyncio.create_task(p._wait_start(slot(0.3), hold))
    await asyncio.sleep(0.1)
    assert not p.slots.locked() and not hold.held  # another visit may fetch meanwhile
    other = await held(p)  # ... and does, until after the first one's start
    await asyncio.sleep(0.3)
    assert not waiting.done()  # the request waits for a slot: never two in flight
    other.release()
    assert await waiting is None
    assert hold.held and p.slots.locked()
    hold.release()
    assert not p.slots.locked()


async def test_a_short_wait_keeps_the_slot() -> None:
    p = pipeline(1)
    hold = await held(p)
    waiting = asyncio.create_task(p._wait_start(slot(AWAY / 2), hold))
    await asyncio.sleep(0)
    assert hold.held and p.slots.locked()
    assert await waiting is None
    assert hold.held


async def test_no_more_than_waiting_per_slot_visits_wait_without_a_slot() -> None:
    p = pipeline(1)
    holds: list[_Hold] = []
    tasks = []
    for _ in range(WAITING_PER_SLOT + 1):  # each dispatched in the slot the one before freed
        holds.append(await asyncio.wait_for(held(p), 1))
        tasks.append(asyncio.create_task(p._wait_start(slot(0.3), holds[-1])))
        await asyncio.sleep(0.01)
    assert [h.held for h in holds] == [False] * WAITING_PER_SLOT + [True]
    assert p.slots.locked()  # the one over the bound waits with its slot
    assert (await asyncio.gather(*tasks[-1:])) == [None]
    holds[-1].release()  # its request done: the others take the slot in turn
    for h, t in zip(holds[:-1], tasks[:-1], strict=True):
        assert await t is None and h.held
        h.release()


async def test_a_paused_host_s_visit_does_not_take_the_slot_again() -> None:
    until = datetime.now(UTC) + timedelta(seconds=30)
    p = pipeline(1, Gate(paused=until))
    hold = await held(p)
    assert await p._wait_start(slot(0.1), hold) == until
    assert not hold.held and not p.slots.locked()  # it goes back to the frontier, no request
