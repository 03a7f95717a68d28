"""web_server/openapi.json stays true: every route of the router is in it, and nothing else,
and it is a valid OpenAPI 3.1 document (schemathesis loads it; its schemas are valid JSON
Schema 2020-12)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema_rs
import schemathesis

from shared.config import Settings
from web_server.app import create_app
from web_server.routes import OUTSIDE_ROOT, openapi_document

SPEC_PATH = Path(__file__).parents[2] / "web_server" / "openapi.json"
METHODS = {"get", "post", "put", "patch", "delete"}


def spec() -> dict[str, Any]:
    return json.loads(SPEC_PATH.read_text())


def router_operations() -> set[tuple[str, str]]:
    ops = set()
    for route in create_app(Settings()).router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path is None or path.startswith("/ui"):  # the dashboard's static files and its page
            continue
        if route.method.lower() in METHODS:  # the spec names the path parameter as api.md does
            ops.add((path.replace("{job_id}", "{jobId}").replace("{task_id}", "{taskId}"),
                     route.method.lower()))
    return ops


def spec_operations() -> set[tuple[str, str]]:
    return {(path, method) for path, item in spec()["paths"].items()
            for method in item if method in METHODS}


def test_spec_lists_exactly_the_routes() -> None:
    router, documented = router_operations(), spec_operations()
    assert router - documented == set(), "routes missing from openapi.json"
    assert documented - router == set(), "openapi.json lists operations the router lacks"
    assert {("/openapi.json", "get"), ("/status/{jobId}/events", "get")} <= documented


def test_spec_is_valid_openapi_31() -> None:
    doc = spec()
    assert doc["openapi"].startswith("3.1")
    loaded = schemathesis.openapi.from_dict(doc)
    assert {op.ok().path for op in loaded.get_all_operations()} == set(doc["paths"])
    for name, schema in doc["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name
    error = doc["components"]["responses"]["Error"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/Error"}
    events = doc["paths"]["/status/{jobId}/events"]["get"]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"]


def test_spec_is_true_under_another_root_path() -> None:
    """Under ``httpRootPath: /crawl/`` the router serves every API path under /crawl and the
    ops routes at the root; the served document says so with ``servers``."""
    settings = Settings(root_path="/crawl/")
    served = json.loads(openapi_document(settings.root_path))
    assert served["servers"] == [{"url": "/crawl"}]
    routes = set()
    for route in create_app(settings).router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path is None or route.method.lower() not in METHODS or "/ui" in path:
            continue
        routes.add((path.replace("{job_id}", "{jobId}").replace("{task_id}", "{taskId}"),
                    route.method.lower()))
    expected = set()
    for path, item in served["paths"].items():
        server = item.get("servers", served["servers"])[0]["url"].rstrip("/")
        expected |= {(server + path, m) for m in item if m in METHODS}
    expected.add(("/crawl", "post"))  # POST /crawl as POST /crawl/
    assert routes == expected
    assert {p for p, item in served["paths"].items() if "servers" in item} == set(OUTSIDE_ROOT)
    assert openapi_document("/") == SPEC_PATH.read_bytes()
