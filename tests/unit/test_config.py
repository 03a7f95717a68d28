"""Settings: the original Harvester's keys, environment overrides, flags, and clear errors."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harvester_ops.embedded import free_port
from shared.config import Settings, load_settings, parse_go_duration
from shared.errors import ConfigError
from shared.service import parse_flags, settings_from_flags

ORIGINAL = {
    "storage": {"user": "docker", "pass": "p@ss", "dbname": "harvest", "host": "db", "port": 24001,
                "sslmode": False},
    "urlQueue": {"connURL": "nats://q:4222", "topic": "url_queue"},
    "workQueue": {"connURL": "nats://q:4222", "topic": "work_queue"},
    "httpAddr": ":8080", "httpRootPath": "/goapps/harvester", "maxLevel": 3,
    "cacheMaxAge": "1h30m", "workDelay": "25ms", "unknownKey": "ignored",
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_original_keys(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, ORIGINAL), env={})
    assert s.database_url == "postgresql://docker:p%40ss@db:24001/harvest?sslmode=disable"
    assert (s.nats_url, s.url_topic, s.work_topic) == ("nats://q:4222", "url_queue", "work_queue")
    assert (s.http_addr, s.root_path, s.max_level) == (":8080", "/goapps/harvester", 3)
    assert (s.cache_max_age, s.work_delay) == (5400.0, 0.025)


def test_sslmode_true_means_require(tmp_path: Path) -> None:
    cfg = dict(ORIGINAL, storage=dict(ORIGINAL["storage"], sslmode=True))
    assert load_settings(write(tmp_path, cfg), env={}).database_url.endswith("sslmode=require")


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    env = {"HARVESTER_DATABASE_URL": "postgresql://env/db", "HARVESTER_MAX_LEVEL": "4",
           "HARVESTER_CACHE_MAX_AGE": "10m", "HARVESTER_HTTP_ADDR": ":9000"}
    s = load_settings(write(tmp_path, ORIGINAL), env=env, http_addr="127.0.0.1:7000")
    assert s.database_url == "postgresql://env/db"
    assert (s.max_level, s.cache_max_age) == (4, 600.0)
    assert s.http_addr == "127.0.0.1:7000"


def test_duration_variables_take_seconds_or_go_durations() -> None:
    s = load_settings(None, env={"HARVESTER_HOST_DELAY": "500ms", "HARVESTER_ACK_WAIT": "2m",
                                 "HARVESTER_STALE_AFTER": "45", "HARVESTER_RETRY_BASE": "0.05",
                                 "HARVESTER_CACHE_MAX_AGE": "3600"})
    assert (s.host_delay, s.ack_wait, s.stale_after, s.retry_base, s.cache_max_age) == \
        (0.5, 120.0, 45.0, 0.05, 3600.0)
    with pytest.raises(ConfigError, match="HARVESTER_STALE_AFTER: invalid duration 'soon'"):
        load_settings(None, env={"HARVESTER_STALE_AFTER": "soon"})


def test_no_file_gives_defaults() -> None:
    s = load_settings(None, env={})
    assert (s.max_level, s.cache_max_age, s.root_path, s.max_depth) == (2, 86400.0, "/", 10)


def test_the_api_listens_on_loopback_unless_told_otherwise(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``httpAddr`` defaults to 127.0.0.1:8080, as does the example config; ``-addr``, the
    environment or the config opens it wider, and then, without API tokens, the web server
    warns at start."""
    from web_server.app import create_app, parse_addr
    assert Settings().http_addr == "127.0.0.1:8080"
    assert parse_addr(load_settings(None, env={}).http_addr) == ("127.0.0.1", 8080)
    example = Path(__file__).resolve().parents[2] / "config" / "web_server.json"
    assert load_settings(example, env={}).http_addr == "127.0.0.1:8080"
    args = parse_flags("web_server", ["-config", str(example), "-addr", "0.0.0.0:9000"],
                       with_addr=True)
    assert settings_from_flags(args, env={}).http_addr == "0.0.0.0:9000"
    assert load_settings(None, env={"HARVESTER_HTTP_ADDR": ":8080"}).http_addr == ":8080"
    with caplog.at_level("WARNING", logger="web_server.app"):
        create_app(Settings())
        assert not caplog.records
        create_app(Settings(http_addr=":8080"))
    assert [r.getMessage() for r in caplog.records] == [
        ("no API tokens configured (authTokens, HARVESTER_AUTH_TOKENS, authTokenFiles): anyone "
         "who reaches :8080 controls every job")]


