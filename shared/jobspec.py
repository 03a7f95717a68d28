"""The job spec: one strict pydantic model for what ``POST /`` asks for, whether it came as a
JSON body or as the original newline body and query parameters (both build a :class:`JobSpec`).

The web server validates it (:func:`validate_spec`, every error a :class:`SpecError` naming its
field) and stores it with the job (:meth:`JobSpec.stored`: the spec minus its URLs, which are
the job's ``job_url`` rows); ``/status`` shows it back (:func:`status_view`). The keys that
change what a page yields make the job's rule set (:meth:`JobSpec.ruleset`, :func:`ruleset_of`),
under which the store keeps and reuses per-page results.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from uuid import UUID

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
from pydantic_core import InitErrorDetails, PydanticCustomError

from shared import naming, patterns, traps
from shared.config import Settings, check_block
from shared.errors import BadRequest, InvalidURL
from shared.ids import check_id, id_url
from shared.scope import Scope, check_pattern
from shared.urls import CredentialsInURL, validate_job_url

INT32_MAX = 2**31 - 1  # maxPages: an integer column
UNBOUNDED_DEPTH = INT32_MAX - 1  # the default depth of a job with follow or ids
# as patterns.MAX_PATTERN_CHARS: the length checks here fire first, with their own message
MAX_RULE_CHARS = patterns.MAX_PATTERN_CHARS
BUILTIN_EXTRACTORS = ("items",)
BUILTIN_OUTPUTS = ("warc", "files", "tar", "db")
# Where a job's pages come from and what they yield (worker/sources): "web" (HTML pages, the
# default) or "github" (the GitHub REST API, its URLs derived from ``github``: github_job).
SOURCE_KINDS = ("web", "github")
# A source's follow mode (follow_mode): its pages' children are the links it yields.
SOURCE_FOLLOW: dict[str, Literal["html", "rules", "both"]] = {"github": "rules"}
GITHUB_LOGIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}")
MAX_GITHUB_USERS = 100_000
GITHUB_SEARCH_CAP = 1000  # GitHub's search API gives the first 1000 results only


def _pattern(value: str) -> str:
    if (problem := check_pattern(value)) is not None:
        raise PydanticCustomError("pattern", "{pattern} ({problem})",
                                  {"pattern": value, "problem": problem})
    return value


def _valid_url(value: str, keep_fragment: bool = False, echo_as_given: bool = False) -> str:
    """``validate_job_url``'s canonical URL; its refusal as a PydanticCustomError (echoing the
    line as stripped, or ``value`` as given with ``echo_as_given``; never credentials)."""
    try:
        return validate_job_url(value, keep_fragment)
    except CredentialsInURL:
        raise PydanticCustomError("url", CredentialsInURL.REASON) from None
    except InvalidURL as e:
        raise PydanticCustomError("url", "not an absolute http(s) URL: {line}",
                                  {"line": value if echo_as_given else e.line}) from None


def _url(value: str, info: ValidationInfo) -> str:
    if (info.context or {}).get("canonical"):  # validated and made canonical already
        return value
    # with its fragment, if it has one (_depth drops it but with fingerprint.keepFragment);
    # '"#" in value' answers as True would, without the fragment's path for a URL with none
    return _valid_url(value, keep_fragment="#" in value)


def _too_long(url: str, limit: int, key: str) -> PydanticCustomError | None:
    """Why a job URL (canonical) longer than ``limit`` characters is refused (``key``: the
    setting that says so); None when it is not. Never echoes the URL: it may be a megabyte."""
    if len(url) <= limit:
        return None
    return PydanticCustomError("url_length", "{length} characters long (at most {limit}: {key})",
                               {"length": len(url), "limit": limit, "key": key})


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


def _source(value: str) -> str:
    if value not in SOURCE_KINDS:
        raise PydanticCustomError("kind", "unknown source: {kind} (known: {known})",
                                  {"kind": value, "known": ", ".join(SOURCE_KINDS)})
    return value


def _output(value: str, info: ValidationInfo) -> str:
    return _kind(value, info, "outputs", "output")


def _rule_regex(value: str) -> str:
    """A regex run over page text (follow, ids, fields): compiles, at most one group."""
    if len(value) > MAX_RULE_CHARS:
        raise PydanticCustomError("regex", "longer than {n} characters", {"n": MAX_RULE_CHARS})
    try:
        groups = patterns.compile(value).groups
    except patterns.PatternError as e:  # as _pattern says it
        raise PydanticCustomError("pattern", "{pattern} ({problem})",
                                  {"pattern": value, "problem": str(e)}) from None
    if groups > 1:
        raise PydanticCustomError("regex", "{pattern} has {groups} capture groups (at most 1: "
                                  "use (?:...) for the others)",
                                  {"pattern": value, "groups": groups})
    return value


@functools.lru_cache(maxsize=256)
def css_problem(selector: str) -> str | None:
    """The problem with a CSS selector (as selectolax parses it), or None."""
    from selectolax.lexbor import LexborHTMLParser, SelectolaxError
    try:
        LexborHTMLParser("<p>").css(selector)
    except (SelectolaxError, ValueError, TypeError) as e:
        return str(e) or "cannot parse"
    return None


def _css(value: str) -> str:
    if len(value) > MAX_RULE_CHARS or (problem := css_problem(value)) is not None:
        raise PydanticCustomError("css", "{selector}: {problem}",
                                  {"selector": value,
                                   "problem": "too long" if len(value) > MAX_RULE_CHARS
                                   else problem})
    return value


def _xpath(value: str) -> str:
    from lxml import etree
    try:
        if len(value) > MAX_RULE_CHARS:
            raise etree.XPathSyntaxError("too long")
        etree.XPath(value)
    except etree.XPathError as e:
        raise PydanticCustomError("xpath", "{xpath}: {problem}",
                                  {"xpath": value, "problem": str(e)}) from None
    return value


def _id(value: str) -> str:
    if (problem := check_id(value)) is not None:
        raise PydanticCustomError("id", "{problem}", {"problem": problem})
    return value


def _url_format(value: str) -> str:
    if value.count("{}") != 1:
        raise PydanticCustomError("url_format", "{fmt} must hold exactly one {braces}",
                                  {"fmt": value, "braces": "{}"})
    try:
        validate_job_url(id_url(value, "x"))
    except (InvalidURL, ValueError):
        raise PydanticCustomError("url_format", "not an absolute http(s) URL: {fmt}",
                                  {"fmt": value}) from None
    parts = urlsplit(value)
    if "{}" not in parts.path and "{}" not in parts.query:
        # In the host (case is lost) or the fragment (dropped), ids would share a URL.
        raise PydanticCustomError("url_format", "{fmt} must hold {braces} in its path or query",
                                  {"fmt": value, "braces": "{}"})
    return value


def _name_pattern(value: str) -> str:
    if (problem := naming.check_pattern(value)) is not None:
        raise PydanticCustomError("name_pattern", "{pattern} ({problem})",
                                  {"pattern": value, "problem": problem})
    return value


Pattern = Annotated[str, AfterValidator(_pattern)]
RuleRegex = Annotated[str, AfterValidator(_rule_regex)]
CSS = Annotated[str, AfterValidator(_css)]
XPath = Annotated[str, AfterValidator(_xpath)]
Ident = Annotated[str, AfterValidator(_id)]
NamePattern = Annotated[str, AfterValidator(_name_pattern)]
def _webhook(value: str, info: ValidationInfo) -> str:
    url = _valid_url(value, echo_as_given=True)
    if not (info.context or {}).get("webhook_secret"):  # an unsigned POST is refused
        raise PydanticCustomError("webhook", "the server has no webhookSecret to sign it with")
    return url


JobURL = Annotated[str, AfterValidator(_url)]
WebhookURL = Annotated[str, AfterValidator(_webhook)]
FetcherKind = Annotated[str, AfterValidator(_fetcher)]
ExtractorKind = Annotated[str, AfterValidator(_extractor)]
OutputKind = Annotated[str, AfterValidator(_output)]

# The spec keys that change what a page yields (beyond its links, which every job extracts):
# they make the job's rule set (``ids`` only by its regex and urlFormat: ruleset_of).
# ``source`` is one (its extractor); ``github`` is not: its pages yield by their URL, so all
# GitHub jobs share one rule set and each other's pages. ``browser`` is not one: how a page is rendered is the fetcher's business.
# Issue 14: ``fingerprint`` (which requests count as one: a page's links are rewritten by it)
# and ``sessions`` (by its ``pool``: a logged-in page is not another account's) are too.
YIELD_KEYS = ("extract", "follow", "ids", "save", "task", "source", "fingerprint", "sessions")
_RULESET_PROJECTION = {"ids": ("regex", "urlFormat"), "sessions": ("pool",)}
MAX_PARAM_GLOB = 200
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")
POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


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
        if self.kind == "items":  # a built-in: its options by its model (errors name them)
            ItemsSpec.model_validate_json(json.dumps(self.model_extra or {}))
        return self


class _Options(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True,
                              alias_generator=to_camel)


class FollowSpec(_Options):
    """``follow``: which links of a page the job follows, instead of (or with ``html``, as
    well as) the HTML link extractor's: ``linkRegex`` matches in the body text (first capture
    group when there is one), ``css`` selectors' ``attr``."""

    link_regex: RuleRegex | None = None
    css: tuple[CSS, ...] = ()
    attr: str = Field("href", min_length=1)
    html: bool = False


