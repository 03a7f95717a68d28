"""A pipeline step's or a task run's heartbeat (``shared.bus.KeepAlive``): JetStream hears
``in_progress`` every interval while a step runs, nothing for a step shorter than one, and
nothing once the step has ended (no beat left running or scheduled)."""

from __future__ import annotations

import asyncio
import time

from shared.bus import KeepAlive


class Told:
    """What the heartbeat sees of a message: its ``in_progress``, counted (``slow``: each
    answer takes that long)."""

    def __init__(self, slow: float = 0.0) -> None:
        self.beats = 0
        self.answered = 0
        self.slow = slow

    async def in_progress(self) -> None:
        self.beats += 1
        await asyncio.sleep(self.slow)
        self.answered += 1


class Broken(Told):
    async def in_progress(self) -> None:
        self.beats += 1
        raise ConnectionError("the server went away")


async def _beats(told: list[Told], n: int, timeout: float = 10.0) -> float:
    """Seconds until every message was told ``n`` times (a loaded machine's timers run late:
    waited for, not counted over a set time)."""
    t0 = time.monotonic()
    while not all(m.beats >= n for m in told):
        assert time.monotonic() - t0 < timeout, [m.beats for m in told]
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


async def test_a_long_step_beats_every_interval_for_each_message() -> None:
    msgs = [Told(), Told()]
    async with KeepAlive(msgs, 0.05):  # type: ignore[arg-type]
        took = await _beats(msgs, 4)
    assert took >= 4 * 0.05 - 0.01  # not sooner than every interval
    assert all(m.beats <= took / 0.05 + 1 for m in msgs), [m.beats for m in msgs]


async def test_a_short_step_beats_never_and_leaves_nothing_behind() -> None:
    told = Told()
    beat = KeepAlive([told], 0.05)  # type: ignore[list-item]
    async with beat:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.15)
    assert told.beats == 0
    assert beat._timer is not None and beat._timer.cancelled()


async def test_leaving_the_step_cancels_a_beat_in_flight_and_the_next() -> None:
    told = Told(slow=1.0)
    async with KeepAlive([told], 0.02):  # type: ignore[list-item]
        await asyncio.sleep(0.07)  # the first beat waits on its answer: no second one starts
    assert told.beats == 1 and told.answered == 0
    await asyncio.sleep(0.1)
    assert told.beats == 1 and told.answered == 0


async def test_a_failed_beat_neither_stops_the_next_nor_the_other_messages() -> None:
    broken, told = Broken(), Told()
    async with KeepAlive([broken, told], 0.03):  # type: ignore[list-item]
        await _beats([broken, told], 3)
