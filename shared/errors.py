"""Harvester's one error hierarchy.

Errors carry fields, not pre-formatted transport messages. They are translated to a transport
in exactly two places:

* ``web_server.middleware`` maps :class:`ClientError` subclasses to an HTTP status and a
  ``{"code", "message"}`` body, and :class:`DependencyUnavailable` to 503;
* ``shared.bus.consume`` maps processing outcomes to ack / nak / term.

``ConfigError`` is reported by every ``__main__`` as one line on stderr and exit status 2;
``StartupError`` (a resource a tier cannot have, such as its port) as one line and status 1.
"""

from __future__ import annotations

from collections.abc import Mapping


class HarvesterError(Exception):
    """Base of every error Harvester raises on purpose."""


class ConfigError(HarvesterError):
    """A configuration file or override is unreadable or invalid."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


class StartupError(HarvesterError):
    """A tier cannot start: its port is taken, its address does not resolve."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class ClientError(HarvesterError):
    """The request is wrong; the client must change it. Never retried."""

    status = 400
    code = "BadRequest"

    def __init__(self, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: Mapping[str, str] = dict(headers or {})  # sent with the answer


class BadRequest(ClientError):
    status = 400
    code = "BadRequest"


class InvalidURL(BadRequest):
    """A job line that is not an absolute http(s) URL with a host."""

    def __init__(self, line: str) -> None:
        super().__init__(f"Invalid URL: {line}")
        self.line = line


class Unauthorized(ClientError):
    """No bearer token, or not a valid one (``invalid_token``: one was sent)."""

    status = 401
    code = "Unauthorized"

    def __init__(self, message: str = "A valid bearer token is required",
                 invalid_token: bool = False) -> None:
        challenge = 'Bearer realm="harvester"'
        if invalid_token:
            challenge += ', error="invalid_token"'
        super().__init__(message, {"WWW-Authenticate": challenge})


class Forbidden(ClientError):
    """A valid token without the right: an admin route."""

    status = 403
    code = "Forbidden"

    def __init__(self, message: str = "An admin token is required") -> None:
        super().__init__(message)


class RequestTimeout(ClientError):
    """The request body did not arrive within ``httpBodyTimeout``."""

    status = 408
    code = "RequestTimeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"Request body not received within {seconds:g}s")
        self.seconds = seconds


class NotFound(ClientError):
    status = 404
    code = "NotFound"


class JobStateConflict(ClientError):
    """The job's state does not allow the change (pausing a cancelled or completed job)."""

    status = 409
    code = "Conflict"


class PayloadTooLarge(ClientError):
    status = 413
    code = "PayloadTooLarge"


class DependencyUnavailable(HarvesterError):
    """PostgreSQL or NATS cannot be reached right now; the caller may retry later."""

    def __init__(self, dependency: str, detail: str = "") -> None:
        super().__init__(f"{dependency} unavailable{': ' + detail if detail else ''}")
        self.dependency = dependency
        self.detail = detail