class IdSpec(_Options):
    """``ids``: ``regex`` finds ids in each body, ``urlFormat`` (one ``{}``, in the path or
    the query) makes each the URL to download (``shared.ids.id_url``); ``seeds`` are ids to start from, ``known`` and
    ``explored`` id sets from ``POST /idsets`` (explored: never fetched; known: fetched)."""

    regex: RuleRegex
    url_format: Annotated[str, AfterValidator(_url_format)]
    seeds: tuple[Ident, ...] = ()
    known: UUID | None = Field(None, strict=False)
    explored: UUID | None = Field(None, strict=False)


class FieldSpec(_Options):
    """One field of an item: exactly one of ``css``, ``xpath``, ``regex`` (group 1 if any);
    ``attr`` reads an attribute instead of the text; ``take`` ``all`` gives a list; ``type``
    coerces, and a value that does not coerce (or is missing) is ``default``."""

    css: CSS | None = None
    xpath: XPath | None = None
    regex: RuleRegex | None = None
    attr: str | None = Field(None, min_length=1)
    take: Literal["first", "all"] = "first"
    type: Literal["str", "int", "float", "bool"] = "str"
    default: str | int | float | bool | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> FieldSpec:
        if sum(x is not None for x in (self.css, self.xpath, self.regex)) != 1:
            raise PydanticCustomError("field_rule", "give exactly one of css, xpath, regex")
        return self


