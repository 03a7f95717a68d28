"""Typed settings: loaded once from the ``-config`` JSON file, then environment, then flags.

The original Harvester's keys are accepted (``storage``, ``urlQueue``, ``workQueue``,
``httpAddr``, ``httpRootPath``, ``maxLevel``, ``cacheMaxAge``, ``workDelay``); unknown keys are
ignored, as the original did. One model serves every tier: they share most keys, and
``harvester up`` hands the same file to all of them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.errors import ConfigError

_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
             "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str | float) -> float:
    """Seconds from a Go duration string ("24h", "1h30m", "25ms", "0"), or a number of seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    s = text.strip()
    if s in ("", "0"):
        return 0.0
    sign = -1.0 if s.startswith("-") else 1.0
    body = s.lstrip("+-")
    total, pos = 0.0, 0
    for m in _GO_PART.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(body) or pos == 0:
        raise ValueError(f"invalid duration {text!r}")
    return sign * total


class HostLimit(BaseModel):
    """Politeness for one host, overriding the defaults (config key ``hostLimits``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    concurrency: int | None = Field(None, gt=0)  # None: hostConcurrency
    delay: float | None = Field(None, ge=0)      # None: hostDelay

    @field_validator("delay", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float | None:
        return None if v is None else parse_go_duration(v)


@dataclass(frozen=True, slots=True)
class HostPace:
    """The limits in force for one host."""
    concurrency: int
    delay: float


_NO_OVERRIDE = HostLimit()  # a host without an entry in hostLimits (made once: ~1 µs each)

AUTH_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{16,}", re.ASCII)
AUTH_TOKEN_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}", re.ASCII)
_ALLOW_HOST = re.compile(r"(?:\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?"
                         r"(?:\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*", re.ASCII)


class AuthToken(BaseModel):
    """An API bearer token as configured: its name, the SHA-256 of the token (hex), admin or
    not. The token itself is never kept here (``authTokens`` holds digests only)."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    name: str = Field(pattern=AUTH_TOKEN_NAME.pattern, max_length=64)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    admin: bool = False


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def auth_token(parts: Sequence[str]) -> AuthToken | None:
    """``[name, token]`` or ``[name, token, "admin"]`` (a ``HARVESTER_AUTH_TOKENS`` entry or an
    ``authTokenFiles`` line, split) -> its ``AuthToken`` (the digest only); None: malformed."""
    if (len(parts) not in (2, 3) or not AUTH_TOKEN_NAME.fullmatch(parts[0])
            or not AUTH_TOKEN.fullmatch(parts[1]) or (len(parts) == 3 and parts[2] != "admin")):
        return None
    return AuthToken(name=parts[0], sha256=token_digest(parts[1]), admin=len(parts) == 3)


# What a malformed token entry or line should be: the end of each parser's message.
AUTH_TOKEN_CHARS = "the token 16 or more of A-Z a-z 0-9 . _ ~ + / = -"


def parse_auth_tokens(text: str) -> tuple[AuthToken, ...]:
    """``name:token[:admin],...`` (``HARVESTER_AUTH_TOKENS``) -> digests; ValueError naming the
    entry's position, never its token."""
    out: list[AuthToken] = []
    for i, entry in enumerate((e.strip() for e in text.split(",") if e.strip()), 1):
        token = auth_token(entry.split(":"))
        if token is None:
            raise ValueError(f"auth token {i} is malformed (use name:token[:admin], "
                             f"{AUTH_TOKEN_CHARS})")
        out.append(token)
    return tuple(out)


def _split_list(text: str) -> list[str]:
    """A comma list from the environment; ``none`` is the empty list."""
    if text.strip().lower() == "none":
        return []
    return [p.strip() for p in text.split(",") if p.strip()]


def _list_setting(v: Any, one: Callable[[Any], str]) -> Any:
    """A list setting (from the environment a comma list, ``none`` the empty one), each item
    normalised by ``one`` (ValueError for a bad one), without duplicates."""
    items = _split_list(v) if isinstance(v, str) else v
    if not isinstance(items, list | tuple):
        return items
    return tuple(dict.fromkeys(one(item) for item in items))


def _network(item: Any) -> str:
    try:
        return str(ipaddress.ip_network(str(item).strip(), strict=False))
    except ValueError:
        raise ValueError(f"invalid network {item!r} (use CIDR, e.g. 10.0.0.0/8 "
                         "or fd00::/8)") from None


def _allow_host(item: Any) -> str:
    name = item.strip().lower().rstrip(".") if isinstance(item, str) else ""
    if not _ALLOW_HOST.fullmatch(name):
        raise ValueError(f"invalid host {item!r} (use a name or *.suffix, "
                         "e.g. intranet.example or *.example)")
    return name


