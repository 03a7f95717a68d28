"""robots.txt decisions (RFC 9309), parsed with protego; no I/O."""

from __future__ import annotations

import codecs
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from protego import Protego

ALLOW_ALL = "allow"
DISALLOW_ALL = "disallow"

# Why a visit was not fetched (the reasons recorded for blocked visits).
BLOCKED = "blocked by robots.txt"
UNREACHABLE = "robots.txt unreachable"  # RFC 9309: unreachable means disallow
REFUSALS = (BLOCKED, UNREACHABLE)

# Every other refusal (issue 17) starts with this: the SSRF guard's address kinds, each
# optionally followed by " (redirect to <url>)", crawler traps, credentials in a URL. In SQL:
# shared.db.progress.REFUSAL_SQL (where a prefixed reason counts only with no HTTP status).
BLOCKED_PREFIX = "blocked: "
BLOCKED_LOOPBACK = BLOCKED_PREFIX + "loopback address"
BLOCKED_PRIVATE = BLOCKED_PREFIX + "private address"
BLOCKED_LINK_LOCAL = BLOCKED_PREFIX + "link-local address"
BLOCKED_METADATA = BLOCKED_PREFIX + "cloud metadata address"
BLOCKED_MULTICAST = BLOCKED_PREFIX + "multicast address"
BLOCKED_UNSPECIFIED = BLOCKED_PREFIX + "unspecified address"
BLOCKED_RESERVED = BLOCKED_PREFIX + "reserved address"
BLOCKED_DENIED = BLOCKED_PREFIX + "denied network"
BLOCKED_SERVICE = BLOCKED_PREFIX + "a Harvester service port"
BLOCKED_CREDENTIALS = BLOCKED_PREFIX + "credentials in URL"
TRAP = BLOCKED_PREFIX + "crawler trap"  # + " (URL longer than <n> characters)" and so on


def is_refusal(reason: str | None) -> bool:
    """Whether ``reason`` says a visit was refused (robots.txt, the guard, a trap), not failed."""
    return reason is not None and (reason in REFUSALS or reason.startswith(BLOCKED_PREFIX))


def blocked_kind(reason: str) -> str:
    """A refusal's kind, the bounded label of ``harvester_blocked``: the reason without
    ``blocked: `` and without its detail (``" (redirect to <url>)"``, a trap's limit)."""
    return reason.removeprefix(BLOCKED_PREFIX).split(" (", 1)[0]


def redirected(reason: str, url: str) -> str:
    """A refusal met on a redirect hop: ``<reason> (redirect to <url>)``."""
    return f"{reason} (redirect to {url})"


@dataclass(frozen=True, slots=True, eq=False)
class RobotsRules:
    """What a host's robots.txt says for our user agent."""
    policy: str                    # "parsed", ALLOW_ALL or DISALLOW_ALL
    parsed: Protego | None = None  # the parsed body, for "parsed"
    size: int = 0                  # characters of the body parsed (a rough cost of matching)

    def allowed(self, url: str, agent: str) -> bool:
        if self.parsed is None:
            return self.policy != DISALLOW_ALL
        return bool(self.parsed.can_fetch(url, agent))

    def crawl_delay(self, agent: str) -> float | None:
        delay = self.parsed.crawl_delay(agent) if self.parsed is not None else None
        return float(delay) if delay is not None else None

    def sitemaps(self) -> list[str]:
        return list(self.parsed.sitemaps) if self.parsed is not None else []


def rules_for(status: int | None, body: str | None) -> RobotsRules:
    """RFC 9309 2.3.1: 2xx is parsed; 4xx ("unavailable") allows everything; 5xx and no
    answer ("unreachable") disallow everything until it can be read. Parsing takes about
    0.4 µs a character: run a big body off the event loop."""
    if status is None or status >= 500:
        return RobotsRules(DISALLOW_ALL)
    if status >= 400:
        return RobotsRules(ALLOW_ALL)
    if 200 <= status < 300:
        return RobotsRules("parsed", Protego.parse(body or ""), len(body or ""))
    return RobotsRules(ALLOW_ALL)  # a 3xx left after following redirects: treat as unavailable


class RobotsCache:
    """Parsed robots.txt copies by host, each with the copy it was parsed from (``fetched_on``):
    a least-recently-used cache bounded by its number of entries and by the characters of the
    bodies parsed, so a worker keeps about ``max_chars`` of rules at most, whatever it crawls."""

    def __init__(self, max_entries: int = 1024, max_chars: int = 32 << 20) -> None:
        self.max_entries, self.max_chars = max_entries, max_chars
        self._entries: OrderedDict[str, tuple[datetime, RobotsRules]] = OrderedDict()
        self.chars = 0

    def known(self, hosts: Iterable[str]) -> dict[str, tuple[datetime, RobotsRules]]:
        """The copies kept for these hosts, as (fetched_on, rules): the rules stay usable
        whatever is evicted meanwhile."""
        out = {h: e for h in hosts if (e := self._entries.get(h)) is not None}
        for h in out:
            self._entries.move_to_end(h)
        return out

    def put(self, host: str, fetched_on: datetime, rules: RobotsRules) -> None:
        old = self._entries.pop(host, None)
        if old is not None:
            self.chars -= old[1].size
        self._entries[host] = (fetched_on, rules)
        self.chars += rules.size
        while len(self._entries) > 1 and (len(self._entries) > self.max_entries
                                          or self.chars > self.max_chars):
            _, (_, evicted) = self._entries.popitem(last=False)
            self.chars -= evicted.size

    def __len__(self) -> int:
        return len(self._entries)


# Byte order marks, longest first (UTF-32's LE mark starts with UTF-16's).
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
         (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
         (codecs.BOM_UTF16_BE, "utf-16-be"))


def decode(body: bytes, charset: str | None) -> str:
    """A robots.txt as text: a byte order mark decides its encoding, else the declared charset,
    else (RFC 9309) UTF-8; undecodable bytes become U+FFFD and NULs are dropped (what is left
    of a UTF-16 file without a mark is its ASCII text)."""
    encoding = charset or "utf-8"
    for bom, name in _BOMS:
        if body.startswith(bom):
            body, encoding = body[len(bom):], name
            break
    try:
        text = body.decode(encoding, errors="replace")
    except LookupError:  # a charset Python does not know
        text = body.decode("utf-8", errors="replace")
    return text.replace("\x00", "")


def agent_token(user_agent: str) -> str:
    """The product token robots.txt groups are matched against ("Harvester/0.1 (+url)" ->
    "Harvester")."""
    return user_agent.split("/", 1)[0].split()[0] if user_agent.strip() else "*"
