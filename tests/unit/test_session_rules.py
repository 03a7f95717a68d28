"""worker/sessions.py's pure parts: a job's rules from its stored spec (defaults), what a
request with a session sends (one session's Cookie, its headers, its User-Agent or one of the
pool chosen by its name), block signals (status, patterns in a read body only), and the raw
answer's request headers without the session's secrets."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.config import Settings
from shared.db.sessions import Lease
from shared.model import FetchedPage, RawResponse
from worker.sessions import MASK, SessionBroker, SessionRules

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def lease(name: str = "alice", ua: str | None = None) -> Lease:
    return Lease("p", name, {"sid": "s3cret", "u": name}, {"X-Api": "k3y"}, ua, 1, NOW)


def broker(**settings: object) -> SessionBroker:
    return SessionBroker(Settings(**settings), None)  # type: ignore[arg-type]


def page(status: int, body: bytes | None = None, charset: str | None = None) -> FetchedPage:
    return FetchedPage(1, status, "text/html", None, cacheable=True, body=body, charset=charset)


def test_rules_from_the_stored_spec() -> None:
    assert SessionRules.from_stored({}) is None
    assert SessionRules.from_stored({"sessions": None}) is None
    rules = SessionRules.from_stored({"sessions": {"pool": "acct"}})
    assert rules is not None
    assert (rules.pool, rules.block_status, rules.block_patterns, rules.bench,
            rules.concurrency) == ("acct", frozenset({403, 429}), (), 300.0, 1)
    rules = SessionRules.from_stored({"sessions": {
        "pool": "acct", "blockStatus": [503], "blockPatterns": ["(?i)captcha"], "bench": 5,
        "concurrency": 3}})
    assert rules is not None and rules.block_status == {503} and rules.concurrency == 3
    assert rules.block_patterns[0].search("a CAPTCHA here")


def test_one_sessions_headers_and_user_agent() -> None:
    plain = broker(user_agent="Default/1")
    sent = plain.headers(lease())
    assert sent == {"X-Api": "k3y", "Cookie": "sid=s3cret; u=alice", "User-Agent": "Default/1"}
    assert plain.headers(lease(ua="Own/1"))["User-Agent"] == "Own/1"
    pool = ("A/1", "B/1", "C/1")
    rotating = broker(user_agents=pool)
    chosen = {n: rotating.headers(lease(n))["User-Agent"] for n in ("a", "b", "c", "d", "e")}
    assert set(chosen.values()) <= set(pool) and len(set(chosen.values())) >= 2
    assert all(rotating.headers(lease(n))["User-Agent"] == ua for n, ua in chosen.items())
    no_cookies = Lease("p", "x", {}, {}, None, 1, NOW)
    assert "Cookie" not in plain.headers(no_cookies)


def test_block_signals() -> None:
    rules = SessionRules.from_stored({"sessions": {"pool": "p",
                                                   "blockPatterns": ["unusual traffic"]}})
    assert rules is not None
    assert SessionBroker.blocked(page(403), rules) == "HTTP 403"
    assert SessionBroker.blocked(page(429), rules) == "HTTP 429"
    assert SessionBroker.blocked(page(404), rules) is None
    assert SessionBroker.blocked(page(200, b"we saw unusual traffic"), rules) is not None
    assert SessionBroker.blocked(page(200, b"fine"), rules) is None
    assert SessionBroker.blocked(page(200, None), rules) is None  # a body not read
    late = b"x" * (64 * 1024) + b"unusual traffic"
    assert SessionBroker.blocked(page(200, late), rules) is None  # past the first 64 KiB
    assert SessionBroker.blocked(page(200, b"unusual traffic", "no-such-charset"), rules)


def test_raw_request_headers_keep_no_secret() -> None:
    raw = RawResponse(b"HTTP/1.1 200 OK", (), b"", (("Host", "h"), ("Cookie", "sid=s3cret"),
                                                     ("x-api", "k3y"), ("User-Agent", "U")))
    p = FetchedPage(1, 200, "text/html", None, cacheable=True, raw=raw)
    got = SessionBroker.redact(p, lease())
    assert got.raw is not None and got.raw.request_headers == (
        ("Host", "h"), ("Cookie", MASK), ("x-api", MASK), ("User-Agent", "U"))
    assert SessionBroker.redact(page(200), lease()).raw is None