def _field_names(fields: dict[str, FieldSpec]) -> dict[str, FieldSpec]:
    for name in fields:
        if not name or name.startswith("_") or name in ("url", "seq"):
            raise PydanticCustomError("field_name", "field name '{name}' is empty, starts with "
                                      "'_' or is url or seq (GET /items' columns)",
                                      {"name": name})
    return fields


class ItemsSpec(_Options):
    """The options of an ``extract`` entry of kind ``items``: ``fields`` by name; ``each``
    (CSS): one item per match, else one per page; ``name``: the items' ``_type``."""

    name: str | None = Field(None, min_length=1)
    each: CSS | None = None
    fields: Annotated[dict[str, FieldSpec], AfterValidator(_field_names)] = Field(min_length=1)


class WarcSpec(_Options):
    """``save`` kind ``warc``: WARC/1.1 files ``<prefix>-<ts>-<serial>-<host>.warc.gz``."""

    prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] = "harvester"
    max_size: int = Field(10**9, ge=1 << 20)


class FilesSpec(_Options):
    """``save`` kind ``files``: one file per 2xx page, named by ``pattern``
    (``shared.naming``)."""

    pattern: NamePattern = "{host}/{urlhash}"


class TarSpec(_Options):
    """``save`` kind ``tar``: one entry per 2xx page, named by ``pattern``, in archives of one
    worker and run, rotated at ``maxSize``."""

    pattern: NamePattern = "{host}/{urlhash}"
    compression: Literal["none", "gz", "bz2"] = "none"
    max_size: int = Field(10**9, ge=1 << 20)


class DbSpec(_Options):
    """``save`` kind ``db``: bodies in PostgreSQL, deduplicated by digest."""


def _block(value: tuple[str, ...]) -> tuple[str, ...]:
    try:
        return check_block(value)
    except ValueError as e:
        raise PydanticCustomError("block", "{problem}", {"problem": str(e)}) from None


