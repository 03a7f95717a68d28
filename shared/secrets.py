"""Secrets out of logs: the values a tier must never write (``secrets_of``), a log filter that
blanks them out of every record (``Redact``: message, arguments, traceback) and the
credentials of any URL in a line (``redact_url``), installed on the root log handlers of every
tier by ``shared.service.main`` (``install``).

What counts as a secret: the PostgreSQL password (``databasePasswordFile``,
``HARVESTER_DATABASE_PASSWORD[_FILE]`` or the one written in ``databaseURL``), the NATS
password and token (and any written in ``natsURL``), the raw API tokens
(``HARVESTER_AUTH_TOKENS``, ``authTokenFiles``), the GitHub tokens (``githubTokens``,
``githubTokenFiles``), the webhook secret and every ``hostHeaders`` value. Values shorter than
``MIN_CHARS`` are left alone (masking them would blank ordinary words all over the log), and
so is the public default password of the example configs (``harvester``).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

from shared.config import GITHUB_TOKEN, SECRETS, Settings
from shared.model import MASK

MIN_CHARS = 6  # a shorter value is not masked: it would blank ordinary words
# The password of the example configs (compose, the default databaseURL): public, and masking
# it would blank the project's own name in every line.
PUBLIC = frozenset({"harvester"})

# scheme://userinfo@ : the userinfo runs to the last "@" before the path, query or fragment.
# Both parts bounded, so that a long line costs linear time whatever it holds.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]{0,31}://)[^/?#\s\"'<>]{0,1024}@")


def redact_url(url: str) -> str:
    """``url`` (or any text) with the userinfo of every URL in it replaced by ``***``:
    ``nats://u:p@h:4222`` -> ``nats://***@h:4222``. Text without one is returned as it is."""
    if "@" not in url:
        return url
    return _USERINFO.sub(lambda m: m.group(1) + MASK + "@", url)


def _url_secrets(url: str) -> Iterator[str]:
    """The password of a URL (or its user, when that is all there is: a NATS token), as
    written and percent-decoded."""
    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except ValueError:
        return
    for value in (password, user if password is None else None):
        if value:
            yield value
            yield unquote(value)


def _file_words(paths: Iterable[Path], column: int) -> Iterator[str]:
    """The ``column``-th word of each non-comment line of token files, read leniently (the tier
    that uses them reports a bad file; here an unreadable one simply adds nothing)."""
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeError, ValueError):
            continue
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) > column:
                yield words[column]


def secrets_of(settings: Settings, env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Every secret value the settings (and the environment, ``env``, default
    ``os.environ``: the raw API tokens are hashed at load) hold or name (see the module's
    docstring), longest first, without duplicates, those shorter than ``MIN_CHARS`` or public
    left out."""
    env = os.environ if env is None else env
    found: list[str] = []
    found += _url_secrets(settings.database_url)
    found += _url_secrets(settings.database_read_url or "")
    for url in settings.nats_url.split(","):  # a cluster's nodes, each with its credentials
        found += _url_secrets(url.strip())
    found += (getattr(settings, field) for _, field in SECRETS)
    found += settings.github_tokens
    found += (w for w in _file_words(settings.github_token_files, 0) if GITHUB_TOKEN.fullmatch(w))
    found.append(settings.webhook_secret)
    found += (v for headers in settings.host_headers.values() for v in headers.values())
    # API tokens: "name:token[:admin],..." in the environment, "name token [admin]" lines in
    # files; their names are not secrets.
    found += (e.split(":")[1] for e in env.get("HARVESTER_AUTH_TOKENS", "").split(",")
              if e.count(":") in (1, 2))
    found += _file_words(settings.auth_token_files, 1)
    return tuple(sorted({s.strip() for s in found
                         if len(s.strip()) >= MIN_CHARS and s.strip() not in PUBLIC},
                        key=lambda s: (-len(s), s)))


class Redact(logging.Filter):
    """A handler filter: every secret in a record's message, arguments or traceback becomes
    ``***``, and so does the userinfo of every URL in them (``redact_url``); the message is
    formatted here, its arguments dropped. ``install`` puts it on the root logger's handlers."""

    def __init__(self, tokens: Iterable[str], urls: bool = False) -> None:
        super().__init__()
        # Longest first, so that a token containing another is masked whole.
        self.tokens = tuple(sorted({t for t in tokens if t}, key=len, reverse=True))
        self.urls = urls

    def scrub(self, text: str) -> str:
        for t in self.tokens:
            if t in text:
                text = text.replace(t, MASK)
        return redact_url(text) if self.urls else text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.tokens and not self.urls:
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format: keep what there is, scrubbed
            message = f"{record.msg} {record.args}"
        record.msg, record.args = self.scrub(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        # The traceback is kept as that scrubbed text only: a formatter that formats exc_info
        # itself (the JSON one) would write the secrets again.
        record.exc_info = None
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        url = getattr(record, "url", None)  # the JSON format's "url" field
        if isinstance(url, str):
            record.url = self.scrub(url)
        return True

    def install(self) -> None:
        """Add this filter to each handler of the root logger (and to the root logger itself,
        for records logged on it directly)."""
        root = logging.getLogger()
        root.addFilter(self)
        for handler in root.handlers:
            handler.addFilter(self)

    def uninstall(self) -> None:
        root = logging.getLogger()
        root.removeFilter(self)
        for handler in root.handlers:
            handler.removeFilter(self)


def install(settings: Settings, env: Mapping[str, str] | None = None) -> Redact:
    """Blank every secret of ``settings`` and every URL's credentials out of the root log
    handlers and out of the traceback Python prints for an uncaught exception (every tier, at
    start: ``shared.service.main``); the filter, to uninstall."""
    redact = Redact(secrets_of(settings, env), urls=True)
    redact.install()

    def excepthook(kind: type[BaseException], value: BaseException,
                   tb: TracebackType | None) -> None:
        sys.stderr.write(redact.scrub("".join(traceback.format_exception(kind, value, tb))))

    sys.excepthook = excepthook
    return redact
