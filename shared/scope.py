"""Which links a job follows: its scope (any host, the job URL's host, or its domain), allow
and deny regexes (Python syntax, searched anywhere in the canonical URL). Pure, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

SCOPES = ("any", "host", "domain")


@dataclass(frozen=True, slots=True)
class Scope:
    kind: str = "any"
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    @property
    def unlimited(self) -> bool:
        return self.kind == "any" and not self.allow and not self.deny

    def follows(self, url: str, origin: str) -> bool:
        """May a job whose job URL is ``origin`` follow a link to ``url``?"""
        if self.kind != "any":
            host, home = _host(url), _host(origin)
            if self.kind == "host" and host != home:
                return False
            if self.kind == "domain":
                domain = home.removeprefix("www.")
                if host != domain and not host.endswith("." + domain):
                    return False
        if self.allow and not any(_rx(p).search(url) for p in self.allow):
            return False
        return not any(_rx(p).search(url) for p in self.deny)


def denied(deny: tuple[str, ...], url: str) -> bool:
    """Does a deny pattern (searched anywhere in the canonical URL, as ``Scope.follows``) match
    ``url``? For the visits of a job whose deny list changed after they were queued."""
    return any(_rx(p).search(url) for p in deny)


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


@lru_cache(maxsize=1024)
def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def check_pattern(pattern: str) -> str | None:
    """The error in a user's regex, or None. A NUL or another control character is refused
    too: PostgreSQL stores no NUL in text or jsonb, and the others only serve to break logs."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in pattern):
        return "control characters are not allowed"
    try:
        re.compile(pattern)
    except re.error as e:
        return str(e)
    return None
