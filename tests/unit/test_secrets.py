"""shared/secrets.py: the secrets a tier holds (``secrets_of``), the log filter that blanks them
and every URL's credentials out of log records, messages, arguments and tracebacks alike
(``Redact``, ``redact_url``), and ``shared.service.main`` installing it in every tier."""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from shared.bus import NatsOptions
from shared.config import Settings, load_settings
from shared.errors import ConfigError
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
    cluster = secrets_of(Settings(nats_url="nats://u:first-pass@a:4222,nats://u:second-pass@b:4222"))
    assert {"first-pass", "second-pass"} <= set(cluster)


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
        tmp_path: Path, captured: tuple[io.StringIO, io.StringIO],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # install() replaces it
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


def test_secret_files_are_read_at_load_and_the_db_password_goes_into_the_url(
        tmp_path: Path) -> None:
    (tmp_path / "db").write_text("p@ss/w:rd#1\n")
    (tmp_path / "nats").write_text("nats-file-password\n")
    (tmp_path / "token").write_text("nats-file-token\n")
    s = load_settings(None, {
        "HARVESTER_DATABASE_URL": "postgresql://crawler@db:5432/h?sslmode=verify-full",
        "HARVESTER_DATABASE_PASSWORD_FILE": str(tmp_path / "db"),
        "HARVESTER_NATS_PASSWORD_FILE": str(tmp_path / "nats"),
        "HARVESTER_NATS_TOKEN_FILE": str(tmp_path / "token")})
    assert s.database_password == "p@ss/w:rd#1"
    assert s.database_url == "postgresql://crawler:p%40ss%2Fw%3Ard%231@db:5432/h?sslmode=verify-full"
    parts = urlsplit(s.database_url)
    assert (parts.username, unquote(parts.password or ""), parts.port) == ("crawler", "p@ss/w:rd#1", 5432)
    assert (s.nats_password, s.nats_token) == ("nats-file-password", "nats-file-token")
    assert "p@ss" not in repr(s) and "nats-file" not in repr(s)
    env = load_settings(None, {"HARVESTER_DATABASE_PASSWORD": "from-the-env",
                               "HARVESTER_DATABASE_URL": "postgresql://u:old@db/h"})
    assert env.database_url == "postgresql://u:from-the-env@db/h"  # the URL's own is replaced
    assert set(secrets_of(s)) >= {"p@ss/w:rd#1", "p%40ss%2Fw%3Ard%231", "nats-file-password",
                                  "nats-file-token"}


def test_a_secret_file_that_cannot_be_read_is_named_never_shown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="databasePasswordFile") as e:
        load_settings(None, {"HARVESTER_DATABASE_PASSWORD_FILE": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="natsTokenFile.*empty"):
        load_settings(None, {"HARVESTER_NATS_TOKEN_FILE": str(tmp_path / "empty")})
    (tmp_path / "pw").write_text("secret-in-a-file\n")
    with pytest.raises(ConfigError, match="natsPasswordFile") as e:
        load_settings(None, {"HARVESTER_NATS_PASSWORD_FILE": str(tmp_path / "pw"),
                             "HARVESTER_NATS_PASSWORD": "and-in-the-env"})
    assert "secret-in-a-file" not in str(e.value) and "and-in-the-env" not in str(e.value)


def test_host_headers_come_from_the_environment_or_a_file_merged_and_masked(
        tmp_path: Path) -> None:
    config = tmp_path / "worker.json"
    config.write_text(json.dumps({"hostHeaders": {"a.example": {"X-Plain": "shown-value"}}}))
    headers = tmp_path / "headers.json"
    headers.write_text(json.dumps({"a.example": {"Authorization": "Bearer file-secret-0001"},
                                   "b.example:8443": {"Cookie": "sid=file-cookie-0002"}}))
    s = load_settings(config, {"HARVESTER_HOST_HEADERS_FILE": str(headers)})
    assert s.host_headers == {
        "a.example": {"X-Plain": "shown-value", "Authorization": "Bearer file-secret-0001"},
        "b.example:8443": {"Cookie": "sid=file-cookie-0002"}}
    assert {"Bearer file-secret-0001", "sid=file-cookie-0002"} <= set(secrets_of(s, {}))
    env = load_settings(None, {"HARVESTER_HOST_HEADERS": '{"c.example": {"X-Key": "env-key-03"}}'})
    assert env.host_headers == {"c.example": {"X-Key": "env-key-03"}}
    assert "env-key-03" in secrets_of(env, {})


def test_host_headers_errors_name_the_key_never_the_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="HARVESTER_HOST_HEADERS.*invalid JSON") as e:
        load_settings(None, {"HARVESTER_HOST_HEADERS": '{"a": {"X": "leaky-secret-01"'})
    assert "leaky-secret-01" not in str(e.value)
    bad = tmp_path / "bad.json"
    bad.write_text('["leaky-secret-02"]')
    with pytest.raises(ConfigError, match="hostHeadersFile.*object of objects") as e:
        load_settings(None, {"HARVESTER_HOST_HEADERS_FILE": str(bad)})
    assert "leaky-secret-02" not in str(e.value)
    with pytest.raises(ConfigError, match="hostHeadersFile.*cannot read"):
        load_settings(None, {"HARVESTER_HOST_HEADERS_FILE": str(tmp_path / "missing")})
    good = tmp_path / "good.json"
    good.write_text('{"a": {"X": "y"}}')
    with pytest.raises(ConfigError, match="both"):
        load_settings(None, {"HARVESTER_HOST_HEADERS_FILE": str(good),
                             "HARVESTER_HOST_HEADERS": '{"a": {"X": "z"}}'})


