"""schemathesis fuzzes every operation of /openapi.json against a real web server: no 5xx,
and every answer conforms to the spec's response schemas. The stack has no foreman and no
worker, so nothing fetches the fuzzed URLs (jobs are created and stay queued). The server
wants a bearer token (an admin one, so every operation is reachable): ``ignored_auth`` checks
that every operation but ``/healthz`` refuses a request without it, or with a wrong one."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from shared.config import Settings, parse_auth_tokens
from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
BOUND = 150.0  # seconds for the whole run (a deadline, not a measurement)
TOKEN = "schemathesis-admin-token-0123456789"


async def test_no_server_error_and_answers_match_the_spec(settings: Settings) -> None:
    settings = settings.model_copy(
        update={"auth_tokens": parse_auth_tokens(f"fuzz:{TOKEN}:admin")})
    stack = await Stack(settings, token=TOKEN).start(foremen=0, workers=0)
    try:
        proc = await asyncio.create_subprocess_exec(
            str(SCHEMATHESIS), "run", stack.base + "/openapi.json",
            "--checks", "not_a_server_error,response_schema_conformance,ignored_auth",
            "--header", f"Authorization: Bearer {TOKEN}",
            "--phases", "examples,coverage,fuzzing", "--max-examples", "25",
            "--request-timeout", "5", "--seed", "16", "--workers", "1",
            "--exclude-path-regex", "/events$", "--warnings", "off",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), BOUND)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"schemathesis did not finish within {BOUND}s") from None
        report = out.decode(errors="replace")
        assert proc.returncode == 0, report[-8000:]
        assert "passed" in report, report[-2000:]
    finally:
        await stack.stop()
