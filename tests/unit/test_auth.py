"""web_server.auth: token sources (digests only), the constant-time check over every entry, the
bearer header, and the middleware's open, 401 and 403 answers (on a small app of stand-in
routes: the ownership checks need PostgreSQL and are in tests/e2e/test_auth.py)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from shared.config import Settings
from shared.errors import ConfigError
from web_server import auth
from web_server.app import Runner, create_app
from web_server.middleware import errors

ALICE = "alice-token-0123456789"
ROOT = "root-token-abcdefghijk"
BOB = "bob-token-zyxwvutsrqpo"


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def test_environment_tokens_become_digests() -> None:
    s = Settings(auth_tokens=f"alice:{ALICE},root:{ROOT}:admin")
    keys = auth.load_keys(s)
    assert keys == (auth.Key("alice", digest(ALICE), False), auth.Key("root", digest(ROOT), True))
    assert ALICE not in repr(s) and ALICE not in s.model_dump_json()


def test_config_digests_and_files_are_merged(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text(f"# team\nbob {BOB}\n\nroot {ROOT} admin\n")
    s = Settings(auth_tokens=[{"name": "alice", "sha256": digest(ALICE).hex()}],
                 auth_token_files=[f])
    assert [(k.name, k.admin) for k in auth.load_keys(s)] == [
        ("alice", False), ("bob", False), ("root", True)]
    assert auth.match(auth.load_keys(s), BOB) == auth.Key("bob", digest(BOB), False)


@pytest.mark.parametrize("line", [f"bob {BOB} root", "bob short", f"b@d! {BOB}", f"bob {BOB}\x00"])
def test_a_bad_token_file_line_is_named_without_its_token(tmp_path: Path, line: str) -> None:
    f = tmp_path / "tokens"
    f.write_text(f"ok {ALICE}\n{line}\n")
    with pytest.raises(ConfigError) as e:
        auth.load_keys(Settings(auth_token_files=[f]))
    assert "line 2" in str(e.value)
    assert BOB not in str(e.value)


def test_a_missing_token_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        auth.load_keys(Settings(auth_token_files=[tmp_path / "none"]))


def test_a_name_or_token_twice_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text(f"alice {BOB}\n")
    with pytest.raises(ConfigError, match="name is used twice"):
        auth.load_keys(Settings(auth_tokens=f"alice:{ALICE}", auth_token_files=[f]))
    f.write_text(f"other {ALICE}\n")
    with pytest.raises(ConfigError, match="listed twice"):
        auth.load_keys(Settings(auth_tokens=f"alice:{ALICE}", auth_token_files=[f]))


def test_every_key_is_compared_whatever_matched(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = auth.load_keys(Settings(auth_tokens=f"alice:{ALICE},bob:{BOB},root:{ROOT}:admin"))
    calls: list[bytes] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for token, name in ((ALICE, "alice"), (ROOT, "root"), ("not-a-token-at-all", None)):
        calls.clear()
        key = auth.match(keys, token)
        assert (key.name if key else None) == name
        assert calls == [k.digest for k in keys]  # all of them, in order: no early exit


@pytest.mark.parametrize(("header", "token"), [
    (None, None), ("", ""), ("Basic dXNlcjpwYXNz", ""), ("Bearer", ""), ("Bearer a b", ""),
    (f"Bearer {ALICE}", ALICE), (f"bearer  {ALICE} ", ALICE)])
def test_bearer_header(header: str | None, token: str | None) -> None:
    assert auth.bearer(header) == token


async def _ok(request: web.Request) -> web.Response:
    who = auth.principal(request)
    return web.json_response({"owner": who.owner, "admin": who.admin})


def _app(keys: tuple[auth.Key, ...]) -> web.Application:
    app = web.Application(middlewares=[errors, auth.middleware(keys, "/api")])
    for path in ("/healthz", "/metrics", "/api/ui", "/api/ui/app.js", "/api/jobs", "/api/workers",
                 "/api/sessions/{pool}", "/api/openapi.json"):
        app.router.add_get(path, _ok)
    return app


async def test_middleware_open_paths_401_and_403() -> None:
    keys = auth.load_keys(Settings(auth_tokens=f"alice:{ALICE},root:{ROOT}:admin"))
    async with TestServer(_app(keys), host="127.0.0.1") as server, aiohttp.ClientSession() as http:
        async def get(path: str, token: str | None = None) -> tuple[int, dict[str, str], object]:
            headers = {} if token is None else {"Authorization": f"Bearer {token}"}
            async with http.get(server.make_url(path), headers=headers) as r:
                return r.status, dict(r.headers), await r.json()

        for path in ("/healthz", "/api/ui", "/api/ui/app.js"):
            assert (await get(path))[0] == 200, path
        for path in ("/metrics", "/api/jobs", "/api/openapi.json", "/api/nowhere", "/api/workers"):
            status, headers, body = await get(path)
            assert status == 401, path
            assert headers["WWW-Authenticate"] == 'Bearer realm="harvester"'
            assert body == {"code": "Unauthorized", "message": "A valid bearer token is required"}
        status, headers, body = await get("/api/jobs", "wrong-token-0123456789")
        assert status == 401
        assert headers["WWW-Authenticate"] == 'Bearer realm="harvester", error="invalid_token"'
        assert "wrong-token" not in str(body)
        assert (await get("/api/jobs", ALICE))[2] == {"owner": "alice", "admin": False}
        for path in ("/metrics", "/api/workers", "/api/sessions/p"):
            status, _, body = await get(path, ALICE)
            assert (status, body) == (403, {"code": "Forbidden",
                                            "message": "An admin token is required"}), path
            assert (await get(path, ROOT))[2] == {"owner": "root", "admin": True}


def test_no_tokens_no_middleware() -> None:
    assert create_app(Settings()).middlewares == (errors,) or list(
        create_app(Settings()).middlewares) == [errors]
    assert len(create_app(Settings(auth_tokens=f"alice:{ALICE}")).middlewares) == 2
    assert auth.NOBODY.may_see(None) and auth.NOBODY.may_see("x")
    alice = auth.Principal("alice", False)
    assert alice.may_see("alice") and not alice.may_see("bob") and not alice.may_see(None)


@pytest.mark.parametrize("line", [b"Authorization: Bearer s3cr3t" + b"x" * 9000,
                                  b"GET /?token=s3cr3t" + b"x" * 9000 + b" HTTP/1.1",
                                  b"Authorization: Bearer s3cr3t\x01"])
async def test_aiohttp_own_400s_do_not_echo_header_bytes(
        line: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """A request line or header over aiohttp's 8190 bytes (or malformed) is answered by the
    connection handler; neither its answer nor its log line shows the bytes."""
    caplog.set_level(logging.DEBUG)
    app = web.Application()
    app.router.add_get("/", _ok)
    serving = Runner(app, access_log=None)
    await serving.setup()
    site = web.TCPSite(serving, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = line + b"\r\n\r\n" if line.startswith(b"GET") else (
            b"GET / HTTP/1.1\r\nHost: x\r\n" + line + b"\r\n\r\n")
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read()
        writer.close()
    finally:
        await serving.cleanup()
    assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n", 1)[0]
    assert b"s3cr3t" not in answer and b"xxxx" not in answer
    assert "s3cr3t" not in caplog.text


def test_cli_token_option_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from harvester_ops import jobcli
    from harvester_ops.client import Client
    monkeypatch.delenv("HARVESTER_TOKEN", raising=False)
    assert jobcli.parser().parse_args(["jobs"]).token is None
    assert jobcli.parser().parse_args(["--token", ALICE, "jobs"]).token == ALICE
    monkeypatch.setenv("HARVESTER_TOKEN", BOB)
    assert jobcli.parser().parse_args(["jobs"]).token == BOB
    assert Client("http://127.0.0.1:1", BOB)._headers == {"Authorization": f"Bearer {BOB}"}
    assert Client("http://127.0.0.1:1")._headers == {}


def test_harvester_token_prints_a_usable_token(capsys: pytest.CaptureFixture[str]) -> None:
    from harvester_ops import cli
    assert cli.main(["token", "ops", "--admin"]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    token = lines["token"].strip()
    entry = json.loads(lines["config (authTokens entry)"])
    keys = auth.load_keys(Settings(auth_tokens=[entry]))
    assert auth.match(keys, token) == auth.Key("ops", digest(token), True)
    assert auth.load_keys(Settings(auth_tokens=lines["environment"].split("=", 1)[1])) == keys
