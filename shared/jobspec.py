"""The job spec: one strict pydantic model for what ``POST /`` asks for, whether it came as a
JSON body or as the original newline body and query parameters (both build a :class:`JobSpec`).

The web server validates it (:func:`validate_spec`, every error a :class:`SpecError` naming its
field) and stores it with the job (:meth:`JobSpec.stored`: the spec minus its URLs, which are
the job's ``job_url`` rows); ``/status`` shows it back (:func:`status_view`). The keys that
change what a page yields make the job's rule set (:meth:`JobSpec.ruleset`, :func:`ruleset_of`),
under which the store keeps and reuses per-page results.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from shared.config import Settings
from shared.errors import BadRequest, InvalidURL
from shared.scope import Scope, check_pattern
from shared.urls import validate_job_url

INT32_MAX = 2**31 - 1  # maxPages: an integer column


def _pattern(value: str) -> str:
    if (problem := check_pattern(value)) is not None:
        raise PydanticCustomError("pattern", "{pattern} ({problem})",
                                  {"pattern": value, "problem": problem})
    return value


def _url(value: str, info: ValidationInfo) -> str:
    if (info.context or {}).get("canonical"):  # validated and made canonical already
        return value
    try:
        return validate_job_url(value)
    except InvalidURL as e:
        raise PydanticCustomError("url", "not an absolute http(s) URL: {line}",
                                  {"line": e.line}) from None


def _kind(value: str, info: ValidationInfo, known: str, what: str) -> str:
    kinds = tuple((info.context or {}).get(known, ()))
    if value not in kinds:
        raise PydanticCustomError(
            "kind", "unknown {what} kind: {kind} (known: {known})",
            {"what": what, "kind": value, "known": ", ".join(kinds) or "none"})
    return value


def _fetcher(value: str, info: ValidationInfo) -> str:
    return _kind(value, info, "fetchers", "fetcher")


def _extractor(value: str, info: ValidationInfo) -> str:
    return _kind(value, info, "extractors", "extractor")


Pattern = Annotated[str, AfterValidator(_pattern)]
JobURL = Annotated[str, AfterValidator(_url)]
FetcherKind = Annotated[str, AfterValidator(_fetcher)]
ExtractorKind = Annotated[str, AfterValidator(_extractor)]

# The spec keys that change what a page yields (beyond its links, which every job extracts):
# they make the job's rule set. Issues 11-13 add follow, ids, save, task and source.
YIELD_KEYS = ("extract",)


class ScopeSpec(BaseModel):
    """Which links the job follows (``shared.scope.Scope``) and how many pages at most."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    scope: Literal["any", "host", "domain"] = "any"
    allow: tuple[Pattern, ...] = ()
    deny: tuple[Pattern, ...] = ()
    max_pages: int | None = Field(None, alias="maxPages", ge=1, le=INT32_MAX)

    def as_scope(self) -> Scope:
        return Scope(self.scope, self.allow, self.deny)


class ExtractSpec(BaseModel):
    """An extractor run after the links (``kind``: one of ``Settings.extractor_kinds``) and its
    options (any other keys, kept as given until each kind has its own model)."""

    model_config = ConfigDict(frozen=True, extra="allow", strict=True)

    kind: ExtractorKind

    @model_validator(mode="after")
    def _storable(self) -> ExtractSpec:
        # PostgreSQL keeps no NUL in jsonb: a 400 here, not a 500 from the INSERT.
        if _has_nul(self.model_extra or {}):
            raise PydanticCustomError("nul", "an option holds a NUL character")
        return self


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