class BrowserSpec(_Options):
    """``browser`` (only with ``"fetcher": "browser"``): how a page is loaded. The navigation
    waits for ``wait``, then for ``selector`` (attached) if given, then ``waitMs``; ``timeout``
    (seconds, else ``browserTimeout``) bounds it; ``block``: resource types not loaded (None:
    ``browserBlock``); ``stealth``: hide the automation (UA pool, webdriver, plugins)."""

    wait: Literal["load", "domcontentloaded", "networkidle"] = "load"
    selector: Annotated[str, AfterValidator(_css)] | None = Field(
        None, min_length=1, max_length=MAX_RULE_CHARS)
    wait_ms: int = Field(0, ge=0, le=30_000)
    timeout: float | None = Field(None, gt=0, le=120)
    block: Annotated[tuple[str, ...], AfterValidator(_block)] | None = None
    stealth: bool = False

    @field_validator("selector")
    @classmethod
    def _no_nul(cls, v: str | None) -> str | None:
        if v is not None and "\0" in v:
            raise PydanticCustomError("nul", "holds a NUL character")
        return v


def _task_name(value: str, info: ValidationInfo) -> str:
    allowed = tuple((info.context or {}).get("tasks", ()))
    if value not in allowed:
        raise PydanticCustomError("task", "unknown task '{name}' (allowed: {allowed})",
                                  {"name": value, "allowed": ", ".join(allowed) or "none"})
    return value


class TaskSpec(_Options):
    """``task``: an allow-listed task (``Settings.tasks``) run on every page the job fetches,
    with ``args``; what it returns is stored as the page's items. A bare string is the name."""

    name: Annotated[str, AfterValidator(_task_name)]
    args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @field_validator("args")
    @classmethod
    def _storable(cls, v: dict[str, Any]) -> dict[str, Any]:
        if _has_nul(v):
            raise PydanticCustomError("nul", "an argument holds a NUL character")
        return v


class PrioritySpec(_Options):
    """One entry of ``priorities`` (``order`` ``priority``): URLs matching ``pattern`` (a regex,
    searched in the canonical URL) get ``priority``; the first match wins, else 0. Higher first."""

    pattern: Pattern = Field(max_length=MAX_RULE_CHARS)
    priority: int = Field(ge=-1000, le=1000)


def _param_glob(value: str) -> str:
    if not value or len(value) > MAX_PARAM_GLOB or any(c in value for c in "&=#\0"):
        raise PydanticCustomError("param_glob", "{glob}: a query parameter name glob (1 to "
                                  "{n} characters, no & = #)", {"glob": value, "n": MAX_PARAM_GLOB})
    return value


def _header_name(value: str) -> str:
    if not HEADER_NAME.fullmatch(value):
        raise PydanticCustomError("header", "not a header name: {name}", {"name": value})
    return value.lower()


class FingerprintSpec(_Options):
    """``fingerprint``: which requests the job counts as one (``shared.fingerprint``).
    ``ignoreParams``: query parameters dropped from every URL (globs, case-insensitive, e.g.
    ``utm_*``); ``keepFragment``: the fragment counts (the job's URLs and HTML links keep
    theirs: ``/p#a`` and ``/p#b`` are two URLs, each visited); ``includeHeaders``: request
    headers that count (lower-cased names)."""

    ignore_params: tuple[Annotated[str, AfterValidator(_param_glob)], ...] = ()
    keep_fragment: bool = False
    include_headers: tuple[Annotated[str, AfterValidator(_header_name)], ...] = ()


class TrapSpec(_Options):
    """``traps``: the limits a link's URL and level must keep, else it is not fetched but
    recorded as blocked (``shared.traps``); each unset one is the server's setting
    (``maxURLLength``, ``maxPathDepth``, ``maxSegmentRepeats``, ``maxQueryParams``,
    ``maxParamRepeats``, ``maxChainLevel``). Not part of the rule set."""

    max_url_length: int | None = Field(None, ge=1, le=traps.HARD_CAPS["max_url_length"])
    max_path_depth: int | None = Field(None, ge=1, le=traps.HARD_CAPS["max_path_depth"])
    max_segment_repeats: int | None = Field(
        None, ge=1, le=traps.HARD_CAPS["max_segment_repeats"])
    max_query_params: int | None = Field(None, ge=1, le=traps.HARD_CAPS["max_query_params"])
    max_param_repeats: int | None = Field(None, ge=1, le=traps.HARD_CAPS["max_param_repeats"])
    max_chain_level: int | None = Field(None, ge=1, le=traps.HARD_CAPS["max_chain_level"])


class BloomSpec(_Options):
    """``bloom``: a Bloom filter per job and worker (``shared.seen``) skips the insert of links
    the job has (probably) seen: ``capacity`` URLs at ``errorRate`` false positives, each of
    which costs one lookup, never a page."""

    capacity: int = Field(10**6, ge=1000, le=10**8)
    error_rate: float = Field(0.01, ge=1e-6, le=0.5)


