"""Ids of an id crawl (job spec ``ids``): an id's URL is its dedupe key.

``id_url(urlFormat, id)`` puts the id, percent-encoded, in place of the format's ``{}`` and
makes the result canonical. It is injective (distinct ids give distinct URLs) when the ``{}`` is
in the format's path or query, which the job spec requires (in the host, case is lost: ``Ab``
and ``ab`` would share a URL; a fragment is dropped), and ``check_id`` refuses the ids it could
not tell apart, ``.`` and ``..``, which a path would resolve away. So "each id once per job" is
"each URL once per job". ``id_of`` inverts it, for ``{id}`` names.
"""

from __future__ import annotations

from urllib.parse import quote, unquote, unquote_plus

from shared.urls import canonicalize

MAX_ID_CHARS = 512
_MARK = "HaRvEsTeRiD0"  # an id that encodes as itself and is unlikely in a format


def check_id(s: str) -> str | None:
    """The problem with an id, or None when it is usable: non-empty, at most 512 characters,
    no NUL, CR or LF, not ``.`` or ``..``."""
    if not s:
        return "empty id"
    if len(s) > MAX_ID_CHARS:
        return f"id longer than {MAX_ID_CHARS} characters"
    if "\0" in s or "\n" in s or "\r" in s:
        return "id holds a NUL or line break"
    if s in (".", ".."):
        return f"id {s!r} is not allowed"
    return None


def id_url(fmt: str, ident: str) -> str:
    """The canonical URL of ``ident`` under ``fmt`` (one ``{}``); ValueError if unparseable."""
    return canonicalize(fmt.replace("{}", quote(ident, safe="")))


def id_of(fmt: str, url: str) -> str | None:
    """The id whose ``id_url(fmt, id)`` is ``url`` (a canonical URL), or None."""
    try:
        marked = id_url(fmt, _MARK)
    except ValueError:
        return None
    head, sep, tail = marked.partition(_MARK)
    if not sep or not url.startswith(head) or not url.endswith(tail) \
            or len(url) < len(head) + len(tail):
        return None
    middle = url[len(head):len(url) - len(tail)]
    for candidate in dict.fromkeys((unquote(middle), unquote_plus(middle))):
        if check_id(candidate) is None:
            try:
                if id_url(fmt, candidate) == url:
                    return candidate
            except ValueError:
                continue
    return None
