"""Pure types shared by the worker (which makes them) and the store (which records them): no I/O."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy

MASK = "***"  # what a secret (a token, a cookie) reads as in what is kept or logged


@dataclass(frozen=True, slots=True)
class RawResponse:
    """An answer as received, for an output that must be faithful to it (a WARC record):
    the status line, the headers in their order and case, the body before its
    Content-Encoding was undone (aiohttp has removed any chunking), and the request headers
    as sent."""
    status_line: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes = field(repr=False)
    request_headers: tuple[tuple[str, str], ...] = ()


def mask_request_headers(raw: RawResponse,
                         mask: Callable[[str, str], str | None]) -> RawResponse:
    """``raw`` with its request headers' secrets masked before an output (a WARC record) keeps
    them: each header for which ``mask(name, value)`` gives a value reads as that value
    (``MASK``, ``Bearer ***``); None keeps it as sent."""
    sent = tuple((k, v if (m := mask(k, v)) is None else m) for k, v in raw.request_headers)
    return replace(raw, request_headers=sent)


YieldKind = Literal["item", "id", "link", "body"]


@dataclass(frozen=True, slots=True)
class Yield:
    """Something a page yields besides its links: an item (named fields), an id, a link a
    follow rule found, a reference to a saved body. ``value`` is JSON-able."""
    kind: YieldKind
    value: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Extraction:
    """What a page yields under a job's rule set (``ruleset``, 0: links only, see
    ``shared.jobspec.JobSpec.ruleset``): its links (canonical URL, guessed MIME type; sorted by
    URL) and the other yields, in document order."""
    links: tuple[tuple[str, str], ...] = ()
    yields: tuple[Yield, ...] = ()
    ruleset: int = 0


@dataclass(frozen=True, slots=True)
class FetchedPage:
    """One fetch's outcome (what it yields is an ``Extraction``). Whether it is worth another
    try is for ``worker.retry.RetryPolicy`` to say."""
    url_id: int
    status: int | None
    mime: str | None            # None: no response, keep the stored (guessed) type
    error: str | None
    cacheable: bool             # may later jobs answer this URL from the store?
    final_url: str | None = None
    redirects: tuple[str, ...] = ()
    retry_after: float | None = None  # the server's Retry-After (429, 503), in seconds
    etag: str | None = None
    last_modified: str | None = None
    not_modified: bool = False        # 304: the stored copy (type, links) is still current
    permanent: bool = False           # a failure no later try can mend (too big, bad URL ...)
    # The body the fetcher kept (decoded; the source said which to keep) for the job's
    # extractors, and its charset.
    body: bytes | None = field(default=None, repr=False, compare=False)
    charset: str | None = None
    # The final answer's headers (aiohttp's, by reference, not copied); None: no answer.
    headers: CIMultiDictProxy[str] | None = field(default=None, repr=False, compare=False)
    raw: RawResponse | None = field(default=None, repr=False, compare=False)  # when asked for
    # The fetcher kind that made this answer (a cached answer must match the job's); last, so
    # positional construction elsewhere is unaffected.
    fetcher: str = "http"
    # False: no request was sent (the github fetcher had no token free, or its store was
    # down): not a fetch, neither in the worker's stats nor in its health window.
    sent: bool = True

    @property
    def failed(self) -> bool:
        return self.error is not None or (self.status is not None and self.status >= 400)
