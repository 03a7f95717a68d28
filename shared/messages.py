"""Queue message models: frozen, strict, versioned. The subjects are the configured topics.

A message names one pending visit, ``(job, url)``; everything else (level, origin, whether it
re-expands a page already processed) is read from ``job_pending``/``job_visit`` under a row lock
when the message is processed. So a duplicate or late message can never act on stale data: if the
visit is no longer pending, the message is acknowledged and dropped.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from shared.errors import HarvesterError


class BadMessage(HarvesterError):
    """A payload that no version of Harvester can process: terminated, logged once."""


class VisitMessage(BaseModel):
    """On the URL queue: 'decide how to process this visit'. On the work queue: 'fetch it'."""

    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    v: Literal[1] = 1
    job: int
    url: int

    @property
    def key(self) -> tuple[int, int]:
        return (self.job, self.url)

    def encode(self) -> bytes:
        return b'{"v":1,"job":%d,"url":%d}' % (self.job, self.url)

    @classmethod
    def decode(cls, data: bytes) -> VisitMessage:
        try:
            return cls.model_validate(json.loads(data))
        except (ValueError, ValidationError) as e:
            raise BadMessage(f"undecodable visit message {data[:200]!r}: {e}") from None


class TaskMessage(BaseModel):
    """On a task queue (``<taskTopic>.<kind>``): 'run this task'. Its name, arguments and state
    are read from the ``task`` row when it is started, so a duplicate is harmless."""

    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    v: Literal[1] = 1
    task: int

    def encode(self) -> bytes:
        return b'{"v":1,"task":%d}' % self.task

    @classmethod
    def decode(cls, data: bytes) -> TaskMessage:
        try:
            return cls.model_validate(json.loads(data))
        except (ValueError, ValidationError) as e:
            raise BadMessage(f"undecodable task message {data[:200]!r}: {e}") from None