def loopback(host: str) -> bool:
    """Whether ``host`` (a URL's hostname) is this machine: ``localhost``, 127.0.0.0/8, ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseModel):
    """Everything a tier needs; passed down, never read from globals."""

    # hide_input_in_errors: a bad value (a GitHub token) is never echoed in an error.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    database_url: str = "postgresql://harvester:harvester@localhost:5432/harvester"
    # a streaming replica the web server reads finished jobs' results from (None: the primary)
    database_read_url: str | None = None
    nats_url: str = "nats://localhost:4222"   # a comma-separated list for a cluster's nodes
    nats_replicas: int = Field(1, ge=1, le=5)  # copies of each stream (3 on a 3-node cluster)
    url_topic: str = "url_queue"
    work_topic: str = "work_queue"
    log_level: str = "INFO"

    # web server: loopback unless told otherwise (":8080" or "0.0.0.0:8080": every interface)
    http_addr: str = "127.0.0.1:8080"
    root_path: str = "/"
    max_level: int = Field(2, ge=0)
    max_depth: int = Field(10, ge=0)
    max_request_bytes: int = Field(1 << 20, gt=0)
    max_job_urls: int = Field(10_000, gt=0)

    # foreman
    cache_max_age: float = Field(24 * 3600.0, ge=0)

    # worker
    concurrency: int = Field(32, gt=0)
    work_delay: float = Field(0.0, ge=0)
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(30.0, gt=0)
    max_body_bytes: int = Field(10 << 20, gt=0)
    max_redirects: int = Field(10, ge=0)
    parse_timeout: float = Field(10.0, gt=0)      # a page's links must be extracted within this
    user_agent: str = "Harvester/0.1 (+https://github.com/harvester-crawler/harvester)"
    user_agents: tuple[str, ...] = ()             # a pool to rotate through, request by request
    host_headers: dict[str, dict[str, str]] = Field(default_factory=dict)  # by host or host:port
    # more of them (they may hold credentials): a JSON file of the same shape, merged over
    # ``hostHeaders`` host by host (also HARVESTER_HOST_HEADERS, the JSON itself)
    host_headers_file: Path | None = None

    # politeness, enforced for all workers together
    host_concurrency: int = Field(2, gt=0)        # requests in flight per host
    host_delay: float = Field(0.5, ge=0)          # seconds between request starts per host
    host_limits: dict[str, HostLimit] = Field(default_factory=dict)  # by host or host:port
    host_backoff_base: float = Field(1.0, ge=0)   # a host answering 429/503/nothing slows down
    host_backoff_cap: float = Field(60.0, ge=0)
    politeness_horizon: float = Field(2.0, ge=0)  # wait this long for a slot, else defer
    robots: bool = True                           # obey robots.txt (turn off for private crawls)
    robots_max_age: float = Field(24 * 3600.0, gt=0)
    robots_max_failures: int = Field(3, ge=1)     # unreachable robots.txt: then disallow
    max_crawl_delay: float = Field(30.0, ge=0)    # cap on a host's Crawl-delay

    # queue consumers (both foreman and worker)
    url_queue_limit: int = Field(10_000, gt=0)   # messages on the URL queue; the rest wait in PG
    work_queue_limit: int = Field(10_000, gt=0)  # messages on the work queue
    feed_interval: float = Field(0.01, gt=0)     # how often an idle feeder looks for new visits
    # the feeder's fair, host-aware claim (issue 14): a host with a delay gets at most
    # concurrency + n visits published at once, n = ceil(host_lookahead / delay) but no more
    # starts than fit in politeness_horizon (0 by default: the gate leases concurrency slots,
    # a visit published beyond them is deferred and only churns); feed_pairs (host, job) pairs
    # are looked at per claim (more are served in turns)
    host_lookahead: float = Field(0.0, ge=0)
    # ... and only the starts due within host_start_window seconds (plus host_lookahead and
    # the work queue's wait) from the host's next start: a visit published earlier would wait
    # in the gate, holding a slot
    host_start_window: float = Field(0.1, ge=0)
    feed_pairs: int = Field(5000, gt=0)
    # the feeder keeps at most feed_ahead seconds of work published and unfinished (on the URL
    # queue and the http work queue together): that many seconds of the rows it claimed per
    # second lately, 256 at least; 0: only the queue limits bound it
    feed_ahead: float = Field(0.3, ge=0)
    # a capped host's room goes to the job its feeder served least there lately: its claims
    # of the host, each decayed with this half-life, over the job's weight
    fair_window: float = Field(30.0, gt=0)
    bloom_jobs: int = Field(64, gt=0)            # Bloom filters a worker keeps (one per job, LRU)
    # what a worker's commits keep known (URL ids; visits' levels): two generations of this each
    commit_cache: int = Field(50_000, ge=0)
    stale_after: float = Field(900.0, gt=0)      # published and still pending this long: lost
    max_requeues: int = Field(3, ge=0)           # watchdog re-publishes before recording failure
    watchdog_interval: float = Field(5.0, gt=0)
    retries: int = Field(3, ge=0)                # fetch retries after the first attempt
    retry_base: float = Field(1.0, ge=0)         # backoff: base, 2*base, 4*base ... (+-50% jitter)
    retry_cap: float = Field(60.0, ge=0)
    max_retry_after: float = Field(120.0, ge=0)  # cap on a server's Retry-After
    batch_size: int = Field(64, gt=0)
    batch_wait: float = Field(0.02, ge=0)
    ack_wait: float = Field(60.0, gt=0)
    max_deliver: int = Field(20, gt=0)
    shutdown_timeout: float = Field(20.0, gt=0)
    # Plug-ins (docs/architecture.md#extending-harvester). The fetcher kinds a job may name (each
    # has its own work stream, work_topic for "http" and work_topic.<kind> for the others), the
    # extractors a job may add after the HTML links, and the kinds a worker process serves with
    # their concurrency ({}: {"http": concurrency}; the -kind flag sets it too).
    fetcher_kinds: tuple[str, ...] = ("http",)
    extractor_kinds: tuple[str, ...] = ()
    output_kinds: tuple[str, ...] = ()            # plug-in outputs a job may "save" to
    output_root: Path = Path("harvester-output")  # saved bodies: <outputRoot>/job-<id>/<kind>/
    output_idle_close: float = Field(60.0, gt=0)  # a job's outputs idle this long are closed
    max_idset_bytes: int = Field(1 << 30, gt=0)   # largest POST /idsets body
    worker_kinds: dict[str, int] = Field(default_factory=dict)
    heartbeat_interval: float = Field(5.0, gt=0)  # a worker says it is alive this often
    worker_timeout: float = Field(15.0, gt=0)     # unseen this long: no longer a live worker

    # operating (issue 16)
    log_format: Literal["text", "json"] = "text"  # json: one object per line
    metrics_addr: str = ""                        # foreman/worker metrics port; "" = off
    live_interval: float = Field(1.0, gt=0)       # web server: the live status poll (SSE)
    housekeeping_interval: float = Field(5.0, gt=0)  # foreman: purge, unhold sweep, gauges
    job_retention: float = Field(0.0, ge=0)       # completed jobs older than this purged; 0 never
    webhook_secret: str = Field("", repr=False)   # HMAC key of completion webhooks; never logged
    webhook_timeout: float = Field(10.0, gt=0)    # one delivery's request
    webhook_max_attempts: int = Field(10, gt=0)
    webhook_retry_cap: float = Field(600.0, ge=0)  # backoff 2**attempts s, capped here

    # browser fetcher (issue 12): Debian's Chromium driven by Playwright, never downloaded
    browser_path: str = "/usr/bin/chromium"
    browser_args: tuple[str, ...] = ()            # extra Chromium command-line switches
    browser_timeout: float = Field(30.0, gt=0)    # a navigation's default timeout
    browser_block: tuple[str, ...] = ("image", "media", "font")  # resource types not loaded
    browser_relaunch_on_timeout: bool = True      # a navigation timeout relaunches the browser
    browser_max_errors: int = Field(3, ge=1)      # consecutive no-answer errors: relaunch
    browser_page_lease: float = Field(120.0, gt=0)  # a task holding a page longer loses it

    # task API (issue 12): allow-listed functions by name, run by the workers of a kind
    task_topic: str = "task_queue"
    tasks: dict[str, str] = Field(default_factory=dict)  # name -> "pkg.mod:fn" | "/x/f.py:fn"
    task_concurrency: int = Field(4, gt=0)        # tasks a worker runs at once, per kind
    task_timeout: float = Field(300.0, gt=0)
    task_max_attempts: int = Field(5, gt=0)       # deliveries before a task is abandoned
    init: tuple[str, ...] = ()                    # "mod:fn" run once per worker process

    # worker health (issue 12): past a threshold over the window, a worker exits; 0 = off
    worker_max_error_rate: float = Field(0.0, ge=0, le=1)
    worker_max_latency: float = Field(0.0, ge=0)  # median fetch seconds
    worker_health_window: int = Field(50, gt=0)   # last outcomes considered

    # GitHub source (issue 13, docs/github.md): the API's base URL (GitHub Enterprise:
    # https://host/api/v3), the tokens (environment or token files only: never a config file
    # key, never shown or logged), a list page's size, requests in flight per token, and how
    # long GET /users and /contributors wait for the crawl before answering 202.
    github_base_url: str = "https://api.github.com"
    github_tokens: tuple[str, ...] = Field((), repr=False, exclude=True)
    github_token_files: tuple[Path, ...] = ()     # one token a line, # comments; read by workers
    github_per_page: int = Field(100, ge=1, le=100)
    github_token_concurrency: int = Field(4, gt=0)
    github_wait: float = Field(10.0, ge=0)

    # safe to expose (issue 17, docs/security.md)
    # SSRF guard: the networks a fetch may connect to although the address tables refuse them
    # (loopback, private, link-local ...), host names whose addresses are allowed ("name" or
    # "*.suffix"), and networks refused whatever else says (denyNetworks wins over allow)
    allow_networks: tuple[str, ...] = ()
    allow_hosts: tuple[str, ...] = ()
    deny_networks: tuple[str, ...] = ()
    # crawler traps (defaults of a job's "traps"); max_url_length also bounds job URLs (400)
    max_url_length: int = Field(2048, gt=0)
    max_path_depth: int = Field(32, gt=0)
    max_segment_repeats: int = Field(3, gt=0)
    max_query_params: int = Field(32, gt=0)
    max_param_repeats: int = Field(4, gt=0)
    max_chain_level: int = Field(200, gt=0)       # links from the job URL, all jobs
    parse_memory: int = Field(1 << 30, ge=0)      # a parse lane's address space (RLIMIT_AS); 0 off
    parse_inline_bytes: int = Field(32 << 10, ge=0)  # links of smaller pages: on the loop; 0 off
    # web server: a connection idle (or still sending its headers) this long is closed; a
    # request body not received within http_body_timeout is a 408
    http_idle_timeout: float = Field(15.0, gt=0)
    http_body_timeout: float = Field(30.0, gt=0)
    # API bearer tokens: digests only ({name, sha256, admin}); raw tokens from the environment
    # (HARVESTER_AUTH_TOKENS, hashed at load) or token files (read by the web server)
    auth_tokens: tuple[AuthToken, ...] = ()
    auth_token_files: tuple[Path, ...] = ()
    # secrets: never a config file value (a file names a path), never shown or logged
    database_password: str = Field("", repr=False, exclude=True)  # put into database_url
    database_password_file: Path | None = None
    nats_user: str = ""
    nats_password: str = Field("", repr=False, exclude=True)
    nats_password_file: Path | None = None
    nats_token: str = Field("", repr=False, exclude=True)
    nats_token_file: Path | None = None
    nats_creds_file: Path | None = None
    nats_nkey_file: Path | None = None
    nats_tls_ca_file: Path | None = None          # None: system CAs for a tls:// URL
    nats_tls_cert_file: Path | None = None
    nats_tls_key_file: Path | None = None

    @field_validator("allow_networks", "deny_networks", mode="before")
    @classmethod
    def _networks(cls, v: Any) -> Any:
        return _list_setting(v, _network)

    @field_validator("allow_hosts", mode="before")
    @classmethod
    def _allow_hosts(cls, v: Any) -> Any:
        return _list_setting(v, _allow_host)

    @field_validator("auth_tokens", mode="before")
    @classmethod
    def _auth_tokens(cls, v: Any) -> Any:
        return parse_auth_tokens(v) if isinstance(v, str) else v

    @field_validator("root_path")
    @classmethod
    def _root(cls, v: str) -> str:
        v = "/" + v.strip("/")
        return v

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, v: str) -> str:
        level = v.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"unknown log level {v!r} (use {', '.join(LOG_LEVELS)})")
        return level

    @field_validator("http_addr")
    @classmethod
    def _addr(cls, v: str) -> str:
        split_addr(v)
        return v

    @field_validator("metrics_addr")
    @classmethod
    def _metrics_addr(cls, v: str) -> str:
        if v:
            split_addr(v)
        return v

    @field_validator("host_headers", "host_limits")
    @classmethod
    def _host_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in v.items():
            norm = _host_key(key)
            if norm in out:
                raise ValueError(f"{key!r} names the same host as another key")
            out[norm] = value
        return out

    @field_validator("fetcher_kinds")
    @classmethod
    def _fetcher_kinds(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, kind in enumerate(v):  # a kind names a NATS subject token and a stream
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", kind):
                raise ValueError(f"invalid fetcher kind {kind!r} (use up to 32 lower-case "
                                 "letters, digits and _, starting with a letter)")
            if kind in v[:i]:
                raise ValueError(f"fetcher kind {kind!r} named twice")
        return v

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: dict[str, str]) -> dict[str, str]:
        for name, target in v.items():
            if not TASK_NAME.fullmatch(name):
                raise ValueError(f"invalid task name {name!r} (use up to 64 letters, digits, "
                                 "_, . and -, starting with a letter or _)")
            check_target(target)
        return v

    @field_validator("init")
    @classmethod
    def _init(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for target in v:
            check_target(target)
        return v

    @field_validator("browser_block")
    @classmethod
    def _browser_block(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_block(v)

    @field_validator("github_base_url")
    @classmethod
    def _github_base_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if (parts.scheme not in ("http", "https") or not parts.hostname or parts.query
                or parts.fragment or v.endswith("/") or "#" in v or "?" in v):
            raise ValueError(f"invalid GitHub base URL {v!r} (use http(s)://host[:port][/path] "
                             "without a trailing /, e.g. https://api.github.com)")
        if parts.scheme == "http" and not loopback(parts.hostname):  # tokens in cleartext
            raise ValueError(f"GitHub base URL {v!r}: use https (http only for a loopback "
                             "host, such as 127.0.0.1: every request carries a token)")
        return v

    @field_validator("github_tokens", mode="before")
    @classmethod
    def _github_tokens(cls, v: Any) -> Any:
        tokens = split_tokens(v) if isinstance(v, str) else v
        if isinstance(tokens, list | tuple):
            for i, token in enumerate(tokens, 1):  # the error never holds the value
                if not isinstance(token, str) or not GITHUB_TOKEN.fullmatch(token):
                    raise ValueError(f"token {i} is malformed (use 8 to 255 letters, digits, "
                                     "_, . and -)")
            return tuple(dict.fromkeys(tokens))
        return tokens

    @field_validator("worker_kinds")
    @classmethod
    def _worker_kinds(cls, v: dict[str, int]) -> dict[str, int]:
        for kind, n in v.items():
            if n < 1:
                raise ValueError(f"concurrency of {kind!r} must be above 0")
        return v

    @model_validator(mode="after")
    def _served(self) -> Settings:
        self.check_kind(*self.worker_kinds)
        return self

    def check_kind(self, *kinds: str) -> None:
        """ValueError for a kind not in ``fetcher_kinds``."""
        for kind in kinds:
            if kind not in self.fetcher_kinds:
                raise ValueError(f"unknown fetcher kind {kind!r} "
                                 f"(fetcherKinds: {', '.join(self.fetcher_kinds)})")

    @model_validator(mode="after")
    def _levels(self) -> Settings:
        if self.max_level > self.max_depth:
            raise ValueError(f"maxLevel ({self.max_level}) exceeds maxDepth ({self.max_depth}): "
                             "the default depth must be one a job may ask for")
        return self

    def host_limit(self, host: str) -> HostPace:
        """Limits for ``scheme://host[:port]``: an override by host:port or host, else defaults."""
        own = _per_host(self.host_limits, host) or _NO_OVERRIDE
        return HostPace(concurrency=own.concurrency or self.host_concurrency,
                        delay=self.host_delay if own.delay is None else own.delay)

    def headers_for(self, host: str) -> dict[str, str]:
        """Extra headers for ``scheme://host[:port]`` only (by host:port or host). An entry for
        host:port wins over one for the host, even an empty one: ``{}`` sends nothing extra."""
        found = _per_host(self.host_headers, host)
        return {} if found is None else dict(found)

    @property
    def served_kinds(self) -> dict[str, int]:
        """The fetcher kinds this worker serves, each with its concurrency."""
        return dict(self.worker_kinds) or {"http": self.concurrency}

    @property
    def fetch_lease(self) -> float:
        """Longest a request can take: a host slot is leased for that long at most."""
        return self.connect_timeout + 2 * self.read_timeout + 5


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Playwright's request.resource_type values that may be blocked ("document" never: it is the page)
RESOURCE_TYPES = ("stylesheet", "image", "media", "font", "script", "texttrack", "xhr", "fetch",
                  "eventsource", "websocket", "manifest", "other")
