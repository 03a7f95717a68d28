"""Init functions and a task for the init tests (config ``init`` and ``tasks`` name them):
``record_init`` appends its process id to ``$HARVESTER_TEST_INIT_LOG`` (one line per call, so
a test counts the calls across worker processes) and returns it; ``failing_init`` raises;
``whoami`` returns the init values a task is given."""

from __future__ import annotations

import os
from typing import Any


def record_init(settings: Any = None) -> dict[str, Any]:
    pid = os.getpid()
    with open(os.environ["HARVESTER_TEST_INIT_LOG"], "a") as f:
        f.write(f"{pid}\n")
    return {"pid": pid, "topic": getattr(settings, "work_topic", None)}


async def async_init() -> str:
    return "async ready"


def failing_init() -> None:
    raise ValueError("no model file at /nowhere")


def whoami(init: dict[str, Any]) -> dict[str, Any]:
    return dict(init)