def test_deployments_that_publish_the_api_listen_on_every_interface() -> None:
    """The container image, compose and Kubernetes listen on 0.0.0.0:8080 explicitly (the
    default is loopback, unreachable from outside a container)."""
    root = Path(__file__).resolve().parents[2]
    cmd = next(line for line in (root / "deploy" / "Dockerfile").read_text().splitlines()
               if line.startswith("CMD "))
    assert json.loads(cmd[4:])[-2:] == ["-addr", "0.0.0.0:8080"]
    assert 'HARVESTER_HTTP_ADDR: "0.0.0.0:8080"' in (root / "docker-compose.yml").read_text()
    k8s = (root / "deploy" / "k8s" / "web-server.yaml").read_text()
    assert 'name: HARVESTER_HTTP_ADDR\n              value: "0.0.0.0:8080"' in k8s
    assert '"httpAddr": "0.0.0.0:8080"' in (root / "deploy" / "k8s" / "configmap.yaml").read_text()


@pytest.mark.parametrize(("content", "fragment"), [
    ("{not json", "invalid JSON at line 1"),
    ("[1, 2]", "top level must be a JSON object"),
    ({"cacheMaxAge": "soon"}, '"cacheMaxAge": invalid duration'),
    ({"maxLevel": -1}, "max_level"),
    ({"storage": "db"}, '"storage" must be an object'),
])
def test_bad_config_is_a_clear_error(tmp_path: Path, content: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, content), env={})
    assert fragment in str(e.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.json", env={})


@pytest.mark.parametrize("command", [["-m", "web_server"], ["-m", "foreman"], ["-m", "worker"],
                                     ["-m", "harvester_ops.cli", "worker"],
                                     ["-m", "harvester_ops.cli", "web-server"]])
def test_tier_reports_bad_config_in_one_line(tmp_path: Path, command: list[str]) -> None:
    path = write(tmp_path, {"cacheMaxAge": "forever"})
    r = subprocess.run([sys.executable, *command, "-config", str(path)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "config error" in lines[0] and "cacheMaxAge" in lines[0]


@pytest.mark.parametrize(("text", "seconds"), [("24h", 86400), ("1h30m", 5400), ("25ms", 0.025),
                                               ("1.5s", 1.5), ("0", 0), ("", 0), ("300us", 0.0003),
                                               (12, 12)])
def test_go_durations(text: str | int, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1d", "h", "5", "1h-2m", "abc"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


def test_up_reports_bad_config_before_starting_anything(tmp_path: Path) -> None:
    path = write(tmp_path, {"maxLevel": "deep"})
    r = subprocess.run([sys.executable, "-m", "harvester_ops.cli", "up", "-config", str(path),
                        "--data-dir", str(tmp_path / "data")], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "maxLevel" not in r.stdout
    assert "config error" in r.stderr and "max_level" in r.stderr
    assert not (tmp_path / "data").exists()


def test_host_limits_inherit_the_defaults() -> None:
    s = load_settings(None, env={}, host_concurrency=3, host_delay=0.25,
                      host_limits={"a.example": {"delay": "1s"}, "b.example:8080": {"concurrency": 9}})
    assert (s.host_limit("http://a.example").concurrency, s.host_limit("http://a.example").delay) == (3, 1.0)
    assert (s.host_limit("http://b.example:8080").concurrency,
            s.host_limit("http://b.example:8080").delay) == (9, 0.25)
    assert s.host_limit("http://b.example").concurrency == 3  # another port: not that entry


def test_an_empty_host_port_entry_wins_over_the_host() -> None:
    """{} for host:port means "no extra headers there": the bare host's Authorization must not
    reach that port."""
    s = load_settings(None, env={}, host_headers={"a.example": {"Authorization": "Bearer x"},
                                                   "a.example:8080": {}})
    assert s.headers_for("http://a.example:8080") == {}
    assert s.headers_for("http://a.example") == {"Authorization": "Bearer x"}
    assert s.headers_for("http://a.example:9090") == {"Authorization": "Bearer x"}
    assert s.headers_for("http://b.example") == {}


@pytest.mark.parametrize("key", ["[::1]:8080", "[0:0::1]:8080", "[::1]", "::1", "0::1"])
def test_ipv6_host_keys_match(key: str) -> None:
    s = load_settings(None, env={}, host_headers={key: {"X-K": "v"}},
                      host_limits={key: {"concurrency": 7}})
    assert s.headers_for("http://[::1]:8080") == {"X-K": "v"}
    assert s.host_limit("http://[::1]:8080").concurrency == 7
    assert s.headers_for("http://[::2]:8080") == {}


def test_host_keys_are_case_insensitive_and_default_ports_count() -> None:
    s = load_settings(None, env={}, host_headers={"A.Example:443": {"X-K": "tls"}})
    assert s.headers_for("https://a.example") == {"X-K": "tls"}
    assert s.headers_for("http://a.example") == {}


@pytest.mark.parametrize(("overrides", "fragment"), [
    ({"max_level": 11}, "maxLevel (11) exceeds maxDepth (10)"),
    ({"max_level": 4, "max_depth": 3}, "maxLevel (4) exceeds maxDepth (3)"),
    ({"log_level": "NOPE"}, "unknown log level 'NOPE'"),
    ({"http_addr": "localhost"}, "invalid address 'localhost'"),
    ({"http_addr": ":99999"}, "invalid address ':99999'"),
    ({"http_addr": "::1:80"}, "put an IPv6 address in brackets"),
    ({"host_headers": {"[::1": {}}}, "invalid host"),
    ({"host_headers": {"a.example:x": {}}}, "invalid port"),
    ({"host_headers": {"A.example": {}, "a.example": {}}}, "the same host"),
])
def test_checked_at_load(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(None, env={}, **overrides)
    assert fragment in str(e.value)


def test_log_level_is_case_insensitive() -> None:
    assert load_settings(None, env={}, log_level="debug").log_level == "DEBUG"


@pytest.mark.parametrize("command", [["-m", "web_server"], ["-m", "worker"],
                                     ["-m", "harvester_ops.cli", "foreman"]])
def test_bad_log_level_flag_is_one_line(command: list[str]) -> None:
    r = subprocess.run([sys.executable, *command, "-log-level", "NOPE"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "config error" in r.stderr and "unknown log level 'NOPE'" in r.stderr


def test_migrate_without_postgres_is_one_line() -> None:
    unreachable = f"postgresql://nobody@127.0.0.1:{free_port()}/none?connect_timeout=2"
    r = subprocess.run([sys.executable, "-m", "harvester_ops.cli", "migrate"],
                       env={**os.environ, "HARVESTER_DATABASE_URL": unreachable},
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr
    assert r.stderr.startswith("harvester migrate: PostgreSQL unavailable: ")
    assert "127.0.0.1" in r.stderr and "Traceback" not in r.stderr


def test_up_accepts_log_level_and_checks_it() -> None:
    r = subprocess.run([sys.executable, "-m", "harvester_ops.cli", "up", "-log-level", "NOPE"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    assert "config error" in r.stderr and "unknown log level 'NOPE'" in r.stderr
    assert "unrecognized arguments" not in r.stderr


ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    """Command lines of README.md's shell and console blocks (prompts and comments dropped)."""
    lines, block = [], None
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            block = line[3:] if block is None else None
        elif block in ("sh", "console") and (block == "sh" or line.startswith("$ ")):
            command = line.removeprefix("$ ").split("#", 1)[0].strip()
            if command:
                lines.append(command)
    return lines


def test_readme_commands_run_from_a_fresh_checkout() -> None:
    """Commands that need the virtualenv name it: a shell without it activated has no
    `harvester` and a `python` without Harvester's dependencies."""
    commands = readme_commands()
    assert any(c.startswith(".venv/bin/harvester migrate") for c in commands)
    for command in commands:
        program = command.split()[0]
        assert program not in ("python", "python3", "harvester"), command
        if program.startswith(".venv/bin/"):
            assert (ROOT / program).exists(), command


def test_readme_config_error_example(tmp_path: Path) -> None:
    example = next(c for c in readme_commands() if "-config bad.json" in c)
    (tmp_path / "bad.json").write_text('{"cacheMaxAge": "1 day"}')
    argv = example.split(";")[0].split()
    r = subprocess.run([str(ROOT / argv[0]), *argv[1:]], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60, check=False)
    readme = (ROOT / "README.md").read_text()
    assert r.returncode == 2 and r.stderr.strip() in readme, r.stderr


def test_host_keys_of_an_origin_are_worked_out_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """host_limit and headers_for run for every request and hop: the origin's keys (an IP
    address check that raises for every host name) are worked out once per origin."""
    calls: list[str] = []
    real = ipaddress.ip_address

    def counted(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        calls.append(address)
        return real(address)

    monkeypatch.setattr(ipaddress, "ip_address", counted)
    s = load_settings(None, env={}, host_limits={"memo.example": {"delay": "1s"}},
                      host_headers={"memo.example:8080": {"X-A": "1"}})
    calls.clear()  # the keys, normalised at load
    for _ in range(100):
        assert s.host_limit("http://memo.example:8080").delay == 1.0
        assert s.headers_for("http://memo.example:8080") == {"X-A": "1"}
    assert calls.count("memo.example") <= 1


def test_kind_flag_sets_the_kinds_a_worker_serves(tmp_path: Path) -> None:
    path = write(tmp_path, {"fetcherKinds": ["http", "browser", "static"], "concurrency": 8})
    args = parse_flags("worker", ["-config", str(path), "-kind", "http,browser=4"],
                       with_kind=True)
    s = settings_from_flags(args, env={})
    assert s.served_kinds == {"http": 8, "browser": 4}
    assert load_settings(path, env={}).served_kinds == {"http": 8}, "no flag: http only"


def test_kind_keys_in_the_config_file(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, {"fetcherKinds": ["http", "static"],
                                       "workerKinds": {"static": 3}, "heartbeatInterval": "2s",
                                       "workerTimeout": "6s",
                                       "extractorKinds": ["test-title"]}), env={})
    assert (s.fetcher_kinds, s.served_kinds) == (("http", "static"), {"static": 3})
    assert s.extractor_kinds == ("test-title",)
    assert (s.heartbeat_interval, s.worker_timeout) == (2.0, 6.0)


def test_only_the_worker_takes_a_kind_flag() -> None:
    with pytest.raises(SystemExit):
        parse_flags("foreman", ["-kind", "http"])


@pytest.mark.parametrize(("flag", "fragment"), [
    ("browser", "-kind: unknown fetcher kind 'browser' (fetcherKinds: http, static)"),
    ("http,,static", "-kind: empty kind"),
    ("static=0", "-kind: 'static=0': concurrency must be a whole number above 0"),
    ("static=many", "-kind: 'static=many': concurrency must be a whole number above 0"),
    ("http,http=2", "-kind: 'http' named twice"),
    ("", "-kind: empty kind"),
])
def test_a_bad_kind_flag_is_one_line(tmp_path: Path, flag: str, fragment: str) -> None:
    path = write(tmp_path, {"fetcherKinds": ["http", "static"]})
    r = subprocess.run([sys.executable, "-m", "worker", "-config", str(path), "-kind", flag],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"worker: config error: {fragment}"), r.stderr


def test_harvester_worker_takes_the_kind_flag_too(tmp_path: Path) -> None:
    path = write(tmp_path, {"fetcherKinds": ["http", "static"]})
    r = subprocess.run([sys.executable, "-m", "harvester_ops.cli", "worker", "-config", str(path),
                        "-kind", "browser"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "worker: config error: -kind: unknown fetcher kind 'browser' (fetcherKinds: http, static)"]


@pytest.mark.parametrize(("config", "fragment"), [
    ({"workerKinds": {"browser": 2}}, "unknown fetcher kind 'browser' (fetcherKinds: http)"),
    ({"workerKinds": {"http": 0}}, "worker_kinds"),
    ({"fetcherKinds": ["http", "Static"]}, "invalid fetcher kind 'Static'"),
    ({"fetcherKinds": ["http", "a.b"]}, "invalid fetcher kind 'a.b'"),
    ({"fetcherKinds": ["http", "http"]}, "fetcher kind 'http' named twice"),
])
def test_bad_kinds_in_the_config_file(tmp_path: Path, config: dict[str, object],
                                      fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, config), env={})
    assert fragment in str(e.value)


TOKENS = ("ghp_fakeTokenA000001", "ghp_fakeTokenB000002")


def test_github_settings_from_file_and_environment(tmp_path: Path) -> None:
    defaults = load_settings(env={})
    assert (defaults.github_base_url, defaults.github_tokens, defaults.github_token_files,
            defaults.github_per_page, defaults.github_token_concurrency,
            defaults.github_wait) == ("https://api.github.com", (), (), 100, 4, 10.0)
    path = write(tmp_path, {"githubBaseUrl": "https://ghe.example/api/v3", "githubPerPage": 30,
                            "githubTokenConcurrency": 2, "githubWait": "1500ms",
                            "githubTokenFiles": ["/run/secrets/gh1", "/run/secrets/gh2"]})
    s = load_settings(path, env={"HARVESTER_GITHUB_TOKENS": f" {TOKENS[0]},{TOKENS[1]}\n"
                                                            f"{TOKENS[0]} "})
    assert s.github_base_url == "https://ghe.example/api/v3"
    assert (s.github_per_page, s.github_token_concurrency, s.github_wait) == (30, 2, 1.5)
    assert s.github_token_files == (Path("/run/secrets/gh1"), Path("/run/secrets/gh2"))
    assert s.github_tokens == TOKENS  # comma or space separated, each once
    env = load_settings(path, env={"HARVESTER_GITHUB_BASE_URL": "http://127.0.0.1:9",
                                   "HARVESTER_GITHUB_WAIT": "0",
                                   "HARVESTER_GITHUB_TOKEN_FILES": "/a, /b"})
    assert (env.github_base_url, env.github_wait) == ("http://127.0.0.1:9", 0.0)
    assert env.github_token_files == (Path("/a"), Path("/b"))


def test_github_tokens_are_never_shown() -> None:
    s = load_settings(env={"HARVESTER_GITHUB_TOKENS": " ".join(TOKENS)})
    assert s.github_tokens == TOKENS
    for shown in (repr(s), str(s), s.model_dump_json(), json.dumps(s.model_dump(mode="json"))):
        assert not any(t in shown for t in TOKENS)
    bad = "ghp_fakeTokenA000001 not!a!token!at!all"
    with pytest.raises(ConfigError) as e:
        load_settings(env={"HARVESTER_GITHUB_TOKENS": bad})
    assert "token 2 is malformed" in str(e.value)
    assert "ghp_" not in str(e.value) and "not!a" not in str(e.value)
    with pytest.raises(ValueError) as direct:
        Settings(github_tokens=("short",))
    assert "token 1 is malformed" in str(direct.value) and "short" not in str(direct.value)


def test_github_tokens_are_refused_in_a_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"githubTokens": [TOKENS[0]]})
    with pytest.raises(ConfigError, match="HARVESTER_GITHUB_TOKENS") as e:
        load_settings(path, env={})
    assert TOKENS[0] not in str(e.value)


@pytest.mark.parametrize(("url", "ok"), [
    ("https://api.github.com", True), ("http://127.0.0.1:8080/api/v3", True),
    ("https://api.github.com/", False), ("api.github.com", False), ("ftp://x.example", False),
    ("https://x.example/api?v=3", False), ("https://x.example/#f", False), ("https://", False),
])
def test_github_base_url_is_http_without_a_trailing_slash(url: str, ok: bool) -> None:
    if ok:
        assert load_settings(env={}, github_base_url=url).github_base_url == url
    else:
        with pytest.raises(ConfigError, match="invalid GitHub base URL"):
            load_settings(env={}, github_base_url=url)


@pytest.mark.parametrize(("url", "ok"), [
    ("http://127.0.0.1:9", True), ("http://127.3.2.1/api/v3", True), ("http://[::1]:80", True),
    ("http://localhost:8080", True), ("http://ghe.example/api/v3", False),
    ("http://10.0.0.1", False), ("http://api.github.com", False), ("http://127.0.0.1.nip.io", False),
])
def test_github_base_url_http_only_on_loopback(url: str, ok: bool) -> None:
    """A token is sent with every request: in cleartext only to this machine (tests, a tunnel)."""
    if ok:
        assert load_settings(env={}, github_base_url=url).github_base_url == url
    else:
        with pytest.raises(ConfigError, match="https") as e:
            load_settings(env={}, github_base_url=url)
        assert "loopback" in str(e.value)


@pytest.mark.parametrize(("overrides", "fragment"), [
    ({"github_per_page": 101}, "github_per_page"), ({"github_per_page": 0}, "github_per_page"),
    ({"github_token_concurrency": 0}, "github_token_concurrency"),
    ({"github_wait": -1}, "github_wait"),
])
def test_bad_github_settings(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(env={}, **overrides)


def test_fair_feeder_keys(tmp_path: Path) -> None:
    """Issue 14: hostLookahead and hostStartWindow (durations), feedPairs, bloomJobs; their
    defaults."""
    assert (Settings().host_lookahead, Settings().feed_pairs, Settings().bloom_jobs) == (0, 5000, 64)
    s = load_settings(write(tmp_path, {"hostLookahead": "1500ms", "feedPairs": 10,
                                       "bloomJobs": 8}), env={})
    assert (s.host_lookahead, s.feed_pairs, s.bloom_jobs) == (1.5, 10, 8)
    assert Settings().host_start_window == 0.1
    assert load_settings(write(tmp_path, {"hostStartWindow": "250ms"}),
                         env={}).host_start_window == 0.25


def test_commit_cache_key(tmp_path: Path) -> None:
    """Issue 15: commitCache, what a worker's commits keep known (0: nothing)."""
    assert Settings().commit_cache == 50_000
    assert load_settings(write(tmp_path, {"commitCache": 0}), env={}).commit_cache == 0
    with pytest.raises(ConfigError):
        load_settings(write(tmp_path, {"commitCache": -1}), env={})
