"""NATS authentication and TLS (shared/bus.py ``connect(options=NatsOptions)``): a real
nats-server on a free loopback port, started with a user and password, with a token, and with
TLS (a self-signed certificate made by ``openssl req -x509``). With the right options (from the
settings, secrets in files) a tier connects and messages flow; without them the connection is
refused; the URL's credentials never reach the log."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nats
import nats.errors
import nkeys
import pytest
from nats.aio.client import Client as NATS

from harvester_ops.embedded import _stop, _wait_port, free_port, nats_server_bin
from shared import bus
from shared.bus import NatsOptions
from shared.config import load_settings
from tests.polling import until
from tests.tls import self_signed

USER, PASSWORD, TOKEN = "crawler", "nats-test-password-1", "nats-test-token-000001"


@contextmanager
def server(tmp_path: Path, *args: str) -> Iterator[int]:
    """A nats-server (no JetStream) on 127.0.0.1 with ``args``; its port."""
    port = free_port()
    log = tmp_path / f"nats-{port}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([nats_server_bin(), "-a", "127.0.0.1", "-p", str(port), *args],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_port("127.0.0.1", port, proc, 30, log)
            yield port
        finally:
            _stop(proc, signal.SIGTERM, 15)


async def round_trip(url: str, options: NatsOptions | None) -> bytes:
    """Connect as a tier does, and send a message to ourselves through the server."""
    async with bus.connect(url, "test-nats-auth", options=options) as nc:
        return await echo(nc)


async def echo(nc: NATS) -> bytes:
    sub = await nc.subscribe("auth.check")
    await nc.publish("auth.check", b"hello")
    msg = await sub.next_msg(timeout=5)
    return bytes(msg.data)


async def refused(url: str, options: NatsOptions | None) -> None:
    """The server refuses these credentials: one attempt, no reconnecting (a tier's
    ``bus.connect`` would keep trying, logging each refusal: ``test_a_tier_keeps_trying``)."""
    args = (options or NatsOptions()).connect_args()
    with pytest.raises((nats.errors.Error, OSError, asyncio.TimeoutError)):
        nc = await nats.connect(servers=[url], allow_reconnect=False, connect_timeout=2, **args)
        await nc.close()


async def test_user_and_password(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    settings = load_settings(None, {"HARVESTER_NATS_USER": USER,
                                    "HARVESTER_NATS_PASSWORD_FILE": str(tmp_path / "pw")})
    with server(tmp_path, "--user", USER, "--pass", PASSWORD) as port:
        url = f"nats://127.0.0.1:{port}"
        assert await round_trip(url, NatsOptions.from_settings(settings)) == b"hello"
        await refused(url, None)
        await refused(url, NatsOptions(user=USER, password="wrong-password"))
        # Credentials in the URL work too (as before the options existed).
        assert await round_trip(f"nats://{USER}:{PASSWORD}@127.0.0.1:{port}", None) == b"hello"


async def test_token(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    settings = load_settings(None, {"HARVESTER_NATS_TOKEN_FILE": str(tmp_path / "token")})
    with server(tmp_path, "--auth", TOKEN) as port:
        url = f"nats://127.0.0.1:{port}"
        assert await round_trip(url, NatsOptions.from_settings(settings)) == b"hello"
        await refused(url, None)
        await refused(url, NatsOptions(token="not-the-token-0000000"))


def nkey_user(tmp_path: Path, name: str) -> tuple[Path, str]:
    """A fresh NATS user nkey: its seed file (as ``natsNkeyFile`` names it) and public key."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    path = tmp_path / f"{name}.nk"
    path.write_bytes(seed + b"\n")
    return path, nkeys.from_seed(seed).public_key.decode()


async def test_an_nkey_seed_file(tmp_path: Path) -> None:
    seed, public = nkey_user(tmp_path, "crawler")
    other, _ = nkey_user(tmp_path, "stranger")
    conf = tmp_path / "nkey.conf"
    conf.write_text(f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}\n')
    settings = load_settings(None, {"HARVESTER_NATS_NKEY_FILE": str(seed)})
    with server(tmp_path, "-c", str(conf)) as port:
        url = f"nats://127.0.0.1:{port}"
        assert await round_trip(url, NatsOptions.from_settings(settings)) == b"hello"
        await refused(url, None)
        await refused(url, NatsOptions(nkey_file=other))  # a seed the server does not know


async def test_a_tier_keeps_trying_and_logs_no_credentials(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A tier refused by the server keeps trying (the server's users may change), warning about
    # it; its log never shows the password of the URL it was given.
    caplog.set_level(logging.WARNING, logger="shared.bus")
    bus._WARNINGS.clear()  # the warning throttle's memory of other tests
    with server(tmp_path, "--user", USER, "--pass", PASSWORD) as port:
        url = f"nats://{USER}:not-{PASSWORD}@127.0.0.1:{port}"
        task = asyncio.create_task(round_trip(url, None))
        await until(lambda: "Authorization Violation" in caplog.text or task.done(), 20,
                    "the refusal logged")
        assert "Authorization Violation" in caplog.text, caplog.text  # not given up
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert PASSWORD not in caplog.text


async def test_tls_with_the_servers_ca(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    settings = load_settings(None, {"HARVESTER_NATS_TLS_CA_FILE": str(cert)})
    with server(tmp_path, "--tls", "--tlscert", str(cert), "--tlskey", str(key)) as port:
        url = f"tls://127.0.0.1:{port}"
        options = NatsOptions.from_settings(settings)
        # The TLS files are read once, at start: every connect uses that context.
        assert options.connect_args()["tls"] is options.connect_args()["tls"] is not None
        assert await round_trip(url, options) == b"hello"
        # Not trusted by the system's CAs: the self-signed server is refused.
        await refused(url, None)
