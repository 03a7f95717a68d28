"""Job control over HTTP: listing, cancel, pause/resume, scope change, purge (issue 16).

A stack without foremen or workers: nothing is published or fetched, so every visit stays
queued and each change is seen exactly."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from shared.config import Settings
from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e


@pytest_asyncio.fixture
async def api(settings: Settings) -> AsyncIterator[Stack]:
    st = await Stack(settings).start(foremen=0, workers=0)
    yield st
    await st.stop()


async def test_listing_newest_first_filtered_and_paginated(api: Stack) -> None:
    ids = [await api.post_job([f"http://x{i}.example/"]) for i in range(3)]
    status, body, _ = await api.request("DELETE", f"/jobs/{ids[1]}")
    assert (status, body) == (200, {"id": ids[1], "state": "cancelled"})

    status, body, _ = await api.request("GET", "/jobs")
    assert status == 200 and body["next"] is None
    assert [j["id"] for j in body["jobs"]] == ids[::-1]
    first = body["jobs"][0]
    assert (first["state"], first["completed"], first["urls"]) == ("running", False, 1)
    assert first["pages"]["queued"] == 1

    _, page, _ = await api.request("GET", "/jobs", limit="2")
    assert [j["id"] for j in page["jobs"]] == [ids[2], ids[1]] and page["next"] == ids[1]
    _, page, _ = await api.request("GET", "/jobs", limit="2", before=str(page["next"]))
    assert [j["id"] for j in page["jobs"]] == [ids[0]] and page["next"] is None

    _, cancelled, _ = await api.request("GET", "/jobs", state="cancelled")
    assert [j["id"] for j in cancelled["jobs"]] == [ids[1]]
    _, running, _ = await api.request("GET", "/jobs", state="running")
    assert [j["id"] for j in running["jobs"]] == [ids[2], ids[0]]

    status, body, _ = await api.request("GET", "/jobs", state="done")
    assert status == 400 and body["code"] == "BadRequest" and "state" in body["message"]
    status, body, _ = await api.request("GET", "/jobs", limit="0")
    assert status == 400 and "limit" in body["message"]


async def test_cancel_then_status_is_cancelled_and_completed(api: Stack) -> None:
    job = await api.post_job(["http://a.example/", "http://b.example/"])
    assert (await api.status(job))["state"] == "running"
    status, body, _ = await api.request("DELETE", f"/jobs/{job}")
    assert (status, body) == (200, {"id": job, "state": "cancelled"})
    st = await api.status(job)
    assert (st["state"], st["pending"], st["completed"]) == ("cancelled", 0, 2)
    assert st["pages"]["queued"] == 0


async def test_pause_resume_and_409_on_a_cancelled_job(api: Stack) -> None:
    job = await api.post_job(["http://a.example/"])
    status, body, _ = await api.request("POST", f"/jobs/{job}/pause")
    assert (status, body) == (200, {"id": job, "state": "paused"})
    assert (await api.status(job))["state"] == "paused"
    status, body, _ = await api.request("POST", f"/jobs/{job}/resume")
    assert (status, body) == (200, {"id": job, "state": "running"})
    await api.request("DELETE", f"/jobs/{job}")
    status, body, _ = await api.request("POST", f"/jobs/{job}/pause")
    assert status == 409 and body == {"code": "Conflict", "message": f"Job {job} is cancelled"}
    status, body, _ = await api.request("POST", f"/jobs/{job}/resume")
    assert status == 409 and body["code"] == "Conflict"


async def test_patch_deny_drops_queued_matches(api: Stack) -> None:
    job = await api.post_job(["http://a.example/keep", "http://a.example/drop/1",
                              "http://a.example/drop/2"])
    status, body, _ = await api.request("PATCH", f"/jobs/{job}", '{"deny": ["/drop/"]}')
    assert (status, body) == (200, {"id": job, "deny": ["/drop/"], "dropped": 2})
    st = await api.status(job)
    assert st["scope"]["deny"] == ["/drop/"]
    assert (st["pending"], st["completed"], st["pages"]["queued"]) == (1, 2, 1)

    status, body, _ = await api.request("PATCH", f"/jobs/{job}", '{"deny": ["[a"]}')
    assert (status, body) == (400, {"code": "BadRequest", "message":
                                    "Invalid deny pattern: [a (unterminated character set at "
                                    "position 0)"})
    status, body, _ = await api.request("PATCH", f"/jobs/{job}", '{"allow": ["x"]}')
    assert status == 400 and "deny" in body["message"]
    # JSON nested past Python's recursion limit is a bad body too, not a 500.
    status, body, _ = await api.request("PATCH", f"/jobs/{job}", "[" * 100_000)
    assert (status, body) == (400, {"code": "BadRequest", "message":
                                    'Invalid JSON body (expected {"deny": [...]})'})


async def test_purged_job_is_gone(api: Stack) -> None:
    job = await api.post_job(["http://a.example/"])
    status, body, _ = await api.request("DELETE", f"/jobs/{job}", purge="true")
    assert (status, body) == (202, {"id": job, "state": "deleted"})
    for method, path in (("GET", f"/status/{job}"), ("GET", f"/result/{job}"),
                         ("DELETE", f"/jobs/{job}"), ("POST", f"/jobs/{job}/pause"),
                         ("PATCH", f"/jobs/{job}")):
        status, body, _ = await api.request(method, path, '{"deny": []}' if method == "PATCH"
                                            else None)
        assert status == 404 and body["code"] == "NotFound", (method, path, body)
    _, listed, _ = await api.request("GET", "/jobs")
    assert job not in [j["id"] for j in listed["jobs"]]


async def test_unknown_job_is_404(api: Stack) -> None:
    for method, path in (("DELETE", "/jobs/999"), ("POST", "/jobs/999/resume")):
        status, body, _ = await api.request(method, path)
        assert status == 404 and body["code"] == "NotFound", (method, path)


async def test_webhook_query_parameter_reaches_the_spec(api: Stack) -> None:
    # The test server has no webhookSecret: the spec's check refuses the webhook, by name.
    status, body, _ = await api.request("POST", "/", "http://a.example/",
                                        webhook="http://127.0.0.1:9/hook")
    assert status == 400 and "webhook" in body["message"], body


async def test_status_hosts_top_by_pending(api: Stack) -> None:
    job = await api.post_job(["http://y.example/1", "http://x.example/1", "http://x.example/2",
                              "https://z.example:8443/"])
    hosts = (await api.status(job))["hosts"]
    idle = {"inFlight": 0, "nextStart": None, "backoffUntil": None, "robots": None}
    assert hosts == {"top": [{"host": "http://x.example", "pending": 2, **idle},
                             {"host": "http://y.example", "pending": 1, **idle},
                             {"host": "https://z.example:8443", "pending": 1, **idle}],
                     "backingOff": [], "robotsBlocked": []}
