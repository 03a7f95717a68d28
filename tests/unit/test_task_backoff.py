"""A task message that could not be started or recorded (PostgreSQL away) comes back after a
delay that grows with its deliveries, capped at AckWait: an outage of minutes does not use up
``maxDeliver`` deliveries in seconds."""

from __future__ import annotations

import itertools

from worker.taskrun import redelivery_delay


def test_the_redelivery_delay_doubles_per_delivery_up_to_ack_wait() -> None:
    delays = [redelivery_delay(n, 60.0) for n in range(1, 21)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert all(a <= b for a, b in itertools.pairwise(delays))
    assert max(delays) == 60.0 and delays[-1] == 60.0
    assert sum(delays) > 600  # 20 deliveries outlast a 10-minute outage
    assert redelivery_delay(1, 0.2) == 0.2 and redelivery_delay(0, 60.0) == 0.5
