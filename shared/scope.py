"""Which links a job follows: its scope (any host, the job URL's host, or its domain), allow
and deny regexes (RE2 syntax, ``shared.patterns``, searched anywhere in the canonical URL).
Pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from shared import patterns

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
        if self.allow and not any(_allows(p, url) for p in self.allow):
            return False
        return not any(_denies(p, url) for p in self.deny)


def denied(deny: tuple[str, ...], url: str) -> bool:
    """Does a deny pattern (searched anywhere in the canonical URL, as ``Scope.follows``) match
    ``url``? For the visits of a job whose deny list changed after they were queued."""
    return any(_denies(p, url) for p in deny)


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _allows(pattern: str, url: str) -> bool:
    rx = patterns.stored(pattern)  # None: a stored pattern RE2 refuses, which allows nothing
    return rx is not None and rx.search(url) is not None


def _denies(pattern: str, url: str) -> bool:
    rx = patterns.stored(pattern)  # None: a stored pattern RE2 refuses, which denies all
    return rx is None or rx.search(url) is not None


def check_pattern(pattern: str) -> str | None:
    """The error in a user's regex, or None (``shared.patterns.problem``)."""
    return patterns.problem(pattern)
