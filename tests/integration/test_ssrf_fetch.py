"""The SSRF guard on the fetch path (shared/netguard.py in worker/fetchers/http.py, worker/gate.py,
foreman/webhooks.py): with the allow-list narrowed to 127.0.0.1/32, a hit-counting canary on
127.0.0.2 stands for every address the guard refuses. Every connection stays on loopback."""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import aiohttp.connector
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from prometheus_client import REGISTRY

from shared import netguard
from shared.config import Settings
from shared.db.pool import open_pool
from shared.netguard import NetGuard, NetPolicy
from shared.robots import BLOCKED_LOOPBACK, BLOCKED_SERVICE, redirected
from tests.integration.conftest import StartServer
from worker import logins
from worker.fetchers.http import fetch, open_session
from worker.gate import HostGate
from worker.sessions import SessionStore


@dataclass
class Site:
    """A loopback host answering ``pages[path] -> (status, headers)``, counting requests."""
    host: str = "127.0.0.1"
    pages: dict[str, tuple[int, dict[str, str]]] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)
    base: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        status, headers = self.pages.get(request.path, (200, {}))
        return web.Response(status=status, headers=headers, text="<a href='/x'>x</a>",
                            content_type="text/html")

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])


Start = Callable[[Site], Awaitable[Site]]


@pytest.fixture
def start(start_server: StartServer) -> Start:
    async def run(site: Site) -> Site:
        site.base = await start_server(site.handle, site.host)
        return site

    return run


@pytest.fixture
def narrow(settings: Settings) -> Settings:
    """Only 127.0.0.1 allowed: 127.0.0.2 is refused as any loopback address would be."""
    return settings.model_copy(update={"allow_networks": ("127.0.0.1/32",), "connect_timeout": 1,
                                       "read_timeout": 2, "max_redirects": 3})


async def get(s: Settings, url: str, guard: NetGuard | None = None,
              hops: HostGate | None = None) -> tuple[int | None, str | None, bool]:
    async with open_session(s, guard=guard) as session:
        page = await fetch(session, s, 1, url, hops=hops)
    return page.status, page.error, page.permanent


async def test_an_ip_literal_on_a_refused_address_is_never_connected_to(
        narrow: Settings, start: Start) -> None:
    canary = await start(Site("127.0.0.2"))
    ok = await start(Site())
    assert await get(narrow, canary.base + "/") == (None, BLOCKED_LOOPBACK, True)
    assert await get(narrow, f"http://[::ffff:127.0.0.2]:{canary.port}/") == (
        None, BLOCKED_LOOPBACK, True)
    assert canary.paths == []
    assert (await get(narrow, ok.base + "/"))[:2] == (200, None)  # the allowed one answers


async def test_a_redirect_to_a_refused_address_stops_before_it(
        narrow: Settings, start: Start) -> None:
    canary = await start(Site("127.0.0.2"))
    target = canary.base + "/secret"
    ok = await start(Site(pages={"/go": (302, {"Location": target})}))
    assert await get(narrow, ok.base + "/go") == (
        None, redirected(BLOCKED_LOOPBACK, target), True)
    # through the gate's hop admission too (the way a worker fetches)
    async with open_pool(narrow.database_url, max_size=2) as pool, \
            open_session(narrow) as session:
        gate = HostGate(narrow, pool, session, NetGuard.from_settings(narrow))
        assert await get(narrow, ok.base + "/go", hops=gate) == (
            None, redirected(BLOCKED_LOOPBACK, target), True)
        await gate.close()
    assert canary.paths == [] and ok.paths == ["/go", "/go"]


def _blocked(kind: str) -> float:
    return REGISTRY.get_sample_value("harvester_blocked_total", {"why": kind}) or 0.0


async def test_admission_blocks_before_robots_txt(narrow: Settings, start: Start) -> None:
    polite = narrow.model_copy(update={"robots": True})
    canary = await start(Site("127.0.0.2"))
    async with open_pool(polite.database_url, max_size=2) as pool, \
            open_session(polite) as session:
        gate = HostGate(polite, pool, session, NetGuard.from_settings(polite))
        before = _blocked("loopback address")
        out = await gate.admit({(1, 1): canary.base + "/a", (1, 2): canary.base + "/b"})
        assert out.blocked == {(1, 1): BLOCKED_LOOPBACK, (1, 2): BLOCKED_LOOPBACK}
        assert not out.granted and not out.deferred
        assert _blocked("loopback address") == before + 2  # one per visit admission ends
        assert await gate.admit_hop(canary.base + "/c", True, 1e12) == BLOCKED_LOOPBACK
        # a refused hop is counted once, with the visit it ends (Pipeline._steps), not here
        assert _blocked("loopback address") == before + 2
        await gate.close()
    assert canary.paths == []  # not even its robots.txt