def test_the_nats_and_auth_secrets_of_the_environment_are_secrets(tmp_path: Path) -> None:
    files = tmp_path / "auth"
    files.write_text("# name token [admin]\nops ops-token-from-a-file-0001 admin\n")
    env = {"HARVESTER_NATS_PASSWORD": "nats-env-password", "HARVESTER_NATS_TOKEN": "nats-env-token",
           "HARVESTER_AUTH_TOKENS": "alice:alice-token-0000000001,root:root-token-00000000001:admin",
           "HARVESTER_AUTH_TOKEN_FILES": str(files)}
    found = set(secrets_of(load_settings(None, env), env))
    assert found >= {"nats-env-password", "nats-env-token", "alice-token-0000000001",
                     "root-token-00000000001", "ops-token-from-a-file-0001"}
    assert not found & {"alice", "root", "admin", "ops"}  # names are not secrets


def test_nats_options_come_from_the_settings_and_hide_their_secrets(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("nats-password-1\n")
    s = load_settings(None, {"HARVESTER_NATS_USER": "crawler",
                             "HARVESTER_NATS_PASSWORD_FILE": str(tmp_path / "pw"),
                             "HARVESTER_NATS_TOKEN": "nats-token-0001"})
    options = NatsOptions.from_settings(s)
    assert options.connect_args() == {"user": "crawler", "password": "nats-password-1",
                                      "token": "nats-token-0001"}
    assert "nats-password-1" not in repr(options) and "nats-token-0001" not in repr(options)
    assert NatsOptions.from_settings(Settings()).connect_args() == {}  # as before: the URL's


def test_nats_credentials_need_nkeys_and_tls_files_must_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "user.creds"
    creds.write_text("not checked here")
    assert importlib.util.find_spec("nkeys") is not None  # a test dependency
    assert NatsOptions.from_settings(Settings(nats_creds_file=creds)).connect_args() == {
        "user_credentials": str(creds)}
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "nkeys" else real(name, *a))
    with pytest.raises(ConfigError, match="natsCredsFile: needs the nkeys package"):
        NatsOptions.from_settings(Settings(nats_creds_file=creds))
    with pytest.raises(ConfigError, match="natsNkeyFile: needs the nkeys package"):
        NatsOptions.from_settings(Settings(nats_nkey_file=creds))
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="natsTLS: cannot load the TLS files"):
        NatsOptions.from_settings(Settings(nats_tls_ca_file=tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="natsTLS"):
        NatsOptions.from_settings(Settings(nats_tls_ca_file=creds))  # not a certificate


def test_a_tier_that_crashes_prints_its_traceback_scrubbed(tmp_path: Path) -> None:
    # An exception out of the tier's run is printed by Python itself, not through logging.
    script = textwrap.dedent("""
        import sys
        from shared.service import main
        async def run(settings, stop):
            raise RuntimeError(f"cannot reach {settings.database_url}")
        sys.exit(main("tier", run, []))
    """)
    env = {**os.environ, "HARVESTER_DATABASE_URL": "postgresql://h@db/h",
           "HARVESTER_DATABASE_PASSWORD": DB_PASSWORD, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and "RuntimeError: cannot reach" in done.stderr, done.stderr
    assert DB_PASSWORD not in done.stderr and "postgresql://***@db/h" in done.stderr


def test_a_config_error_after_start_is_one_line_and_status_2(tmp_path: Path) -> None:
    # Settings read once the tier runs (token files, NATS options) fail like a bad config at load.
    script = textwrap.dedent("""
        import sys
        from shared.errors import ConfigError
        from shared.service import main
        async def run(settings, stop):
            raise ConfigError("authTokenFiles", "/t line 1 is malformed")
        sys.exit(main("tier", run, []))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr == "tier: config error: authTokenFiles: /t line 1 is malformed\n"