GITHUB_TOKEN = re.compile(r"[\w.-]{8,255}", re.ASCII)
TASK_NAME = re.compile(r"[A-Za-z_][\w.-]{0,63}", re.ASCII)
_TARGET = re.compile(r"(?:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*|[^:\0]*[^:\0/]\.py):[A-Za-z_]\w*",
                     re.ASCII)


def split_tokens(text: str) -> tuple[str, ...]:
    """Tokens from a comma or white-space separated list (``HARVESTER_GITHUB_TOKENS``)."""
    return tuple(t for t in re.split(r"[,\s]+", text) if t)


def check_target(target: str) -> str:
    """A task or init target, ``dotted.module:function`` or ``/path/file.py:function``;
    ValueError else (the code is imported by the workers only, when first called)."""
    if not isinstance(target, str) or not _TARGET.fullmatch(target):
        raise ValueError(f"invalid target {target!r} (use dotted.module:function or "
                         "/path/file.py:function)")
    return target


def check_block(types: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Resource types a browser may block: Playwright's, without "document"; ValueError else."""
    for t in types:
        if t == "document":
            raise ValueError("resource type 'document' cannot be blocked (it is the page)")
        if t not in RESOURCE_TYPES:
            raise ValueError(f"unknown resource type {t!r} (use {', '.join(RESOURCE_TYPES)})")
    return tuple(dict.fromkeys(types))


_DEFAULT_PORTS = {"http": 80, "https": 443}


def split_addr(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port): host may be empty (every interface) or an IPv6 address in
    brackets (returned without them); the port is 0 to 65535 in ASCII digits. ValueError else."""
    host, sep, port = addr.rpartition(":")
    if not sep or not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        raise ValueError(f"invalid address {addr!r} (use HOST:PORT, e.g. 127.0.0.1:8080 or :8080)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"invalid address {addr!r} (put an IPv6 address in brackets: [::1]:8080)")
    return host, int(port)


def _split_host(netloc: str) -> tuple[str, int | None]:
    """"host", "host:port", "[v6]", "[v6]:port" or a bare v6 address -> (host, port), the host
    lower-cased and an IP address in its normal form (so "[::1]" and "::1" are the same)."""
    port: int | None = None
    if netloc.startswith("["):
        host, bracket, rest = netloc[1:].partition("]")
        if not bracket:
            raise ValueError(f"invalid host {netloc!r}")
        if rest.startswith(":") and rest[1:].isascii() and rest[1:].isdigit():
            port = int(rest[1:])
        elif rest:
            raise ValueError(f"invalid host {netloc!r}")
    elif netloc.count(":") == 1:
        host, _, p = netloc.partition(":")
        if not (p.isascii() and p.isdigit()):
            raise ValueError(f"invalid port in {netloc!r}")
        port = int(p)
    else:
        host = netloc  # a name, or a bare IPv6 address
    host = host.lower()
    with contextlib.suppress(ValueError):
        host = ipaddress.ip_address(host).compressed
    return host, port


def _join_host(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def _host_key(key: str) -> str:
    return _join_host(*_split_host(key.strip()))


def _per_host(table: Mapping[str, Any], origin: str) -> Any:
    """The entry for ``scheme://host[:port]`` keyed by "host:port" (the scheme's default port
    if the URL has none), else by "host"; None if neither. Keys are normalised at load."""
    for key in _origin_keys(origin):
        if key in table:
            return table[key]
    return None


@functools.lru_cache(maxsize=4096)
def _origin_keys(origin: str) -> tuple[str, str]:
    """The keys an origin's entry may have, "host:port" then "host": worked out once per
    origin (this runs for every request and redirect hop), the most recent 4,096 kept."""
    scheme, _, netloc = origin.rpartition("://")
    host, port = _split_host(netloc)
    if port is None:
        port = _DEFAULT_PORTS.get(scheme.lower())
    return _join_host(host, port), _join_host(host, None)


def stream_name(topic: str) -> str:
    return "HARVESTER_" + re.sub(r"[^A-Za-z0-9]", "_", topic).upper()


# Original keys (and a few new camelCase ones) -> settings fields.
_SIMPLE_KEYS = {
    "httpAddr": "http_addr", "httpRootPath": "root_path", "maxLevel": "max_level",
    "maxDepth": "max_depth", "concurrency": "concurrency", "logLevel": "log_level",
    "userAgent": "user_agent", "maxBodyBytes": "max_body_bytes",
    "maxRequestBytes": "max_request_bytes", "maxJobURLs": "max_job_urls",
    "maxRedirects": "max_redirects", "batchSize": "batch_size", "maxDeliver": "max_deliver",
    "urlQueueLimit": "url_queue_limit", "workQueueLimit": "work_queue_limit",
    "hostConcurrency": "host_concurrency", "hostLimits": "host_limits", "robots": "robots",
    "userAgents": "user_agents", "hostHeaders": "host_headers",
    "robotsMaxFailures": "robots_max_failures",
    "maxRequeues": "max_requeues", "retries": "retries",
    "databaseURL": "database_url", "databaseReadURL": "database_read_url",
    "natsURL": "nats_url", "natsReplicas": "nats_replicas",
    "fetcherKinds": "fetcher_kinds", "workerKinds": "worker_kinds",
    "extractorKinds": "extractor_kinds", "outputKinds": "output_kinds",
    "outputRoot": "output_root", "maxIdSetBytes": "max_idset_bytes",
    "logFormat": "log_format", "metricsAddr": "metrics_addr", "webhookSecret": "webhook_secret",
    "webhookMaxAttempts": "webhook_max_attempts",
    "browserPath": "browser_path", "browserArgs": "browser_args", "browserBlock": "browser_block",
    "browserRelaunchOnTimeout": "browser_relaunch_on_timeout",
    "browserMaxErrors": "browser_max_errors", "taskTopic": "task_topic", "tasks": "tasks",
    "taskConcurrency": "task_concurrency", "taskMaxAttempts": "task_max_attempts",
    "init": "init", "workerMaxErrorRate": "worker_max_error_rate",
    "workerHealthWindow": "worker_health_window",
    "githubBaseUrl": "github_base_url", "githubTokenFiles": "github_token_files",
    "githubPerPage": "github_per_page", "githubTokenConcurrency": "github_token_concurrency",
    "feedPairs": "feed_pairs", "bloomJobs": "bloom_jobs", "commitCache": "commit_cache",
    "allowNetworks": "allow_networks", "allowHosts": "allow_hosts",
    "denyNetworks": "deny_networks", "maxURLLength": "max_url_length",
    "maxPathDepth": "max_path_depth", "maxSegmentRepeats": "max_segment_repeats",
    "maxQueryParams": "max_query_params", "maxParamRepeats": "max_param_repeats",
    "maxChainLevel": "max_chain_level", "parseMemory": "parse_memory",
    "parseInlineBytes": "parse_inline_bytes",
    "authTokens": "auth_tokens", "authTokenFiles": "auth_token_files",
    "databasePasswordFile": "database_password_file", "natsUser": "nats_user",
    "natsPasswordFile": "nats_password_file", "natsTokenFile": "nats_token_file",
    "natsCredsFile": "nats_creds_file", "natsNkeyFile": "nats_nkey_file",
    "natsTLSCAFile": "nats_tls_ca_file", "natsTLSCertFile": "nats_tls_cert_file",
    "natsTLSKeyFile": "nats_tls_key_file", "hostHeadersFile": "host_headers_file",
}
_DURATION_KEYS = {
    "cacheMaxAge": "cache_max_age", "workDelay": "work_delay", "connectTimeout": "connect_timeout",
    "readTimeout": "read_timeout", "batchWait": "batch_wait", "ackWait": "ack_wait",
    "shutdownTimeout": "shutdown_timeout", "staleAfter": "stale_after",
    "retryBase": "retry_base", "retryCap": "retry_cap", "maxRetryAfter": "max_retry_after",
    "feedInterval": "feed_interval", "watchdogInterval": "watchdog_interval",
    "hostDelay": "host_delay", "hostBackoffBase": "host_backoff_base",
    "hostBackoffCap": "host_backoff_cap", "robotsMaxAge": "robots_max_age",
    "maxCrawlDelay": "max_crawl_delay", "politenessHorizon": "politeness_horizon",
    "parseTimeout": "parse_timeout", "heartbeatInterval": "heartbeat_interval",
    "workerTimeout": "worker_timeout", "outputIdleClose": "output_idle_close",
    "liveInterval": "live_interval", "housekeepingInterval": "housekeeping_interval",
    "jobRetention": "job_retention", "webhookTimeout": "webhook_timeout",
    "webhookRetryCap": "webhook_retry_cap",
    "browserTimeout": "browser_timeout", "browserPageLease": "browser_page_lease",
    "taskTimeout": "task_timeout", "workerMaxLatency": "worker_max_latency",
    "githubWait": "github_wait", "hostLookahead": "host_lookahead",
    "hostStartWindow": "host_start_window",
    "feedAhead": "feed_ahead", "fairWindow": "fair_window",
    "httpIdleTimeout": "http_idle_timeout", "httpBodyTimeout": "http_body_timeout",
}
_ENV = {
    "HARVESTER_DATABASE_URL": "database_url", "HARVESTER_NATS_URL": "nats_url",
    "HARVESTER_DATABASE_READ_URL": "database_read_url",
    "HARVESTER_URL_TOPIC": "url_topic", "HARVESTER_WORK_TOPIC": "work_topic",
    "HARVESTER_HTTP_ADDR": "http_addr", "HARVESTER_ROOT_PATH": "root_path",
    "HARVESTER_MAX_LEVEL": "max_level", "HARVESTER_MAX_DEPTH": "max_depth",
    "HARVESTER_CONCURRENCY": "concurrency", "HARVESTER_LOG_LEVEL": "log_level",
    "HARVESTER_USER_AGENT": "user_agent", "HARVESTER_ACK_WAIT": "ack_wait",
    "HARVESTER_STALE_AFTER": "stale_after", "HARVESTER_RETRIES": "retries",
    "HARVESTER_RETRY_BASE": "retry_base", "HARVESTER_URL_QUEUE_LIMIT": "url_queue_limit",
    "HARVESTER_WORK_QUEUE_LIMIT": "work_queue_limit",
    "HARVESTER_NATS_REPLICAS": "nats_replicas",
    "HARVESTER_WATCHDOG_INTERVAL": "watchdog_interval",
    "HARVESTER_SHUTDOWN_TIMEOUT": "shutdown_timeout",
    "HARVESTER_HOST_CONCURRENCY": "host_concurrency", "HARVESTER_HOST_DELAY": "host_delay",
    "HARVESTER_ROBOTS": "robots", "HARVESTER_CACHE_MAX_AGE": "cache_max_age",
    "HARVESTER_WORK_DELAY": "work_delay", "HARVESTER_OUTPUT_ROOT": "output_root",
    "HARVESTER_LOG_FORMAT": "log_format", "HARVESTER_METRICS_ADDR": "metrics_addr",
    "HARVESTER_LIVE_INTERVAL": "live_interval",
    "HARVESTER_HOUSEKEEPING_INTERVAL": "housekeeping_interval",
    "HARVESTER_JOB_RETENTION": "job_retention", "HARVESTER_WEBHOOK_SECRET": "webhook_secret",
    "HARVESTER_WEBHOOK_TIMEOUT": "webhook_timeout",
    "HARVESTER_WEBHOOK_MAX_ATTEMPTS": "webhook_max_attempts",
    "HARVESTER_WEBHOOK_RETRY_CAP": "webhook_retry_cap",
    "HARVESTER_FETCHER_KINDS": "fetcher_kinds",  # a comma list: "http,browser"
    "HARVESTER_BROWSER_PATH": "browser_path", "HARVESTER_TASK_TOPIC": "task_topic",
    "HARVESTER_GITHUB_BASE_URL": "github_base_url",
    "HARVESTER_GITHUB_TOKENS": "github_tokens",  # comma or space separated; only here
    "HARVESTER_GITHUB_TOKEN_FILES": "github_token_files",  # a comma list of paths
    "HARVESTER_GITHUB_WAIT": "github_wait",
    "HARVESTER_ALLOW_NETWORKS": "allow_networks",  # comma lists; "none" is the empty list
    "HARVESTER_ALLOW_HOSTS": "allow_hosts", "HARVESTER_DENY_NETWORKS": "deny_networks",
    "HARVESTER_PARSE_MEMORY": "parse_memory",
    "HARVESTER_PARSE_INLINE_BYTES": "parse_inline_bytes",
    "HARVESTER_HTTP_IDLE_TIMEOUT": "http_idle_timeout",
    "HARVESTER_HTTP_BODY_TIMEOUT": "http_body_timeout",
    "HARVESTER_AUTH_TOKENS": "auth_tokens",  # name:token[:admin],...; hashed at load
    "HARVESTER_AUTH_TOKEN_FILES": "auth_token_files",  # lines "name token [admin]"
    "HARVESTER_DATABASE_PASSWORD": "database_password",
    "HARVESTER_DATABASE_PASSWORD_FILE": "database_password_file",
    "HARVESTER_NATS_USER": "nats_user", "HARVESTER_NATS_PASSWORD": "nats_password",
    "HARVESTER_NATS_PASSWORD_FILE": "nats_password_file",
    "HARVESTER_NATS_TOKEN": "nats_token", "HARVESTER_NATS_TOKEN_FILE": "nats_token_file",
    "HARVESTER_NATS_CREDS_FILE": "nats_creds_file",
    "HARVESTER_NATS_NKEY_FILE": "nats_nkey_file",
    "HARVESTER_NATS_TLS_CA_FILE": "nats_tls_ca_file",
    "HARVESTER_NATS_TLS_CERT_FILE": "nats_tls_cert_file",
    "HARVESTER_NATS_TLS_KEY_FILE": "nats_tls_key_file",
    "HARVESTER_HOST_HEADERS": "host_headers",  # JSON: {"host": {"Header": "value"}}
    "HARVESTER_HOST_HEADERS_FILE": "host_headers_file",
}
_LIST_FIELDS = frozenset({"fetcher_kinds", "github_token_files", "auth_token_files"})
# Secrets, by config key and field: only from the environment (HARVESTER_<FIELD>) or the file
# the config names (key + "File", field + "_file"; then never both), never a config file key.
SECRETS = (("databasePassword", "database_password"), ("natsPassword", "nats_password"),
           ("natsToken", "nats_token"))
# Fields holding seconds: from a file or the environment they may be Go durations ("500ms").
_DURATION_FIELDS = frozenset(_DURATION_KEYS.values())


def _storage_url(storage: Mapping[str, Any]) -> str:
    user = quote(str(storage.get("user", "")), safe="")
    password = quote(str(storage.get("pass", "")), safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = storage.get("host") or "localhost"
    port = storage.get("port") or 5432
    db = storage.get("dbname", "")
    ssl = storage.get("sslmode", False)
    mode = ssl if isinstance(ssl, str) else ("require" if ssl else "disable")
    return f"postgresql://{auth}{host}:{port}/{db}?sslmode={mode}"


def _from_file(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "storage" in data:
        if not isinstance(data["storage"], Mapping):
            raise ConfigError(source, '"storage" must be an object')
        out["database_url"] = _storage_url(data["storage"])
    for key, field in (("urlQueue", "url_topic"), ("workQueue", "work_topic")):
        q = data.get(key)
        if q is None:
            continue
        if not isinstance(q, Mapping):
            raise ConfigError(source, f'"{key}" must be an object')
        if q.get("connURL"):
            out["nats_url"] = q["connURL"]
        if q.get("topic"):
            out[field] = q["topic"]
    if "githubTokens" in data:  # a config file is shared and shown: tokens never go in one
        raise ConfigError(source, '"githubTokens": put GitHub tokens in HARVESTER_GITHUB_TOKENS '
                          'or in githubTokenFiles, never in the config file')
    for key, field in SECRETS:
        if key in data:
            raise ConfigError(source, f'"{key}": put it in HARVESTER_{field.upper()} or '
                              f'{key}File, never in the config file')
    for key, field in _SIMPLE_KEYS.items():
        if key in data:
            out[field] = data[key]
    for key, field in _DURATION_KEYS.items():
        if key in data:
            try:
                out[field] = parse_go_duration(data[key])
            except (ValueError, TypeError):
                raise ConfigError(source, f'"{key}": invalid duration {data[key]!r}') from None
    return out


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for var, name in _ENV.items():
        value = env.get(var)
        if not value:
            continue
        if name in _DURATION_FIELDS:
            try:  # a number of seconds, or a Go duration
                out[name] = float(value) if _is_number(value) else parse_go_duration(value)
            except ValueError:
                raise ConfigError(var, f"invalid duration {value!r}") from None
        elif name in _LIST_FIELDS:
            out[name] = tuple(p.strip() for p in value.split(",") if p.strip())
        elif name == "host_headers":  # JSON; a parse error names the place, never the text
            try:
                out[name] = json.loads(value)
            except json.JSONDecodeError as e:
                raise ConfigError(var, f"invalid JSON at column {e.colno}: {e.msg}") from None
        else:
            out[name] = value
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_secrets(settings: Settings) -> Settings:
    """The secrets named by ``*_FILE`` settings read (the file's text, trailing white space
    dropped; ConfigError naming the key and path, never the value), and the database password
    put into ``database_url`` (asyncpg and psycopg read it there; a password already in the
    URL is replaced)."""
    update: dict[str, Any] = {}
    for secret, field in SECRETS:
        key = secret + "File"
        path = getattr(settings, field + "_file")
        if path is None:
            continue
        if getattr(settings, field):
            raise ConfigError(key, "the secret is set both in the environment and in a file")
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeError) as e:
            why = getattr(e, "strerror", None) or type(e).__name__
            raise ConfigError(key, f"{path}: cannot read ({why})") from None
        if not value:
            raise ConfigError(key, f"{path} is empty")
        update[field] = value
    password = update.get("database_password", settings.database_password)
    if password:
        parts = urlsplit(settings.database_url)
        user = parts.netloc.rpartition("@")[0].partition(":")[0]
        host = parts.netloc.rpartition("@")[2]
        netloc = f"{user}:{quote(password, safe='')}@{host}"
        update["database_url"] = parts._replace(netloc=netloc).geturl()
    return settings.model_copy(update=update) if update else settings


def _merge_host_headers_file(values: dict[str, Any], from_env: bool) -> None:
    """``hostHeadersFile``'s JSON (``{"host": {"Header": "value"}}``) merged over the
    ``hostHeaders`` of ``values``, host by host; a ConfigError naming the key and path (never a
    value) if it cannot be read or is not of that shape, or if HARVESTER_HOST_HEADERS
    (``from_env``) gave them too."""
    path = values.get("host_headers_file")
    if not path:
        return
    key = "hostHeadersFile"
    if from_env:
        raise ConfigError(key, "host headers are set both in HARVESTER_HOST_HEADERS and in a file")
    try:
        found = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeError) as e:
        why = getattr(e, "strerror", None) or type(e).__name__
        raise ConfigError(key, f"{path}: cannot read ({why})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(key, f"{path}: invalid JSON at line {e.lineno} column {e.colno}: "
                          f"{e.msg}") from None
    if not isinstance(found, dict) or not all(isinstance(h, dict) for h in found.values()):
        raise ConfigError(key, f"{path}: must be a JSON object of objects, by host")
    merged = {host: dict(headers) for host, headers in (values.get("host_headers") or {}).items()}
    for host, headers in found.items():
        merged.setdefault(host, {}).update(headers)
    values["host_headers"] = merged


def load_settings(config_path: str | os.PathLike[str] | None = None,
                  env: Mapping[str, str] | None = None,
                  **overrides: Any) -> Settings:
    """File, then environment, then explicit overrides (flags); ConfigError on anything bad."""
    values: dict[str, Any] = {}
    source = str(config_path) if config_path else "settings"
    if config_path:
        try:
            raw = json.loads(Path(config_path).read_text())
        except OSError as e:
            raise ConfigError(source, f"cannot read: {e.strerror or e}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(source, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        if not isinstance(raw, Mapping):
            raise ConfigError(source, "top level must be a JSON object")
        values.update(_from_file(raw, source))
    values.update(_from_env(os.environ if env is None else env))
    values.update({k: v for k, v in overrides.items() if v is not None})
    _merge_host_headers_file(values, env is not None and "HARVESTER_HOST_HEADERS" in env
                             or env is None and "HARVESTER_HOST_HEADERS" in os.environ)
    try:
        return _read_secrets(Settings(**values))
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(source, f"{where}: {msg}" if where else msg) from None
