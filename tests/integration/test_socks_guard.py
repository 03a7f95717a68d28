"""The browser's SOCKS5 relay through the SSRF guard (worker/fetchers/socks_guard.py,
``NetGuard.open_connection``), spoken to byte by byte: with the allow-list narrowed to
127.0.0.1/32, a connection-counting canary on 127.0.0.2 stands for every address the guard
refuses. A CONNECT to an allowed server pipes both ways; one to a refused address (literal or
resolved) answers 0x02, is recorded, and never reaches the canary; a slow or malformed
handshake is closed by its deadline; BIND, UDP ASSOCIATE and authentication are refused; the
relay keeps its bounds. Every connection stays on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from shared.config import Settings
from shared.netguard import AddressBlocked, NetGuard, NetPolicy
from shared.robots import BLOCKED_LOOPBACK
from worker.fetchers import socks_guard
from worker.fetchers.socks_guard import SocksGuard

pytestmark = pytest.mark.timeout(60)

NARROW = Settings(allow_networks=("127.0.0.1/32",), connect_timeout=2)
WAIT = 10.0  # generous: a loaded 2-core machine still answers well within it


@dataclass
class Canary:
    """A TCP server counting the connections it accepts; each gets a short HTTP answer (or,
    with ``echo``, its lines back in upper case until it closes)."""
    host: str
    echo: bool = False
    hits: int = 0
    port: int = 0
    server: asyncio.Server | None = None
    seen: list[bytes] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> Canary:
        self.server = await asyncio.start_server(self._serve, self.host, 0, limit=1 << 20)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.hits += 1
        try:
            if self.echo:
                while line := await reader.readline():
                    self.seen.append(line)
                    writer.write(line.upper())
                    await writer.drain()
            else:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: 6\r\nConnection: close\r\n\r\ncanary")
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def canary() -> AsyncIterator[Canary]:
    c = await Canary("127.0.0.2").start()
    yield c
    await c.stop()


@pytest.fixture
async def echo() -> AsyncIterator[Canary]:
    c = await Canary("127.0.0.1", echo=True).start()
    yield c
    await c.stop()


class Names(AbstractResolver):
    """A resolver answering from a table (a DNS owner's names), never the network."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: not known")
        return [ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET, proto=0,
                              flags=0) for a in self.table[host]]

    async def close(self) -> None:
        return None


def guard(names: dict[str, list[str]] | None = None) -> NetGuard:
    return NetGuard(NetPolicy.from_settings(NARROW), Names(names or {}))


@pytest.fixture
async def relay() -> AsyncIterator[SocksGuard]:
    async with SocksGuard(guard({"ok.test": ["127.0.0.1"], "evil.test": ["127.0.0.2"],
                                 "both.test": ["127.0.0.2", "127.0.0.1"]}),
                          connect_timeout=5, handshake_timeout=0.5) as r:
        yield r


def request(host: str, port: int, command: int = 0x01) -> bytes:
    """A SOCKS5 request for ``host:port``: an IPv4 address or a name."""
    try:
        addr = b"\x01" + ipaddress.IPv4Address(host).packed
    except ValueError:
        addr = b"\x03" + bytes((len(host),)) + host.encode()
    return bytes((5, command, 0)) + addr + struct.pack("!H", port)


