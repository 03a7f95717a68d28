"""robots.txt decisions (RFC 9309), parsed with protego; no I/O."""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from functools import lru_cache

from protego import Protego

ALLOW_ALL = "allow"
DISALLOW_ALL = "disallow"

# Why a visit was not fetched (the reasons recorded for blocked visits).
BLOCKED = "blocked by robots.txt"
UNREACHABLE = "robots.txt unreachable"  # RFC 9309: unreachable means disallow
REFUSALS = (BLOCKED, UNREACHABLE)


@dataclass(frozen=True, slots=True)
class RobotsRules:
    """What a host's robots.txt says for our user agent."""
    policy: str          # "parsed", ALLOW_ALL or DISALLOW_ALL
    body: str = ""

    def allowed(self, url: str, agent: str) -> bool:
        if self.policy == ALLOW_ALL:
            return True
        if self.policy == DISALLOW_ALL:
            return False
        return bool(_parse(self.body).can_fetch(url, agent))

    def crawl_delay(self, agent: str) -> float | None:
        if self.policy != "parsed":
            return None
        delay = _parse(self.body).crawl_delay(agent)
        return float(delay) if delay is not None else None

    def sitemaps(self) -> list[str]:
        return list(_parse(self.body).sitemaps) if self.policy == "parsed" else []


@lru_cache(maxsize=4096)
def _parse(body: str) -> Protego:
    return Protego.parse(body)


def rules_for(status: int | None, body: str | None) -> RobotsRules:
    """RFC 9309 2.3.1: 2xx is parsed; 4xx ("unavailable") allows everything; 5xx and no
    answer ("unreachable") disallow everything until it can be read."""
    if status is None or status >= 500:
        return RobotsRules(DISALLOW_ALL)
    if status >= 400:
        return RobotsRules(ALLOW_ALL)
    if 200 <= status < 300:
        return RobotsRules("parsed", body or "")
    return RobotsRules(ALLOW_ALL)  # a 3xx left after following redirects: treat as unavailable


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