def _pool(value: str) -> str:
    if not POOL_NAME.fullmatch(value):
        raise PydanticCustomError("pool", "{pool}: 1 to 64 of A-Z a-z 0-9 _ . - (not first)",
                                  {"pool": value})
    return value


class SessionsSpec(_Options):
    """``sessions``: each request carries the cookies and headers of one session of ``pool``
    (``PUT`` by a login task or the API); a response with a status in ``blockStatus`` or a body
    matching one of ``blockPatterns`` benches the session for ``bench`` seconds (doubling) and
    the page is retried with another; ``concurrency``: requests at a time per session."""

    pool: Annotated[str, AfterValidator(_pool)]
    block_status: tuple[Annotated[int, Field(ge=100, le=599)], ...] = (403, 429)
    block_patterns: tuple[Annotated[Pattern, Field(max_length=MAX_RULE_CHARS)], ...] = ()
    bench: float = Field(300, ge=0, le=86_400, strict=False)
    concurrency: int = Field(1, ge=1, le=1000)


def _login(value: str) -> str:
    if not GITHUB_LOGIN.fullmatch(value):
        raise PydanticCustomError("login", "not a GitHub login: {login}", {"login": value})
    return value.lower()


class GitHubSpec(_Options):
    """``github`` (only with ``"source": "github"``): what to crawl of the GitHub API. Exactly
    one of ``users`` (the first N accounts: by id, as ``GET /users`` lists them, or
    ``newest`` first through the search API, at most 1000) and ``contributors`` (a login,
    lower-cased: the user, the contributors of their repositories, theirs, ... ``depth``
    times)."""

    users: int | None = Field(None, ge=1, le=MAX_GITHUB_USERS)
    order: Literal["id", "newest"] = "id"
    contributors: Annotated[str, AfterValidator(_login)] | None = None
    depth: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _one(self) -> GitHubSpec:
        if (self.users is None) == (self.contributors is None):
            raise PydanticCustomError("github", "give exactly one of users, contributors")
        if self.order != "id" and self.users is None:
            raise PydanticCustomError("github", "order goes with users only")
        if self.order == "newest" and self.users is not None and self.users > GITHUB_SEARCH_CAP:
            raise PydanticCustomError(
                "github", "users {n} with order newest (GitHub's search gives {cap} at most)",
                {"n": self.users, "cap": GITHUB_SEARCH_CAP})
        return self


def github_depth_cap(max_depth: int) -> int:
    """The largest ``github.depth`` a server with ``maxDepth`` allows (its max_level 2D+1)."""
    return max(max_depth - 1, 0) // 2


def github_job(g: GitHubSpec, base: str, per_page: int) -> tuple[tuple[str, ...], int, int | None]:
    """A GitHub job's canonical URLs, max_level and maxPages. ``users``: the list (``/users``
    from id 0, or the search by join date) page by page, every page on level 0 (pages are
    0-weight ``next`` edges), as many pages as hold N users. ``contributors``: the profile
    (level 0), its repository lists (1), their contributor lists (2), ... 2D+1 levels."""
    if g.users is not None:
        n = min(per_page, g.users)
        url = (f"{base}/search/users?q=type:user&sort=joined&order=desc&per_page={n}"
               if g.order == "newest" else f"{base}/users?per_page={n}")
        return (validate_job_url(url),), 1, math.ceil(g.users / n)
    assert g.contributors is not None
    return (validate_job_url(f"{base}/users/{g.contributors}"),), 2 * g.depth + 1, None


OUTPUT_MODELS: dict[str, type[_Options]] = {
    "warc": WarcSpec, "files": FilesSpec, "tar": TarSpec, "db": DbSpec}


