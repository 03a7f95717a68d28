"""shared/secrets.py: the secrets a tier holds (``secrets_of``), the log filter that blanks them
and every URL's credentials out of log records, messages, arguments and tracebacks alike
(``Redact``, ``redact_url``), and ``shared.service.main`` installing it in every tier."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.config import Settings
from shared.logfmt import JsonFormatter
from shared.secrets import MIN_CHARS, Redact, install, redact_url, secrets_of

ROOT = Path(__file__).resolve().parents[2]

DB_PASSWORD = "dbPassw0rd-secret"
NATS_PASSWORD = "natsPassw0rd-secret"
GITHUB = "ghp_fakeTokenA000001"
GITHUB_FROM_FILE = "ghp_fakeTokenB000002"
WEBHOOK = "webhook-secret-1234"
HEADER = "Bearer header-secret-5678"


def settings(tmp_path: Path) -> Settings:
    tokens = tmp_path / "github-tokens"
    tokens.write_text(f"# ours\n{GITHUB_FROM_FILE}\n")
    return Settings(
        database_url=f"postgresql://harvester:{DB_PASSWORD}@db:5432/harvester",
        nats_url=f"nats://crawler:{NATS_PASSWORD}@nats:4222",
        github_tokens=(GITHUB,), github_token_files=(tokens,), webhook_secret=WEBHOOK,
        host_headers={"api.example.org": {"Authorization": HEADER}})


ALL = (DB_PASSWORD, NATS_PASSWORD, GITHUB, GITHUB_FROM_FILE, WEBHOOK, HEADER)


def test_secrets_of_names_every_secret_the_settings_hold(tmp_path: Path) -> None:
    found = secrets_of(settings(tmp_path))
    assert set(ALL) <= set(found)
    assert list(found) == sorted(found, key=lambda s: (-len(s), s))  # longest first


def test_short_and_public_values_are_not_secrets() -> None:
    # The example configs' password ("harvester") is public and the project's name: masking
    # it would blank every line; values shorter than MIN_CHARS would blank ordinary words.
    s = Settings(host_headers={"h": {"Accept-Language": "en", "X-Key": "k" * MIN_CHARS}})
    assert secrets_of(s) == ("k" * MIN_CHARS,)
    assert "harvester" not in secrets_of(Settings())


def test_a_percent_encoded_password_is_masked_either_way() -> None:
    s = Settings(database_url="postgresql://u:p%40ss%2Fword@db/x")
    assert {"p%40ss%2Fword", "p@ss/word"} <= set(secrets_of(s))


def test_a_nats_token_in_the_url_is_a_secret() -> None:
    assert "s3cr3t-token" in secrets_of(Settings(nats_url="nats://s3cr3t-token@nats:4222"))


@pytest.mark.parametrize(("url", "shown"), [
    ("nats://u:p@h:4222", "nats://***@h:4222"),
    ("nats://token@h:4222", "nats://***@h:4222"),
    ("postgresql://u:p@ss@db:5432/x?sslmode=require", "postgresql://***@db:5432/x?sslmode=require"),
    ("https://h/a@b?c=d@e#f@g", "https://h/a@b?c=d@e#f@g"),  # an @ past the host is not userinfo
    ("nats://h:4222", "nats://h:4222"),
    ("at NATS://U:P@h and http://x:y@z/ too", "at NATS://***@h and http://***@z/ too"),
    ("not a url: a@b", "not a url: a@b"),
])
def test_redact_url_masks_userinfo_only(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Two root handlers, text and JSON, as a tier has one of them; removed after."""
    text, js = io.StringIO(), io.StringIO()
    handlers = [logging.StreamHandler(text), logging.StreamHandler(js)]
    handlers[0].setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handlers[1].setFormatter(JsonFormatter())
    root = logging.getLogger()
    for h in handlers:
        root.addHandler(h)
    try:
        yield text, js
    finally:
        for h in handlers:
            root.removeHandler(h)


def test_every_secret_is_masked_in_log_records_and_tracebacks(
        tmp_path: Path, captured: tuple[io.StringIO, io.StringIO]) -> None:
    s = settings(tmp_path)
    redact = install(s)
    log = logging.getLogger("test.secrets")
    old = log.level
    log.setLevel(logging.DEBUG)
    try:
        for secret in ALL:
            log.warning("as an argument: %s", secret)
            log.info(f"inline: {secret}")
            log.debug("in a dict: %r", {"Authorization": secret})
            log.warning("bad %s %s", secret)  # noqa: PLE1206 - a broken format, scrubbed too
            try:
                try:
                    raise KeyError(secret)
                except KeyError as e:
                    raise RuntimeError(f"wrapping {secret}") from e
            except RuntimeError:
                log.exception("failed for %s", secret)
            log.error("with a url field", extra={"url": f"http://u:{secret}@h/"})
        log.warning("connecting to %s and %s", s.database_url, s.nats_url)
        log.warning("a job URL http://someone:pw-unknown@site.example/p")
    finally:
        redact.uninstall()
        log.setLevel(old)
    text, js = captured[0].getvalue(), captured[1].getvalue()
    for out in (text, js):
        for secret in ALL:
            assert secret not in out
        assert "pw-unknown" not in out and "someone" not in out  # any URL's credentials
    assert text.count("Traceback") == 2 * len(ALL)  # each with its cause
    assert "KeyError: '***'" in text and "RuntimeError: wrapping ***" in text
    assert "postgresql://***@db:5432/harvester" in text and "nats://***@nats:4222" in text
    records = [json.loads(line) for line in js.splitlines()]
    assert all("***" in r["msg"] for r in records if "url" not in r)
    assert {r["url"] for r in records if "url" in r} == {"http://***@h/"}
    assert all("***" in r["exc"] for r in records if "exc" in r)


def test_redact_without_secrets_keeps_a_record_as_it_is() -> None:
    record = logging.LogRecord("x", logging.INFO, "f", 1, "a %s", ("b",), None)
    assert Redact([]).filter(record) and record.args == ("b",)


def test_every_tier_installs_it_at_start(tmp_path: Path) -> None:
    # shared.service.main, which every tier's __main__ runs: a secret from the environment and
    # the credentials of the URLs it connects to are blanked on stderr, traceback included.
    script = textwrap.dedent("""
        import logging, sys
        from shared.service import main
        async def run(settings, stop):
            log = logging.getLogger("tier")
            log.warning("database %s nats %s", settings.database_url, settings.nats_url)
            log.warning("webhook secret %s", settings.webhook_secret)
            try:
                raise ValueError(settings.webhook_secret)
            except ValueError:
                log.exception("failed")
        sys.exit(main("tier", run, []))
    """)
    env = {**os.environ, "HARVESTER_DATABASE_URL": f"postgresql://h:{DB_PASSWORD}@db/h",
           "HARVESTER_NATS_URL": f"nats://n:{NATS_PASSWORD}@nats:4222",
           "HARVESTER_WEBHOOK_SECRET": WEBHOOK, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    for secret in (DB_PASSWORD, NATS_PASSWORD, WEBHOOK):
        assert secret not in done.stderr
    assert "postgresql://***@db/h" in done.stderr and "nats://***@nats:4222" in done.stderr
    assert "ValueError: ***" in done.stderr
