"""GitHub tokens on a worker: where they come from (``load_tokens``: ``githubTokens`` from the
environment, ``githubTokenFiles``), the name they go by everywhere else (``token_id``: a hash,
the token itself is never stored, logged or shown) and a log filter that blanks them out
(``Redact``) should one ever reach a log line or an error."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable

from shared.config import GITHUB_TOKEN, Settings
from shared.errors import ConfigError
from shared.model import MASK

ANONYMOUS = "anonymous"  # the id of "no token": requests without Authorization


def token_id(token: str) -> str:
    """The name a token goes by in the store, logs and answers: ``t-`` and 12 hex digits of
    its SHA-256 (one-way; the same token always has the same id)."""
    return "t-" + hashlib.sha256(token.encode()).hexdigest()[:12]


def load_tokens(settings: Settings) -> tuple[str, ...]:
    """The worker's tokens: ``githubTokens`` (environment only) then each file of
    ``githubTokenFiles`` (one token a line; blank lines and ``#`` comments skipped), without
    duplicates, in that order. A malformed line is a ``ConfigError`` naming the file and line,
    never the value."""
    found: list[str] = list(settings.github_tokens)
    for path in settings.github_token_files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeError) as e:
            raise ConfigError("githubTokenFiles", f"{path}: {type(e).__name__}") from None
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if not GITHUB_TOKEN.fullmatch(line):
                raise ConfigError("githubTokenFiles", f"{path} line {n} is malformed")
            found.append(line)
    return tuple(dict.fromkeys(found))


class Redact(logging.Filter):
    """A handler filter: every token in a record's message, arguments or traceback becomes
    ``***`` (the message is formatted here, its arguments dropped). Installed on the root
    logger's handlers while a GitHub fetcher runs (``install``)."""

    def __init__(self, tokens: Iterable[str]) -> None:
        super().__init__()
        # Longest first, so that a token containing another is masked whole.
        self.tokens = tuple(sorted({t for t in tokens if t}, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        for t in self.tokens:
            if t in text:
                text = text.replace(t, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.tokens:
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
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
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
