"""The newline-body job API, pinned byte for byte: what ``POST /`` answers and stores today.

Issue 10 adds a JSON job spec (``POST /`` with ``Content-Type: application/json``) and promises
that "the newline body and query parameters of the original keep working byte for byte and map
onto the same model". Mapping two front ends onto one pydantic model is exactly the change that
can alter, unnoticed, an error's wording, which of two bad parameters is reported, how a query
string is decoded, or what a job row holds. Every literal below was captured by running the
server as it was before issue 10 (commit fa1c540) and pasting its answer: status, Content-Type
and the exact response bytes for bad requests; the ``job`` and ``job_url`` rows and the exact
``/status`` bytes (``elapsed`` masked) for good ones. They must stay green to the end of issue
10. A literal that has to change is a change of the public API: decide it on purpose, say so in
the issue note and the docs, and never edit one just to make this file pass.

How the requests are made, and why:
- Query strings are sent already encoded (``yarl.URL(..., encoded=True)``), so what is pinned
  includes their decoding: a raw ``+`` is a space (``depth=+3`` -> ``Invalid depth:  3``).
- The Content-Type varies: none, ``text/plain``, and ``application/x-www-form-urlencoded``
  (what ``curl -d``/``--data-binary`` sends by default). Only ``application/json`` may select
  the new spec; every other request must keep being read as the newline body.
- The limits are the defaults (``maxRequestBytes`` 1 MiB, ``maxJobURLs`` 10,000), and bodies
  too large are sent both with a Content-Length and chunked (without one).
- The stack runs the web server only (no foreman, no worker): nothing publishes or fetches the
  jobs' URLs (no traffic leaves 127.0.0.1), so the counters stay as the POST wrote them and
  every value is deterministic without waiting. Each test has a fresh database: job ids are 1..4.
- The regex errors quote Python 3.11's ``re`` messages (the project's Python).
- The ``job`` row is read by named columns: issue 10 may add columns (the stored spec),
  but these keep their values. ``job_url`` rows have no order of their own; they are
  compared by URL, the order ``/status`` lists them in.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from yarl import URL

from shared.config import Settings
from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e

FORM = "application/x-www-form-urlencoded"
TEXT = "text/plain"
X = "http://x.example/\n"
TOO_LARGE = b"http://x.example/" + b"a" * (1 << 20)  # 1 MiB + 17 bytes


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Stack]:
    st = await Stack(settings).start(foremen=0, workers=0)
    yield st
    await st.stop()


async def _chunked(data: bytes) -> AsyncIterator[bytes]:
    """A body sent with ``Transfer-Encoding: chunked`` (no Content-Length)."""
    for i in range(0, len(data), 65536):
        yield data[i:i + 65536]


async def post(st: Stack, path_qs: str, body: Any, content_type: str | None) -> tuple[int, str, bytes]:
    """POST ``body`` to ``path_qs`` (sent as written); status, Content-Type, body bytes."""
    assert st.http
    headers = {} if content_type is None else {"Content-Type": content_type}
    skip = ["Content-Type"] if content_type is None else []
    async with st.http.post(URL(st.base + path_qs, encoded=True), data=body, headers=headers,
                            skip_auto_headers=skip) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.read()


# (name, path and query as sent, request Content-Type, body, status, response body)
ERRORS: list[tuple[str, str, str | None, Any, int, bytes]] = [
    ("depth negative", "/?depth=-1", FORM, X, 400,
     b'{\n  "code": "BadRequest",\n  "message": "Invalid depth: -1"\n}\n'),
    ("depth above maxDepth", "/?depth=99", TEXT, X, 400,
     b'{\n  "code": "BadRequest",\n  "message": "Invalid depth: 99 (allowed 0 to 10)"\n}\n'),
    ("depth with an underscore", "/?depth=1_0", None, X, 400,
     b'{\n  "code": "BadRequest",\n  "message": "Invalid depth: 1_0"\n}\n'),
    ("depth with a plus, escaped", "/?depth=%2B3", FORM, X, 400,
     b'{\n  "code": "BadRequest",\n  "message": "Invalid depth: +3"\n}\n'),
    ("depth with a plus, raw (a space)", "/?depth=+3", FORM, X, 400,
     b'{\n  "code": "BadRequest",\n  "message": "Invalid depth:  3"\n}\n'),
    ("depth a Unicode digit", "/?depth=%C2%B2", FORM, X, 400,
     b'{\n  "code": "BadRequest",\n  "message": "Invalid depth: \xc2\xb2"\n}\n'),
    ("forceCrawl value", "/?forceCrawl=maybe", FORM, X, 400,
     (b'{\n  "code": "BadRequest",\n'
      b'  "message": "Invalid forceCrawl: maybe (use 1/true or 0/false)"\n}\n')),
    ("sitemaps value", "/?sitemaps=2", TEXT, X, 400,
     (b'{\n  "code": "BadRequest",\n'
      b'  "message": "Invalid sitemaps: 2 (use 1/true or 0/false)"\n}\n')),
    ("maxPages zero", "/?maxPages=0", FORM, X, 400,
     (b'{\n  "code": "BadRequest",\n'
      b'  "message": "Invalid maxPages: 0 (allowed 1 to 2147483647)"\n}\n')),
    ("maxPages not a number", "/?maxPages=x", FORM, X, 400,
     b'{\n  "code": "BadRequest",\n  "message": "Invalid maxPages: x"\n}\n'),
    ("maxPages above int32", "/?maxPages=2147483648", FORM, X, 400,
     (b'{\n  "code": "BadRequest",\n'
      b'  "message": "Invalid maxPages: 2147483648 (allowed 1 to 2147483647)"\n}\n')),
    ("scope unknown", "/?scope=site", FORM, X, 400,
     (b'{\n  "code": "BadRequest",\n'
      b'  "message": "Invalid scope: site (use any, host or domain)"\n}\n')),
    ("allow a bad regex", "/?allow=%28a", FORM, X, 400,
     (b'{\n  "code": "BadRequest",\n  "message": '
      b'"Invalid allow pattern: (a (missing ), unterminated subpattern at position 0)"\n}\n')),
    ("deny a bad regex", "/?scope=host&deny=a%5B", FORM, X, 400,
     (b'{\n  "code": "BadRequest",\n'
      b'  "message": "Invalid deny pattern: a[ (unterminated character set at position 1)"\n}\n')),
    # Parameters are checked in a fixed order (forceCrawl, sitemaps, depth, scope, allow, deny,
    # maxPages), all before the body.
    ("first bad parameter wins", "/?depth=99&maxPages=0&forceCrawl=maybe", FORM, "", 400,
     (b'{\n  "code": "BadRequest",\n'
      b'  "message": "Invalid forceCrawl: maybe (use 1/true or 0/false)"\n}\n')),
    ("empty body", "/", FORM, "", 400,
     b'{\n  "code": "BadRequest",\n  "message": "No URLs provided"\n}\n'),
    ("blank lines only", "/", TEXT, "\n \r\n\t\n", 400,
     b'{\n  "code": "BadRequest",\n  "message": "No URLs provided"\n}\n'),
    ("a bad URL line", "/", FORM, "http://ok.example/\nftp://x.example/\n", 400,
     b'{\n  "code": "BadRequest",\n  "message": "Invalid URL: ftp://x.example/"\n}\n'),
    ("not UTF-8", "/", None, b"http://x.example/\xff\n", 400,
     b'{\n  "code": "BadRequest",\n  "message": "Request body is not UTF-8 text"\n}\n'),
    ("too many URLs", "/", FORM, "".join(f"http://x{i}.example/\n" for i in range(10_001)), 413,
     b'{\n  "code": "PayloadTooLarge",\n  "message": "Too many URLs: 10001 (at most 10000)"\n}\n'),
    # A Content-Length over the limit is refused before any parameter is looked at.
    ("body too large, with a bad depth", "/?depth=99", FORM, TOO_LARGE, 413,
     (b'{\n  "code": "PayloadTooLarge",\n'
      b'  "message": "Request body larger than 1048576 bytes"\n}\n')),
    ("body too large, chunked", "/", FORM, "chunked", 413,
     (b'{\n  "code": "PayloadTooLarge",\n'
      b'  "message": "Request body larger than 1048576 bytes"\n}\n')),
]


async def test_newline_job_errors_are_unchanged(api: Stack, db: asyncpg.Connection) -> None:
    changed = []
    for name, path_qs, content_type, body, status, expected in ERRORS:
        sent = _chunked(TOO_LARGE) if body == "chunked" else body
        got = await post(api, path_qs, sent, content_type)
        if got != (status, "application/json", expected):
            changed.append(f"{name}: {got!r}")
    assert not changed, "the newline job API answers differently:\n" + "\n".join(changed)
    assert await db.fetchval("SELECT count(*) FROM job") == 0, "a rejected request created a job"


JOB_COLUMNS = "max_level, force_crawl, scope, allow, deny, max_pages, sitemaps, visits"
NONE_DONE = {"pending": 1, "processed": 0, "fetched": 0, "cached": 0, "failed": 0, "blocked": 0,
             "completed_on": None}


# The keys issue 10 appends to /status, on purpose (docs/api.md): "spec", then "fetcher" and, as
# no worker runs here, "warnings"; issue 16 appends "state", "rates", "eta" and "hosts" (before "warnings").
WAITS = b"no live worker serves fetcher kind 'http'; the job waits until one starts"

# (name, path and query as sent, request Content-Type, body,
#  job row (JOB_COLUMNS), job_url rows by URL, /status bytes with "elapsed": "*")
VALID: list[tuple[str, str, str | None, str, dict[str, Any], list[dict[str, Any]], bytes]] = [
    ("plain", "/", FORM, "http://a.example/\n",
     {"max_level": 2, "force_crawl": False, "scope": "any", "allow": [], "deny": [],
      "max_pages": None, "sitemaps": False, "visits": None},
     [{"url": "http://a.example/", **NONE_DONE}],
     (b'{\n  "completed": 0,\n  "pending": 1,\n  "elapsed": "*",\n  "urls": {\n'
      b'    "http://a.example/": false\n  },\n  "pages": {\n    "queued": 1,\n'
      b'    "processed": 0,\n    "fetched": 0,\n    "cached": 0,\n    "failed": 0,\n'
      b'    "blocked": 0\n  },\n  "maxLevel": 2,\n  "forceCrawl": false,\n  "scope": {\n'
      b'    "scope": "any",\n    "allow": [],\n    "deny": [],\n    "maxPages": null\n  },\n'
      b'  "spec": {\n    "urls": [\n      "http://a.example/"\n    ],\n    "depth": 2,\n'
      b'    "forceCrawl": false,\n    "sitemaps": false,\n    "scope": {\n'
      b'      "scope": "any",\n      "allow": [],\n      "deny": [],\n      "maxPages": null\n'
      b'    }\n  },\n'
      b'  "fetcher": {\n    "kind": "http",\n    "liveWorkers": 0\n  },\n'
      b'  "state": "running",\n'
      b'  "rates": {\n    "pagesPerSecond": 0.0,\n    "fetchedPerSecond": 0.0,\n'
      b'    "window": "1m0s"\n  },\n'
      b'  "eta": {\n    "seconds": null,\n    "remainingPages": 1,\n    "method": "levels"\n  },\n'
      b'  "hosts": {\n    "top": [\n'
      b'      {\n        "host": "http://a.example",\n        "pending": 1,\n        "inFlight": 0,\n'
      b'        "nextStart": null,\n        "backoffUntil": null,\n        "robots": null\n      }\n'
      b'    ],\n    "backingOff": [],\n    "robotsBlocked": []\n  },\n'
      b'  "warnings": [\n    "' + WAITS + b'"\n  ]\n}\n')),
    ("forceCrawl and depth", "/?forceCrawl&depth=5", TEXT,
     "https://b.example/docs\nhttp://a.example/\n",
     {"max_level": 5, "force_crawl": True, "scope": "any", "allow": [], "deny": [],
      "max_pages": None, "sitemaps": False, "visits": None},
     [{"url": "http://a.example/", **NONE_DONE}, {"url": "https://b.example/docs", **NONE_DONE}],
     (b'{\n  "completed": 0,\n  "pending": 2,\n  "elapsed": "*",\n  "urls": {\n'
      b'    "http://a.example/": false,\n    "https://b.example/docs": false\n  },\n'
      b'  "pages": {\n    "queued": 2,\n    "processed": 0,\n    "fetched": 0,\n'
      b'    "cached": 0,\n    "failed": 0,\n    "blocked": 0\n  },\n  "maxLevel": 5,\n'
      b'  "forceCrawl": true,\n  "scope": {\n    "scope": "any",\n    "allow": [],\n'
      b'    "deny": [],\n    "maxPages": null\n  },\n'
      b'  "spec": {\n    "urls": [\n      "http://a.example/",\n      "https://b.example/docs"\n'
      b'    ],\n    "depth": 5,\n    "forceCrawl": true,\n    "sitemaps": false,\n'
      b'    "scope": {\n      "scope": "any",\n      "allow": [],\n      "deny": [],\n'
      b'      "maxPages": null\n    }\n  },\n'
      b'  "fetcher": {\n    "kind": "http",\n    "liveWorkers": 0\n  },\n'
      b'  "state": "running",\n'
      b'  "rates": {\n    "pagesPerSecond": 0.0,\n    "fetchedPerSecond": 0.0,\n'
      b'    "window": "1m0s"\n  },\n'
      b'  "eta": {\n    "seconds": null,\n    "remainingPages": 2,\n    "method": "levels"\n  },\n'
      b'  "hosts": {\n    "top": [\n'
      b'      {\n        "host": "http://a.example",\n        "pending": 1,\n        "inFlight": 0,\n'
      b'        "nextStart": null,\n        "backoffUntil": null,\n        "robots": null\n      },\n'
      b'      {\n        "host": "https://b.example",\n        "pending": 1,\n        "inFlight": 0,\n'
      b'        "nextStart": null,\n        "backoffUntil": null,\n        "robots": null\n      }\n'
      b'    ],\n    "backingOff": [],\n    "robotsBlocked": []\n  },\n'
      b'  "warnings": [\n    "' + WAITS + b'"\n  ]\n}\n')),
    ("scope=host, allow twice, deny, maxPages, sitemaps",
     "/?scope=host&allow=%2Fdocs%2F&allow=%5Ehttps%3F%3A&deny=%5C.pdf%24&maxPages=50&sitemaps=1",
     FORM, "http://c.example/docs/\r\n",
     {"max_level": 2, "force_crawl": False, "scope": "host", "allow": ["/docs/", "^https?:"],
      "deny": ["\\.pdf$"], "max_pages": 50, "sitemaps": True, "visits": 1},
     [{"url": "http://c.example/docs/", **NONE_DONE}],
     (b'{\n  "completed": 0,\n  "pending": 1,\n  "elapsed": "*",\n  "urls": {\n'
      b'    "http://c.example/docs/": false\n  },\n  "pages": {\n    "queued": 1,\n'
      b'    "processed": 0,\n    "fetched": 0,\n    "cached": 0,\n    "failed": 0,\n'
      b'    "blocked": 0\n  },\n  "maxLevel": 2,\n  "forceCrawl": false,\n  "scope": {\n'
      b'    "scope": "host",\n    "allow": [\n      "/docs/",\n      "^https?:"\n    ],\n'
      b'    "deny": [\n      "\\\\.pdf$"\n    ],\n    "maxPages": 50\n  },\n'
      b'  "spec": {\n    "urls": [\n      "http://c.example/docs/"\n    ],\n    "depth": 2,\n'
      b'    "forceCrawl": false,\n    "sitemaps": true,\n    "scope": {\n'
      b'      "scope": "host",\n      "allow": [\n        "/docs/",\n        "^https?:"\n'
      b'      ],\n      "deny": [\n        "\\\\.pdf$"\n      ],\n      "maxPages": 50\n'
      b'    }\n  },\n'
      b'  "fetcher": {\n    "kind": "http",\n    "liveWorkers": 0\n  },\n'
      b'  "state": "running",\n'
      b'  "rates": {\n    "pagesPerSecond": 0.0,\n    "fetchedPerSecond": 0.0,\n'
      b'    "window": "1m0s"\n  },\n'
      b'  "eta": {\n    "seconds": null,\n    "remainingPages": 1,\n    "method": "levels"\n  },\n'
      b'  "hosts": {\n    "top": [\n'
      b'      {\n        "host": "http://c.example",\n        "pending": 1,\n        "inFlight": 0,\n'
      b'        "nextStart": null,\n        "backoffUntil": null,\n        "robots": null\n      }\n'
      b'    ],\n    "backingOff": [],\n    "robotsBlocked": []\n  },\n'
      b'  "warnings": [\n    "' + WAITS + b'"\n  ]\n}\n')),
    ("duplicate and blank lines", "/?forceCrawl=0&depth=0&scope=domain", None,
     ("\n  http://d.example/x  \n\n\t\nhttp://d.example/x\r\nHTTP://D.example:80/x#f\n"
      "d.example/y\n\nhttp://a.example/\n"),
     {"max_level": 0, "force_crawl": False, "scope": "domain", "allow": [], "deny": [],
      "max_pages": None, "sitemaps": False, "visits": None},
     [{"url": "http://a.example/", **NONE_DONE}, {"url": "http://d.example/x", **NONE_DONE},
      {"url": "http://d.example/y", **NONE_DONE}],
     (b'{\n  "completed": 0,\n  "pending": 3,\n  "elapsed": "*",\n  "urls": {\n'
      b'    "http://a.example/": false,\n    "http://d.example/x": false,\n'
      b'    "http://d.example/y": false\n  },\n  "pages": {\n    "queued": 3,\n'
      b'    "processed": 0,\n    "fetched": 0,\n    "cached": 0,\n    "failed": 0,\n'
      b'    "blocked": 0\n  },\n  "maxLevel": 0,\n  "forceCrawl": false,\n  "scope": {\n'
      b'    "scope": "domain",\n    "allow": [],\n    "deny": [],\n    "maxPages": null\n'
      b'  },\n  "spec": {\n    "urls": [\n      "http://a.example/",\n'
      b'      "http://d.example/x",\n      "http://d.example/y"\n    ],\n    "depth": 0,\n'
      b'    "forceCrawl": false,\n    "sitemaps": false,\n    "scope": {\n'
      b'      "scope": "domain",\n      "allow": [],\n      "deny": [],\n'
      b'      "maxPages": null\n    }\n  },\n'
      b'  "fetcher": {\n    "kind": "http",\n    "liveWorkers": 0\n  },\n'
      b'  "state": "running",\n'
      b'  "rates": {\n    "pagesPerSecond": 0.0,\n    "fetchedPerSecond": 0.0,\n'
      b'    "window": "1m0s"\n  },\n'
      b'  "eta": {\n    "seconds": null,\n    "remainingPages": 3,\n    "method": "levels"\n  },\n'
      b'  "hosts": {\n    "top": [\n'
      b'      {\n        "host": "http://d.example",\n        "pending": 2,\n        "inFlight": 0,\n'
      b'        "nextStart": null,\n        "backoffUntil": null,\n        "robots": null\n      },\n'
      b'      {\n        "host": "http://a.example",\n        "pending": 1,\n        "inFlight": 0,\n'
      b'        "nextStart": null,\n        "backoffUntil": null,\n        "robots": null\n      }\n'
      b'    ],\n    "backingOff": [],\n    "robotsBlocked": []\n  },\n'
      b'  "warnings": [\n    "' + WAITS + b'"\n  ]\n}\n')),
]

_ELAPSED = re.compile(rb'\n  "elapsed": "([^"]*)",\n')
_GO_DURATION = re.compile(rb"0s|([0-9]+h)?([0-9]+m)?[0-9]+(\.[0-9]+)?(ns|\xc2\xb5s|ms|s)")


async def test_newline_job_rows_are_unchanged(api: Stack, db: asyncpg.Connection) -> None:
    for job_id, (name, path_qs, content_type, body, job, job_urls, status) in enumerate(VALID, 1):
        got = await post(api, path_qs, body, content_type)
        assert got == (200, "application/json", b'{\n  "jobId": %d\n}\n' % job_id), name
        row = await db.fetchrow(f"SELECT {JOB_COLUMNS} FROM job WHERE id = $1", job_id)
        assert dict(row) == job, name
        rows = await db.fetch("""
            SELECT u.url, ju.pending, ju.processed, ju.fetched, ju.cached, ju.failed, ju.blocked,
                   ju.completed_on
            FROM job_url ju JOIN url u ON u.id = ju.url_id WHERE ju.job_id = $1 ORDER BY u.url""",
            job_id)
        assert [dict(r) for r in rows] == job_urls, name
        assert api.http
        async with api.http.get(f"{api.base}/status/{job_id}") as r:
            answer = (r.status, r.headers["Content-Type"], await r.read())
        elapsed = _ELAPSED.search(answer[2])
        assert elapsed and _GO_DURATION.fullmatch(elapsed[1]), (name, answer)
        masked = _ELAPSED.sub(b'\n  "elapsed": "*",\n', answer[2], count=1)
        assert (answer[0], answer[1], masked) == (200, "application/json", status), name