async def test_robots_txt_and_sitemaps_never_reach_a_refused_address(
        narrow: Settings, start: Start) -> None:
    canary = await start(Site("127.0.0.2"))
    ok = await start(Site(pages={"/robots.txt": (301, {"Location": canary.base + "/robots.txt"}),
                                 "/sitemap.xml": (302, {"Location": canary.base + "/s.xml"})}))
    async with open_pool(narrow.database_url, max_size=2) as pool, \
            open_session(narrow, guard=NetGuard.from_settings(narrow)) as session:
        gate = HostGate(narrow, pool, session, NetGuard.from_settings(narrow))
        answer = await gate._fetch_robots(ok.base)
        assert answer.status is None and answer.failed  # refused: no answer, as unreachable
        assert await gate._fetch_sitemap(canary.base + "/sitemap.xml", None) is None
        assert await gate._fetch_sitemap(ok.base + "/sitemap.xml", None) is None
        await gate.close()
    assert canary.paths == []
    assert ok.paths == ["/robots.txt", "/sitemap.xml"]


async def test_a_service_port_is_refused_on_every_loopback_address(
        settings: Settings, start: Start) -> None:
    api = await start(Site())  # stands for the web server: its port is http_addr's
    s = settings.model_copy(update={"http_addr": f"127.0.0.1:{api.port}", "connect_timeout": 1})
    assert await get(s, api.base + "/") == (None, BLOCKED_SERVICE, True)
    assert await get(s, f"http://localhost:{api.port}/") == (None, BLOCKED_SERVICE, True)
    db_port = int(s.database_url.rsplit(":", 1)[1].split("/", 1)[0])
    assert await get(s, f"http://127.0.0.1:{db_port}/") == (None, BLOCKED_SERVICE, True)
    nats_port = int(s.nats_url.rsplit(":", 1)[1])
    assert await get(s, f"http://127.0.0.3:{nats_port}/") == (None, BLOCKED_SERVICE, True)
    assert api.paths == []


class Rebinding(AbstractResolver):
    """A DNS that answers every name with ``address`` (a name that resolves to loopback)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.asked.append(host)
        return [ResolveResult(hostname=host, host=self.address, port=port,
                              family=socket.AF_INET, proto=0, flags=0)]

    async def close(self) -> None:
        return None


async def test_a_name_resolving_to_a_refused_address_is_refused_unless_allowed_by_name(
        narrow: Settings, start: Start) -> None:
    canary = await start(Site("127.0.0.2"))
    dns = Rebinding("127.0.0.2")
    guard = NetGuard(NetPolicy.from_settings(narrow), resolver=dns)
    url = f"http://evil.test:{canary.port}/"
    assert await guard.check_url(url) == BLOCKED_LOOPBACK
    assert await get(narrow, url, guard) == (None, BLOCKED_LOOPBACK, True)
    assert canary.paths == [] and "evil.test" in dns.asked
    # robots.txt redirected to that name: a failure (unreachable), not "no server at all"
    ok = await start(Site(pages={"/robots.txt": (301, {"Location": url + "robots.txt"})}))
    async with open_pool(narrow.database_url, max_size=2) as pool, \
            open_session(narrow, guard=guard) as session:
        gate = HostGate(narrow, pool, session, guard)
        answer = await gate._fetch_robots(ok.base)
        assert answer.failed and answer.unresolved is None
        await gate.close()
    assert canary.paths == [] and ok.paths == ["/robots.txt"]
    named = narrow.model_copy(update={"allow_hosts": ("*.corp.test",)})
    trusted = NetGuard(NetPolicy.from_settings(named), resolver=Rebinding("127.0.0.2"))
    status, error, _ = await get(named, f"http://intra.corp.test:{canary.port}/page", trusted)
    assert (status, error) == (200, None) and canary.paths == ["/page"]


async def test_an_allowed_name_stays_allowed_after_its_pin_would_have_lapsed(
        narrow: Settings, start: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp asks the guard again before the pin of an allowHosts name's addresses
    lapses: a new connection minutes later is not refused on an address still cached."""
    canary = await start(Site("127.0.0.2", pages={"/page": (200, {"Connection": "close"})}))
    named = narrow.model_copy(update={"allow_hosts": ("*.corp.test",)})
    dns = Rebinding("127.0.0.2")
    guard = NetGuard(NetPolicy.from_settings(named), resolver=dns)
    shift = [0.0]

    def clock() -> float:
        return time.monotonic() + shift[0]

    monkeypatch.setattr(netguard, "time", SimpleNamespace(monotonic=clock))
    monkeypatch.setattr(aiohttp.connector, "monotonic", clock)
    url = f"http://intra.corp.test:{canary.port}/page"
    async with open_session(named, guard=guard) as session:
        first = await fetch(session, named, 1, url)
        shift[0] = 61.0  # past the guard's pin (60 s), within aiohttp's own cache before
        again = await fetch(session, named, 1, url)
    assert (first.status, first.error) == (200, None)
    assert (again.status, again.error) == (200, None)
    assert canary.paths == ["/page", "/page"] and dns.asked.count("intra.corp.test") == 2



async def test_the_login_task_never_reaches_a_refused_address(
        narrow: Settings, start: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    canary = await start(Site("127.0.0.2"))
    monkeypatch.setenv("H1_USER", "user")
    monkeypatch.setenv("H1_PASS", "password")
    monkeypatch.setattr(logins, "_guard", NetGuard.from_settings(narrow))
    async with open_pool(narrow.database_url, max_size=2) as pool:
        with pytest.raises(logins.LoginFailed, match=BLOCKED_LOOPBACK):
            await logins.form_login(SessionStore(pool), "p", "n", canary.base + "/login",
                                    "H1_USER", "H1_PASS")
    assert canary.paths == []
