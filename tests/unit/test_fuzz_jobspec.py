"""Fuzzing the job spec (shared/jobspec.py ``validate_spec``): whatever JSON a client sends,
as text, bytes or parsed, the answer is a ``JobSpec`` or a ``SpecError`` (the API's 400), never
another exception (a 500). The generated objects use the spec's own keys, at every level, so
that they get past the first "unknown field" and into the validators."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from shared import jobspec
from shared.config import Settings
from shared.jobspec import JobSpec, SpecError, validate_spec

SETTINGS = Settings(webhook_secret="a-webhook-secret", tasks={"t": "json:dumps"})
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _keys() -> list[str]:
    """Every field name of every model of the spec, as a client writes it."""
    keys: set[str] = set()
    for value in vars(jobspec).values():
        if isinstance(value, type) and issubclass(value, BaseModel) and value is not BaseModel:
            for name, f in value.model_fields.items():
                keys.add(f.alias or name)
    return sorted(keys)


KEYS = _keys()
URLS = st.sampled_from([
    "http://a.example/", "https://b.example/x?y=1#z", "http://127.0.0.1:8/", "ftp://x/",
    "http://[::1]/", "http://u:p@h/", "http://h:99999/", "//h/", "http://\u00e9.example/",
    "http://h/" + "a" * 3000, "javascript:alert(1)", "", " ", "http://h/\x00",
])
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
           | URLS | st.sampled_from(["http", "browser", "github", "links", "items", "csv",
                                     "json", "all", "domain", "host", "prefix", "(a+)+$",
                                     "[", "\\1", "*", "t", "GET", "users"]))
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=5),
    max_leaves=25)
GOOD_URLS = st.sampled_from(["http://a.example/", "https://b.example/p?q=1", "http://c.example/"])
SPECS = st.fixed_dictionaries(
    {"urls": st.lists(GOOD_URLS | URLS, max_size=3)},
    optional={k: JSON for k in ("depth", "scope", "follow", "ids", "extract", "fetcher",
                                "items", "save", "browser", "task", "github", "fingerprint",
                                "sessions", "priority", "webhook", "bloom", "forceCrawl")})


def outcome(data: dict[str, Any] | str | bytes) -> JobSpec | SpecError:
    try:
        return validate_spec(data, SETTINGS)
    except SpecError as e:
        return e


@settings(FUZZ, max_examples=150)
@given(SPECS)
def test_a_spec_of_the_specs_keys_is_a_job_or_its_400(spec: dict[str, Any]) -> None:
    text = json.dumps(spec)
    got = outcome(text)
    assert isinstance(got, JobSpec | SpecError)
    if isinstance(got, SpecError):
        assert got.status == 400 and got.message.startswith("Invalid ")
    assert type(outcome(text.encode())) is type(got)  # bytes as text


@FUZZ
@given(JSON)
def test_any_json_value_is_a_job_or_its_400(value: Any) -> None:
    assert isinstance(outcome(json.dumps(value)), JobSpec | SpecError)


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_are_a_job_or_its_400(body: bytes) -> None:
    assert isinstance(outcome(body), JobSpec | SpecError)


def test_deep_nesting_is_a_400() -> None:
    for body in ("[" * 100_000 + "]" * 100_000, '{"urls": ' + "[" * 5000 + "]" * 5000 + "}",
                 '{"scope": ' + '{"a":' * 3000 + "1" + "}" * 3001):
        assert isinstance(outcome(body), SpecError)
