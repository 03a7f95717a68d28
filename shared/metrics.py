"""Prometheus metrics of every tier: module-level prometheus-client objects, all prefixed
``harvester_``. Each process exposes its own registry (web ``/metrics``, the foreman's and
the workers' ``metricsAddr``). Counters and histograms are per process: sum them. The gauges of
shared state (``QUEUE_MESSAGES``, ``PENDING_VISITS``, ``JOBS``) are read by every foreman (the
housekeeping's holder of the moment): take their ``max``, a sum over-counts."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

from shared.robots import blocked_kind

FETCHES = Counter("harvester_fetches", "Visits committed, by fetcher kind and status class "
                  "(2xx .. 5xx, error: no answer)", ["kind", "status_class"])
FETCH_SECONDS = Histogram("harvester_fetch_seconds", "Fetch latency", ["kind"])
FETCH_BYTES = Counter("harvester_fetch_bytes", "Body bytes fetched", ["kind"])
PAGES_PARSED = Counter("harvester_pages_parsed", "Fetched pages committed with their extraction")
RETRIES = Counter("harvester_retries", "Visits retried after a transient failure")
ROBOTS_BLOCKED = Counter("harvester_robots_blocked", "Visits refused by robots.txt")
BLOCKED = Counter("harvester_blocked", "Connections, visits and deliveries refused by the SSRF "
                  "guard or a trap, by kind (why: the reason without 'blocked: ')", ["why"])


def count_blocked(reasons: Iterable[str]) -> None:
    """Count refusals (``blocked: ...`` reasons) in ``harvester_blocked`` by their kind."""
    for kind, n in Tally(blocked_kind(r) for r in reasons).items():
        BLOCKED.labels(kind).inc(n)


HOST_BACKOFFS = Counter("harvester_host_backoffs", "Hosts put in backoff (429, 503, errors)")
VISITS_DEFERRED = Counter("harvester_visits_deferred", "Visits a worker sent back to the frontier "
                          "to wait for their host, by why: robots (its robots.txt not known "
                          "yet), retry (a retry of theirs first), paused (backing off), delay "
                          "(its next starts booked), cap (at its request cap, this worker "
                          "holding no lease there), cap_idle (none of its requests here ended "
                          "lately), cap_queue (its queue here full)", ["why"])
HOST_QUEUE = Counter("harvester_host_queue", "Visits queued in a worker for a slot of their host, "
                     "by outcome: handed (the slot of one of its requests that ended), leased "
                     "(asked PostgreSQL anew), back (none in time, or the host in trouble: to the "
                     "frontier)", ["outcome"])
COMMIT_BATCH = Histogram("harvester_commit_batch_size", "Visits per commit transaction",
                         buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500))
COMMIT_SECONDS = Histogram("harvester_commit_seconds", "Time of a commit transaction")
VISITS_FORWARDED = Counter("harvester_visits_forwarded", "Visits the foreman sent to workers")
VISITS_FROM_STORE = Counter("harvester_visits_from_store",
                            "Visits answered from the page store without a fetch")
VISITS_DROPPED = Counter("harvester_visits_dropped", "Visits dropped (cancelled job, scope)")
VISITS_HELD = Counter("harvester_visits_held", "Visits held for a paused job")
WATCHDOG = Counter("harvester_watchdog", "Watchdog actions", ["action"])
WEBHOOKS = Counter("harvester_webhooks", "Completion webhook deliveries", ["result"])
QUEUE_MESSAGES = Gauge("harvester_queue_messages", "Messages waiting in a queue (every foreman reads it: max across them)", ["queue"])
PENDING_VISITS = Gauge("harvester_pending_visits", "Visits queued in PostgreSQL (max across foremen)")
JOBS = Gauge("harvester_jobs", "Jobs by state (max across foremen)", ["state"])
BROWSER_RELAUNCHES = Counter("harvester_browser_relaunches", "Browser relaunches, by reason "
                             "(timeout, crash, disconnected, errors)", ["reason"])
BROWSER_PAGES_RECLAIMED = Counter("harvester_browser_pages_reclaimed",
                                  "Browser pages taken back from a task that held one too long")
TASKS_FINISHED = Counter("harvester_tasks_finished", "Tasks finished, by fetcher kind and state "
                         "(succeeded, failed, retry)", ["kind", "state"])
HTTP_REQUESTS = Counter("harvester_http_requests", "Web requests by canonical route and status",
                        ["route", "status"])


def status_class(status: int | None) -> str:
    """``2xx`` .. ``5xx`` for an HTTP status, ``error`` for none (no answer)."""
    if status is None or not 100 <= status <= 599:
        return "error"
    return f"{status // 100}xx"
