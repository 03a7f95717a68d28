"""Real answers validate against web_server/openapi.json's schemas (jsonschema): /status while
running and done, /jobs, /result (links and failures), job control, and the errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from shared.config import Settings
from tests.e2e.site import TestSite
from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e

SPEC = json.loads((Path(__file__).parents[2] / "web_server" / "openapi.json").read_text())


def check(path: str, method: str, status: int, body: Any, content: str = "application/json"
          ) -> None:
    """The body is valid for the spec's response of (path, method, status)."""
    response = SPEC["paths"][path][method]["responses"][str(status)]
    if "$ref" in response:
        response = SPEC["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    schema = {**response["content"][content]["schema"], "components": SPEC["components"]}
    errors = [e.message for e in jsonschema_rs.validator_for(schema).iter_errors(body)]
    assert errors == [], (path, method, status, body)


async def test_real_answers_match_the_spec(settings: Settings, site: TestSite) -> None:
    stack = await Stack(settings).start()
    try:
        job = await stack.post_job([site.a + "/"], depth="3")
        check("/status/{jobId}", "get", 200, await stack.status(job))  # running (or done)
        done = await stack.wait_complete(job)
        check("/status/{jobId}", "get", 200, done)
        assert done["pages"]["failed"] > 0  # the failures below are not an empty object

        status, body, _ = await stack.request("GET", "/jobs")
        check("/jobs", "get", status, body)
        assert body["jobs"][0]["id"] == job
        check("/result/{jobId}", "get", 200, await stack.result(job))
        failures = await stack.result(job, status="failed")
        assert failures
        check("/result/{jobId}", "get", 200, failures)

        status, body, _ = await stack.request("POST", f"/jobs/{job}/pause")
        check("/jobs/{jobId}/pause", "post", status, body)  # 409: the job is completed
        status, body, _ = await stack.request("DELETE", f"/jobs/{job}")
        check("/jobs/{jobId}", "delete", status, body)
        status, body, _ = await stack.request("GET", "/status/999999999")
        check("/status/{jobId}", "get", status, body)
        assert status == 404
        status, body, _ = await stack.request("GET", "/status/x")
        check("/status/{jobId}", "get", status, body)
        assert status == 400
        status, body, _ = await stack.request("GET", "/workers")
        check("/workers", "get", status, body)
        async with stack.http.post(stack.base + "/idsets") as r:  # no body at all: an empty set
            status, body = r.status, await r.json()
        check("/idsets", "post", status, body)
        assert (status, body["count"]) == (200, 0)
        status, body, _ = await stack.request("GET", "/healthz")
        check("/healthz", "get", status, body)

        with pytest.raises(AssertionError):  # the check can fail: a body the spec refuses
            check("/status/{jobId}", "get", 200, {**done, "pending": "none"})
    finally:
        await stack.stop()
