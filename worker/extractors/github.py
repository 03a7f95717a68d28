"""The ``github`` source's extractor: a GitHub REST answer (JSON) turned into the crawl graph
the way the HTML extractor turns a page into links. Users -> their repositories -> their
contributors -> their repositories ...; each list's next page (``Link: rel="next"``) is a
``link`` yield with ``"rel": "next"``, a 0-weight edge (``shared.db.visits``: the page stays
on its list's level). The URLs to follow are the ones GitHub gives (the JSON's ``repos_url``,
``contributors_url``; the ``Link`` header's), only ``per_page`` added, canonicalised.

What each kind of answer yields (the path after the base URL's own path, so that a GitHub
Enterprise base such as ``https://ghe.example.com/api/v3`` works the same):

- ``/users``, ``/search/users`` (its ``items``): an item ``{"_type": "user", **user}`` each;
- ``/users/{login}``: an item ``{"_type": "profile", **user}`` and a link to its repositories;
- ``/users/{login}/repos``, ``/user/{id}/repos``: an item ``{"_type": "repo", "id",
  "full_name", "fork"}`` and a link to its contributors, each (forks too);
- ``/repos/{o}/{r}/contributors``, ``/repositories/{id}/contributors``: an item
  ``{"_type": "contributor", "login", "id", "contributions", "repo"}`` and a link to their
  repositories, for each with a login (anonymous contributors have none: skipped); an empty
  repository's 204 yields nothing.

``read`` is pure (no I/O); ``GitHubLinks`` is the source's extractor around it. Its ``links``
stay empty: a github job follows its yields only (follow mode ``rules``). It is not in
``EXTRACTORS``: the ``github`` source builds it.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from shared.config import Settings
from shared.model import Extraction, FetchedPage, Yield
from shared.urls import canonicalize
from worker.extractors import ExtractFailed

_LINK_RE = re.compile(r'<([^>]*)>\s*((?:;\s*[^;,]+)*)')
_REL_RE = re.compile(r'rel\s*=\s*"?([^";]+)"?')

_USER_RE = re.compile(r"/users/[^/]+")
_REPOS_RE = re.compile(r"/users/[^/]+/repos|/user/\d+/repos")
_CONTRIBUTORS_RE = re.compile(r"/repos/[^/]+/[^/]+/contributors|/repositories/\d+/contributors")


def is_json(mime: str | None) -> bool:
    """``application/json`` and its kin (``application/vnd.github+json``)."""
    return mime is not None and (mime == "application/json" or mime.endswith("+json"))


def parse_link(header: str | None) -> dict[str, str]:
    """A ``Link`` header's URLs by relation (``next``, ``last``, ``first``, ``prev``); the
    first URL of a relation wins."""
    out: dict[str, str] = {}
    if not header:
        return out
    for m in _LINK_RE.finditer(header):
        url, params = m.group(1).strip(), m.group(2)
        for p in params.split(";"):
            rel = _REL_RE.fullmatch(p.strip())
            if rel is None:
                continue
            for name in rel.group(1).split():
                out.setdefault(name.lower(), url)
    return out


def with_per_page(url: str, n: int) -> str:
    """``url`` with ``per_page=n`` unless it has a ``per_page`` already; any URL template part
    (``{/other_user}``) dropped."""
    url = url.split("{", 1)[0]
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k == "per_page" for k, _ in query):
        return url
    query.append(("per_page", str(n)))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _canonical(url: Any) -> str | None:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return None
    try:
        return canonicalize(url)
    except ValueError:
        return None


def api_path(url: str, base: str) -> str | None:
    """The path of ``url`` after the path of ``base`` (``/users/x`` of
    ``https://ghe/api/v3/users/x/`` under ``https://ghe/api/v3``), no trailing ``/``; None if
    ``url`` is not under ``base`` (another scheme, host or path). The one reading of "under
    ``githubBaseUrl``": the fetcher's (which refuses the rest) and the extractor's."""
    try:
        parts, root = urlsplit(url), urlsplit(base)
    except ValueError:
        return None
    if (parts.scheme.lower() != root.scheme.lower()
            or parts.netloc.lower() != root.netloc.lower()):
        return None
    path = parts.path.rstrip("/") or "/"
    prefix = root.path.rstrip("/")
    if not prefix:
        return path
    if path != prefix and not path.startswith(prefix + "/"):
        return None
    return path[len(prefix):] or "/"


def _link(url: Any, per_page: int) -> Yield | None:
    canonical = _canonical(url.split("{", 1)[0] if isinstance(url, str) else url)
    if canonical is None:
        return None
    return Yield("link", {"url": canonicalize(with_per_page(canonical, per_page))})


def _objects(data: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise ExtractFailed(f"{what}: a JSON array of objects expected")
    return data


def read(url: str, base: str, body: bytes | None, link: str | None,
         per_page: int) -> Extraction:
    """What the answer of ``url`` (its body; its ``Link`` header) yields; see the module.
    A body that is not JSON, or not the shape its path says, raises ``ExtractFailed``."""
    path = api_path(url, base) or (urlsplit(url).path.rstrip("/") or "/")
    if not body or not body.strip():  # a 204 (an empty repository): nothing
        return Extraction()
    try:
        data = json.loads(body)
    except (ValueError, UnicodeError) as e:
        raise ExtractFailed(f"not JSON: {e}") from None
    out: list[Yield] = []
    if path in ("/users", "/search/users"):
        if path == "/search/users":
            if not isinstance(data, dict):
                raise ExtractFailed("search: a JSON object expected")
            data = data.get("items")
        for u in _objects(data, "users"):
            out.append(Yield("item", {"_type": "user", **u}))
    elif _REPOS_RE.fullmatch(path):
        for r in _objects(data, "repositories"):
            out.append(Yield("item", {"_type": "repo", "id": r.get("id"),
                                      "full_name": r.get("full_name"),
                                      "fork": r.get("fork")}))
            y = _link(r.get("contributors_url"), per_page)
            if y is not None:
                out.append(y)
    elif _CONTRIBUTORS_RE.fullmatch(path):
        repo = path.split("/")[2] if path.startswith("/repositories/") else \
            "/".join(path.split("/")[2:4])
        for c in _objects(data, "contributors"):
            login = c.get("login")
            if not isinstance(login, str):  # anonymous: no account to follow
                continue
            out.append(Yield("item", {"_type": "contributor", "login": login,
                                      "id": c.get("id"), "contributions": c.get("contributions"),
                                      "repo": repo}))
            y = _link(c.get("repos_url"), per_page)
            if y is not None:
                out.append(y)
    elif _USER_RE.fullmatch(path):
        if not isinstance(data, dict):
            raise ExtractFailed("user: a JSON object expected")
        out.append(Yield("item", {"_type": "profile", **data}))
        y = _link(data.get("repos_url"), per_page)
        if y is not None:
            out.append(y)
    else:
        raise ExtractFailed(f"no GitHub answer known at {path}")
    nxt = _canonical(parse_link(link).get("next"))
    if nxt is not None:
        out.append(Yield("link", {"url": nxt, "rel": "next"}))
    return Extraction(yields=tuple(out))


class GitHubLinks:
    """The ``github`` source's extractor: ``read`` on each JSON 2xx answer."""
    name = "github"

    def __init__(self, settings: Settings) -> None:
        self.base = settings.github_base_url
        self.per_page = settings.github_per_page

    def accepts(self, page: FetchedPage) -> bool:
        return page.status is not None and 200 <= page.status < 300 and page.body is not None

    async def extract(self, page: FetchedPage, base_url: str) -> Extraction:
        link = page.headers.get("Link") if page.headers is not None else None
        return read(base_url, self.base, page.body, link, self.per_page)