class SaveSpec(BaseModel):
    """An output (``kind``: a built-in, ``BUILTIN_OUTPUTS``, or one of
    ``Settings.output_kinds``) and its options; a built-in's are validated by its model
    (``OUTPUT_MODELS``), a plug-in's kept as given."""

    model_config = ConfigDict(frozen=True, extra="allow", strict=True)

    kind: OutputKind

    @model_validator(mode="after")
    def _options(self) -> SaveSpec:
        if _has_nul(self.model_extra or {}):
            raise PydanticCustomError("nul", "an option holds a NUL character")
        if (model := OUTPUT_MODELS.get(self.kind)) is not None:
            model.model_validate_json(json.dumps(self.model_extra or {}))
        return self

    def options(self) -> dict[str, Any]:
        """The options as given (the entry without ``kind``)."""
        return dict(self.model_extra or {})


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

    # Empty only with ids.seeds or ids.known (the job's first URL is then made from them).
    urls: tuple[JobURL, ...] = ()
    # None: the server's maxLevel, or unbounded (UNBOUNDED_DEPTH) with follow or ids. Checked
    # against the context's max_depth once follow and ids are known (_depth), so a validated
    # spec always has an int.
    depth: int | None = None
    force_crawl: bool = False
    sitemaps: bool = False
    scope: ScopeSpec = ScopeSpec()
    fetcher: FetcherKind = "http"
    extract: tuple[ExtractSpec, ...] = ()
    follow: FollowSpec | None = None
    ids: IdSpec | None = None
    save: tuple[SaveSpec, ...] = ()
    # POSTed (signed with the server's webhookSecret) when the job completes: job_webhook.
    webhook: WebhookURL | None = None
    browser: BrowserSpec | None = None  # only with fetcher "browser"
    task: TaskSpec | None = None
    # Issue 13: "github" derives urls, depth, fetcher and scope.maxPages from ``github``.
    source: Annotated[str, AfterValidator(_source)] = "web"
    github: GitHubSpec | None = None  # only with source "github"
    # Issue 14: queue order, job priority (weight 2^priority in the fair claim), URL
    # priorities (only with order "priority"), fingerprint options, Bloom filter, sessions.
    # The queue orders (``shared.ordering.ORDERS``): bfs (by level, then insertion), fifo,
    # lifo (by insertion), priority (by ``priorities``, then insertion).
    order: Literal["bfs", "fifo", "lifo", "priority"] = "bfs"
    priority: int = Field(0, ge=-10, le=10)
    priorities: tuple[PrioritySpec, ...] = ()
    fingerprint: FingerprintSpec | None = None
    bloom: BloomSpec | None = None
    sessions: SessionsSpec | None = None
    traps: TrapSpec | None = None  # issue 17: crawler trap limits (shared.traps)

    @field_validator("urls")
    @classmethod
    def _dedupe(cls, urls: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if isinstance(info.context, dict):  # validate_spec's, made for this validation only
            info.context["given_urls"] = urls  # as given (canonical): _short_enough's indexes
        return tuple(dict.fromkeys(urls))

    def _short_enough(self, context: Mapping[str, Any]) -> None:
        """Each URL (canonical, as given) at most the job's ``traps.maxUrlLength``, else the
        server's ``maxURLLength``, characters long; the first one longer is a 400 naming
        ``urls[i]`` (or ``ids.seeds[i]`` for a seed's URL). ``traps`` is validated after
        ``urls``, so this is checked here, with the model."""
        limit, key = context.get("max_url_length"), "maxURLLength"
        if self.traps is not None and self.traps.max_url_length is not None:
            limit, key = self.traps.max_url_length, "traps.maxUrlLength"
        if limit is None:  # a context without the setting: nothing to check against
            return
        given = context.get("given_urls", self.urls)
        for i, url in enumerate(given):
            if (error := _too_long(url, limit, key)) is not None:
                _fail(f"urls[{i}]", None, error)
        if self.ids is not None:
            for i, seed in enumerate(self.ids.seeds):
                url = id_url(self.ids.url_format, seed)
                if (error := _too_long(url, limit, key)) is not None:
                    _fail(f"ids.seeds[{i}]", seed, error)

    @model_validator(mode="after")
    def _depth(self, info: ValidationInfo) -> JobSpec:
        context = info.context or {}
        if "max_depth" not in context or "max_level" not in context:
            raise RuntimeError("JobSpec needs a validation context: use validate_spec")
        self._short_enough(context)
        spec = self
        if (self.fingerprint is None or not self.fingerprint.keep_fragment) and any(
                "#" in u for u in spec.urls):  # kept by _url: dropped but with keepFragment
            spec = spec.model_copy(update={"urls": tuple(dict.fromkeys(
                u.partition("#")[0] for u in spec.urls))})
        derived = spec.source == "github" or spec.github is not None or spec.fetcher == "github"
        if derived:  # its depth is github's (bounded by github.depth's own cap)
            spec = _github(spec, context)
        unbounded = spec.follow is not None or spec.ids is not None
        if not spec.urls and not (spec.ids and (spec.ids.seeds or spec.ids.known)):
            _fail("urls", spec.urls, PydanticCustomError(
                "missing", "Field required") if "urls" not in spec.model_fields_set
                and spec.ids is None else PydanticCustomError(
                "too_short", "Tuple should have at least 1 item after validation, not 0"
                if spec.ids is None else "give urls, ids.seeds or ids.known"))
        if spec.browser is not None and spec.fetcher != "browser":
            _fail("browser", spec.browser.model_dump(by_alias=True), PydanticCustomError(
                "browser", 'only with "fetcher": "browser" (fetcher is {fetcher})',
                {"fetcher": spec.fetcher}))
        depth = spec.depth
        if depth is None:
            depth = UNBOUNDED_DEPTH if unbounded else int(context["max_level"])
        elif not (0 <= depth <= context["max_depth"] or (unbounded and depth == UNBOUNDED_DEPTH)
                  or derived):
            _fail("depth", depth, PydanticCustomError(
                "depth_range", "{depth} (allowed 0 to {max_depth})",
                {"depth": depth, "max_depth": context["max_depth"]}))
        if spec.ids is not None and spec.ids.seeds:  # seeds become job URLs, after the urls
            urls = tuple(dict.fromkeys((*spec.urls, *(id_url(spec.ids.url_format, s)
                                                      for s in spec.ids.seeds))))
            if urls != spec.urls:
                spec = spec.model_copy(update={"urls": urls})
        if depth != spec.depth:
            spec = spec.model_copy(update={"depth": depth})
        if spec.priorities and spec.order != "priority":
            _fail("priorities", None, PydanticCustomError(
                "order", 'only with "order": "priority" (order is {order})',
                {"order": spec.order}))
        if spec.fingerprint is not None and spec.fingerprint.ignore_params:
            from shared.fingerprint import JobFingerprint
            fp = JobFingerprint.from_stored({"fingerprint": spec.fingerprint.model_dump(
                mode="json", by_alias=True)})
            assert fp is not None
            urls = tuple(dict.fromkeys(fp.canonical(u) for u in spec.urls))
            if urls != spec.urls:
                spec = spec.model_copy(update={"urls": urls})
        return spec

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
        out = self.model_dump(mode="json", by_alias=True, exclude=exclude)
        if self.github is not None:  # what matters: users and order, or contributors, depth
            out["github"] = self.github.model_dump(
                mode="json", by_alias=True, exclude_none=True,
                exclude={"depth"} if self.github.users is not None else {"order"})
        if self.traps is not None:  # the limits given; the others follow the settings
            out["traps"] = self.traps.model_dump(mode="json", by_alias=True, exclude_none=True)
        return out

    def ruleset(self) -> int:
        """The job's rule set: 0 when nothing changes what a page yields beyond its links,
        else a digest of the keys that do (:func:`ruleset_of` of the stored spec)."""
        return ruleset_of(self.stored())


def _github(spec: JobSpec, context: Mapping[str, Any]) -> JobSpec:
    """A ``"source": "github"`` spec with what ``github`` derives: its URLs, depth, fetcher
    and maxPages (given, they must be those: a stored spec POSTs back); 400 for the rest."""
    if spec.source != "github":
        what = "github" if spec.github is not None else "fetcher"
        _fail(what, "github", PydanticCustomError(
            "source", 'only with "source": "github"'))
    if spec.github is None:
        _fail("github", None, PydanticCustomError("missing", 'required with "source": "github"'))
    assert spec.github is not None
    if "github" not in context.get("fetchers", ()):
        _fail("source", spec.source, PydanticCustomError(
            "source", "the server has no github fetcher (fetcherKinds: {known})",
            {"known": ", ".join(context.get("fetchers", ())) or "none"}))
    if "fetcher" in spec.model_fields_set and spec.fetcher != "github":
        _fail("fetcher", spec.fetcher, PydanticCustomError(
            "source", 'a "source": "github" job is fetched by "github", not {fetcher}',
            {"fetcher": spec.fetcher}))
    for name in ("follow", "ids"):
        if getattr(spec, name) is not None:
            _fail(name, None, PydanticCustomError(
                "source", 'not with "source": "github" (its pages yield their own links)'))
    cap = github_depth_cap(int(context["max_depth"]))
    if spec.github.depth > cap:
        _fail("github.depth", spec.github.depth, PydanticCustomError(
            "depth_range", "{depth} (allowed 0 to {cap})",
            {"depth": spec.github.depth, "cap": cap}))
    urls, max_level, max_pages = github_job(
        spec.github, str(context.get("github_base_url", "https://api.github.com")),
        int(context.get("github_per_page", 100)))
    if spec.urls and spec.urls != urls:
        _fail("urls", list(spec.urls), PydanticCustomError("source", "derived from github"))
    if spec.depth is not None and spec.depth != max_level:
        _fail("depth", spec.depth, PydanticCustomError(
            "source", "derived from github ({depth})", {"depth": max_level}))
    if "max_pages" in spec.scope.model_fields_set and spec.scope.max_pages != max_pages:
        _fail("scope.maxPages", spec.scope.max_pages, PydanticCustomError(
            "source", "derived from github ({n})", {"n": max_pages}))
    return spec.model_copy(update={
        "urls": urls, "depth": max_level, "fetcher": "github",
        "scope": spec.scope.model_copy(update={"max_pages": max_pages})})


def _fail(field: str, value: Any, error: PydanticCustomError) -> None:
    raise ValidationError.from_exception_data(
        "JobSpec", [InitErrorDetails(type=error, loc=(field,), input=value)])


_OMITTED_AT_DEFAULT = ("fetcher", "extract", "follow", "ids", "save", "webhook", "browser",
                       "task", "source", "github", "order", "priority", "priorities",
                       "fingerprint", "bloom", "sessions", "traps")


def follow_mode(stored: Mapping[str, Any]) -> Literal["html", "rules", "both"]:
    """Which links a job follows (``job.follow``): ``html`` (the HTML link extractor's: no
    ``follow``/``ids``), ``rules`` (only its follow/ids yields), ``both`` (``follow.html``);
    a source's own (``SOURCE_FOLLOW``: github's pages yield their links, ``rules``)."""
    if (mode := SOURCE_FOLLOW.get(stored.get("source") or "web")) is not None:
        return mode
    follow, ids = stored.get("follow"), stored.get("ids")
    if not follow and not ids:
        return "html"
    return "both" if follow and follow.get("html") else "rules"


def reads_any_body(stored: Mapping[str, Any]) -> bool:
    """Whether the job reads every 2xx body, not only HTML: ids or links found in XML, JSON or
    text (follow, ids), items, and files or tar archives of any type."""
    if stored.get("follow") or stored.get("ids"):
        return True
    if any(e.get("kind") in BUILTIN_EXTRACTORS for e in stored.get("extract") or ()):
        return True
    return any(s.get("kind") in ("files", "tar") for s in stored.get("save") or ())


def ruleset_of(stored: Mapping[str, Any]) -> int:
    """The rule set of a stored spec (``JobSpec.stored``, ``job.spec``): 0 when none of the
    ``YIELD_KEYS`` is set, else the first 8 bytes of the SHA-256 of their canonical JSON
    (sorted keys, no spaces) as a signed 64-bit integer, never 0. Jobs with the same rule set
    get the same yields from a page, so one can be answered from what the other extracted;
    the order of extractors counts, the order of keys within one does not. ``ids`` counts by
    its ``regex`` and ``urlFormat`` only: seeds and id sets are where a crawl starts, not what
    a page yields. ``save`` counts on purpose: a page is answered from the store only under a
    rule set that saved its current version."""
    keys = {k: stored[k] for k in YIELD_KEYS if stored.get(k)}
    for key, kept in _RULESET_PROJECTION.items():
        if key in keys:
            keys[key] = {k: v for k, v in keys[key].items() if k in kept}
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
               "extractors": (*BUILTIN_EXTRACTORS, *settings.extractor_kinds),
               "outputs": (*BUILTIN_OUTPUTS, *settings.output_kinds),
               "webhook_secret": bool(settings.webhook_secret),
               "tasks": tuple(settings.tasks), "github_base_url": settings.github_base_url,
               "github_per_page": settings.github_per_page,
               "max_url_length": settings.max_url_length}
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
    for key, model in (("scope", ScopeSpec), ("follow", FollowSpec), ("ids", IdSpec),
                       ("browser", BrowserSpec), ("task", TaskSpec), ("github", GitHubSpec),
                       ("fingerprint", FingerprintSpec), ("bloom", BloomSpec),
                       ("sessions", SessionsSpec), ("traps", TrapSpec)):
        if isinstance(out.get(key), dict):
            part = out[key]
            out[key] = {_alias(model, n): part[_alias(model, n)]
                        for n in model.model_fields if _alias(model, n) in part}
    return out


def _alias(model: type[BaseModel], name: str) -> str:
    return model.model_fields[name].alias or name