async def connect(relay: SocksGuard, host: str, port: int, command: int = 0x01
                  ) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter]:
    """Greet (no authentication), ask; the reply code and the open connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(b"\x05\x01\x00")
    assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"\x05\x00"
    writer.write(request(host, port, command))
    reply = await asyncio.wait_for(reader.readexactly(10), WAIT)
    assert reply[0] == 5 and reply[3] == 1
    return reply[1], reader, writer


async def closed(reader: asyncio.StreamReader) -> bytes:
    """What is left to read until the relay closes the connection (bounded: a relay that
    keeps it open fails the test); closed with unread bytes, it is reset: nothing left."""
    try:
        return await asyncio.wait_for(reader.read(), WAIT)
    except ConnectionResetError:
        return b""


async def test_a_connect_to_an_allowed_server_pipes_both_ways(relay: SocksGuard,
                                                              echo: Canary) -> None:
    for host in ("127.0.0.1", "ok.test"):  # an address, or a name resolved by the relay
        code, reader, writer = await connect(relay, host, echo.port)
        assert code == 0x00
        writer.write(b"hello\n")
        assert await asyncio.wait_for(reader.readline(), WAIT) == b"HELLO\n"
        big = b"x" * 300_000 + b"\n"  # more than a buffer's worth, both ways
        writer.write(big)
        assert await asyncio.wait_for(reader.readexactly(len(big)), WAIT) == big.upper()
        writer.close()
    assert echo.hits == 2 and echo.seen[0] == b"hello\n"
    # A name with a refused address and an allowed one: the allowed one is used.
    code, reader, writer = await connect(relay, "both.test", echo.port)
    assert code == 0x00 and echo.hits == 3
    writer.close()
    assert relay.failure("both.test", echo.port) is None


async def test_a_connect_to_a_refused_address_gets_0x02_and_never_reaches_it(
        relay: SocksGuard, canary: Canary) -> None:
    for host in ("127.0.0.2", "evil.test"):  # a literal, a name resolving to it
        code, reader, writer = await connect(relay, host, canary.port)
        assert code == 0x02  # connection not allowed by ruleset
        assert await closed(reader) == b""
        writer.close()
        assert relay.failure(host, canary.port) == BLOCKED_LOOPBACK
        assert relay.failure(host.upper() + ".", canary.port) == BLOCKED_LOOPBACK  # as a URL
    assert relay.failure("127.0.0.2", canary.port + 1) is None  # another port: not seen
    await asyncio.sleep(0.2)  # a connection that got through would have been accepted
    assert canary.hits == 0


async def test_other_failures_are_recorded_by_chromiums_name(relay: SocksGuard) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _reader, writer = await connect(relay, "127.0.0.1", port)
    assert code == 0x05 and relay.failure("127.0.0.1", port) == "net::ERR_CONNECTION_REFUSED"
    writer.close()
    code, _reader, writer = await connect(relay, "nowhere.test", 80)
    assert code == 0x04 and relay.failure("nowhere.test", 80) == "net::ERR_NAME_NOT_RESOLVED"
    writer.close()


async def test_a_slow_or_malformed_handshake_is_closed(relay: SocksGuard,
                                                       echo: Canary) -> None:
    silent_reader, silent = await asyncio.open_connection("127.0.0.1", relay.port)
    assert await closed(silent_reader) == b""  # nothing sent: closed at the deadline (0.5 s)
    half_reader, half = await asyncio.open_connection("127.0.0.1", relay.port)
    half.write(b"\x05\x01\x00\x05\x01")  # greeted, then the request stops midway
    assert await closed(half_reader) == b"\x05\x00"
    socks4_reader, socks4 = await asyncio.open_connection("127.0.0.1", relay.port)
    socks4.write(b"\x04\x01" + struct.pack("!H", echo.port) + bytes((127, 0, 0, 1)) + b"\x00")
    assert await closed(socks4_reader) == b""
    for w in (silent, half, socks4):
        w.close()
    assert echo.hits == 0


async def test_bind_udp_and_authentication_are_refused(relay: SocksGuard,
                                                       echo: Canary) -> None:
    for command in (0x02, 0x03):  # BIND, UDP ASSOCIATE
        code, reader, writer = await connect(relay, "127.0.0.1", echo.port, command)
        assert code == 0x07  # command not supported
        assert await closed(reader) == b""
        writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(b"\x05\x01\x02")  # only username/password offered
    assert await closed(reader) == b"\x05\xff"  # no acceptable method
    writer.close()
    assert echo.hits == 0


async def test_the_relay_keeps_its_bounds(echo: Canary, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.setattr(socks_guard, "RECORDS", 3)
    async with SocksGuard(guard(), connect_timeout=5, max_clients=2) as relay:
        held = [await asyncio.open_connection("127.0.0.1", relay.port) for _ in range(2)]
        for _, w in held:
            w.write(b"\x05")  # a handshake under way: the client is counted
        await asyncio.sleep(0.2)
        extra_reader, extra = await asyncio.open_connection("127.0.0.1", relay.port)
        extra.write(b"\x05\x01\x00")
        assert await closed(extra_reader) == b""  # over the bound: closed at once
        for _, w in held:
            w.close()
        await asyncio.sleep(0.2)
        for port in range(1, 6):  # five refused endpoints, three remembered
            code, _reader, writer = await connect(relay, "127.0.0.2", port)
            assert code == 0x02
            writer.close()
        assert list(relay.refused) == [("127.0.0.2", p) for p in (3, 4, 5)]
        code, _reader, writer = await connect(relay, "127.0.0.1", echo.port)  # room again
        assert code == 0x00
        writer.close()
    # Closed: in-flight pipes ended, the port no longer answers.
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", relay.port)


async def test_open_connection_goes_through_the_guard(canary: Canary, echo: Canary) -> None:
    g = guard({"evil.test": ["127.0.0.2"], "ok.test": ["127.0.0.1"]})
    for host in ("127.0.0.2", "::ffff:127.0.0.2", "evil.test"):
        with pytest.raises(AddressBlocked) as refused:
            await g.open_connection(host, canary.port)
        assert refused.value.reason == BLOCKED_LOOPBACK
    reader, writer = await g.open_connection("ok.test", echo.port)
    writer.write(b"x\n")
    assert await asyncio.wait_for(reader.readline(), WAIT) == b"X\n"
    writer.close()
    await asyncio.sleep(0.2)
    assert canary.hits == 0 and echo.hits == 1