class JobSpec(BaseModel):
    """A job: its URLs (validated, canonical, deduplicated in order), depth, flags, scope,
    fetcher kind and extractors."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True,
                              alias_generator=to_camel)

    urls: tuple[JobURL, ...] = Field(min_length=1)
    # None: the server's maxLevel. Validated against the context's max_depth, resolved to
    # max_level, so a validated spec always has an int.
    depth: int | None = Field(None, validate_default=True)
    force_crawl: bool = False
    sitemaps: bool = False
    scope: ScopeSpec = ScopeSpec()
    fetcher: FetcherKind = "http"
    extract: tuple[ExtractSpec, ...] = ()

    @field_validator("urls")
    @classmethod
    def _dedupe(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(urls))

    @field_validator("depth")
    @classmethod
    def _depth(cls, depth: int | None, info: ValidationInfo) -> int:
        context = info.context or {}
        if "max_depth" not in context or "max_level" not in context:
            raise RuntimeError("JobSpec needs a validation context: use validate_spec")
        if depth is None:
            return int(context["max_level"])
        if not 0 <= depth <= context["max_depth"]:
            raise PydanticCustomError("depth_range", "{depth} (allowed 0 to {max_depth})",
                                      {"depth": depth, "max_depth": context["max_depth"]})
        return depth

    @property
    def max_level(self) -> int:
        assert self.depth is not None  # resolved by validation
        return self.depth

    def stored(self) -> dict[str, Any]:
        """The spec as stored with the job (``job.spec``): JSON by alias, without the URLs.
        ``fetcher`` and ``extract`` are left out at their defaults, so a job that does not use
        them stores (and ``/status`` shows) what it did before they existed."""
        exclude = {"urls"} | {name for name in _OMITTED_AT_DEFAULT
                              if getattr(self, name) == JobSpec.model_fields[name].default}
        return self.model_dump(mode="json", by_alias=True, exclude=exclude)

    def ruleset(self) -> int:
        """The job's rule set: 0 when nothing changes what a page yields beyond its links,
        else a digest of the keys that do (:func:`ruleset_of` of the stored spec)."""
        return ruleset_of(self.stored())


_OMITTED_AT_DEFAULT = ("fetcher", "extract")


def ruleset_of(stored: Mapping[str, Any]) -> int:
    """The rule set of a stored spec (``JobSpec.stored``, ``job.spec``): 0 when none of the
    ``YIELD_KEYS`` is set, else the first 8 bytes of the SHA-256 of their canonical JSON
    (sorted keys, no spaces) as a signed 64-bit integer, never 0. Jobs with the same rule set
    get the same yields from a page, so one can be answered from what the other extracted;
    the order of extractors counts, the order of keys within one does not."""
    keys = {k: stored[k] for k in YIELD_KEYS if stored.get(k)}
    if not keys:
        return 0
    canonical = json.dumps(keys, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True) or 1


class SpecError(BadRequest):
    """A job spec that does not validate: ``Invalid <field>: <problem>``."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"Invalid {field}: {problem}")
        self.field = field


def _field(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "body"


def validate_spec(data: dict[str, Any] | str | bytes, settings: Settings,
                  canonical: bool = False) -> JobSpec:
    """A :class:`JobSpec` from a dict (Python values: tuples for lists) or from JSON text;
    :class:`SpecError` for the first problem, naming its field. ``canonical``: the URLs were
    validated and made canonical already (the newline body), so they are not parsed again."""
    context = {"max_depth": settings.max_depth, "max_level": settings.max_level,
               "canonical": canonical, "fetchers": settings.fetcher_kinds,
               "extractors": settings.extractor_kinds}
    try:
        if isinstance(data, dict):
            return JobSpec.model_validate(data, context=context)
        return JobSpec.model_validate_json(data, context=context)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        if err["type"] == "json_invalid":
            raise SpecError("JSON body", err["ctx"]["error"]) from None
        msg = err["msg"]
        if err["type"] == "model_type":
            msg = "expected a JSON object"
        raise SpecError(_field(tuple(err["loc"])), msg) from None


def stored_spec(max_level: int, force_crawl: bool, sitemaps: bool, scope: Scope,
                max_pages: int | None) -> dict[str, Any]:
    """The stored spec of a job given by its columns (what migration 0011 backfills)."""
    return {"depth": max_level, "forceCrawl": force_crawl, "sitemaps": sitemaps,
            "scope": {"scope": scope.kind, "allow": list(scope.allow), "deny": list(scope.deny),
                      "maxPages": max_pages}}


def status_view(stored: str | dict[str, Any], urls: list[str]) -> dict[str, Any]:
    """``/status``'s ``spec``: the stored spec with the job's URLs, keys in the model's order
    (jsonb keeps its own), so that it POSTs back as the same job."""
    spec = json.loads(stored) if isinstance(stored, str) else dict(stored)
    spec["urls"] = urls
    out = {_alias(JobSpec, n): spec[_alias(JobSpec, n)] for n in JobSpec.model_fields
           if _alias(JobSpec, n) in spec}
    if isinstance(out.get("scope"), dict):
        scope = out["scope"]
        out["scope"] = {_alias(ScopeSpec, n): scope[_alias(ScopeSpec, n)]
                        for n in ScopeSpec.model_fields if _alias(ScopeSpec, n) in scope}
    return out


def _alias(model: type[BaseModel], name: str) -> str:
    return model.model_fields[name].alias or name
