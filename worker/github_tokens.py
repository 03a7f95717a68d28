"""GitHub tokens on a worker: where they come from (``load_tokens``: ``githubTokens`` from the
environment, ``githubTokenFiles``), the name they go by everywhere else (``token_id``: a hash,
the token itself is never stored, logged or shown) and a log filter that blanks them out
(``Redact``, from ``shared.secrets``, re-exported here) should one ever reach a log line or an
error."""

from __future__ import annotations

import hashlib

from shared.config import GITHUB_TOKEN, Settings
from shared.errors import ConfigError
from shared.secrets import Redact

__all__ = ["ANONYMOUS", "Redact", "load_tokens", "token_id"]

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
