"""The SSRF guard (issue 17): which addresses a fetch may connect to.

A page's author (or a job's client, or whoever answers a host's DNS) must not make Harvester
connect to the machines behind it: loopback, private and link-local networks, cloud metadata
addresses, Harvester's own PostgreSQL, NATS and API. The check is made on the address a socket
is about to connect to (``NetGuard.socket_factory``, called by aiohappyeyeballs with the exact
``sockaddr`` before ``connect()``: a refused one raises :class:`AddressBlocked`, no SYN is
sent), so IP literals, redirects, robots.txt, sitemaps and DNS rebinding are all covered; the
resolver (``GuardedResolver``) drops refused addresses first so a name with none left fails
with one clean reason. ``check_url`` answers the same question before a fetch (admission).

Tables, not ``ipaddress.is_private`` (Python 3.11's predates the IPv4-mapped fix, and the
kinds name the reason): an IPv6 address embedding an IPv4 one (mapped, compatible, 6to4, NAT64)
is judged by the IPv4 address. ``allowNetworks`` allows (loopback for tests and ``harvester
up``), ``denyNetworks`` refuses whatever else says; an ``allowHosts`` name allows the
addresses it resolves to.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import aiohappyeyeballs
from aiohttp import ClientConnectorError, TCPConnector
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from shared.config import Settings, split_addr
from shared.robots import (
    BLOCKED_DENIED,
    BLOCKED_LINK_LOCAL,
    BLOCKED_LOOPBACK,
    BLOCKED_METADATA,
    BLOCKED_MULTICAST,
    BLOCKED_PRIVATE,
    BLOCKED_RESERVED,
    BLOCKED_SERVICE,
    BLOCKED_UNSPECIFIED,
)
from shared.urls import DEFAULT_PORTS

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# (reason, networks), first match wins: metadata before link-local, and so on.
_TABLE: tuple[tuple[str, tuple[Network, ...]], ...] = tuple(
    (reason, tuple(ipaddress.ip_network(n) for n in nets)) for reason, nets in (
        (BLOCKED_METADATA, ("169.254.169.254/32", "169.254.170.2/32", "100.100.100.200/32",
                            "168.63.129.16/32", "192.0.0.192/32", "fd00:ec2::254/128")),
        (BLOCKED_LOOPBACK, ("127.0.0.0/8", "::1/128")),
        (BLOCKED_UNSPECIFIED, ("0.0.0.0/8", "::/128")),
        (BLOCKED_LINK_LOCAL, ("169.254.0.0/16", "fe80::/10")),
        (BLOCKED_PRIVATE, ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7",
                           "fec0::/10")),
        (BLOCKED_MULTICAST, ("224.0.0.0/4", "ff00::/8")),
        (BLOCKED_RESERVED, ("100.64.0.0/10", "192.0.0.0/24", "192.0.2.0/24", "198.18.0.0/15",
                            "198.51.100.0/24", "203.0.113.0/24", "240.0.0.0/4",
                            "255.255.255.255/32", "2001::/23", "2001:db8::/32", "100::/64",
                            "64:ff9b:1::/48")),
    ))
_COMPAT = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CACHE_SIZE = 4096
_DNS_TTL = 60.0
_UNRESOLVED_TTL = 10.0
_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class AddressBlocked(OSError):
    """A connection the guard refuses; ``reason`` is a ``blocked: ...`` text."""

    def __init__(self, reason: str) -> None:
        super().__init__(errno.EACCES, reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def refused(e: BaseException) -> str | None:
    """The guard's ``blocked: ...`` reason if ``e`` is a connection it refused (an
    :class:`AddressBlocked` in aiohttp's ``ClientConnectorError``), else None."""
    if isinstance(e, ClientConnectorError) and isinstance(e.os_error, AddressBlocked):
        return e.os_error.reason
    return None


def parse_ip(text: str) -> IPAddress | None:
    """An IP address from a sockaddr or URL host ("[::1]", "fe80::1%eth0"); None for a name."""
    host = text.strip("[]").partition("%")[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one embeds (IPv4-mapped, IPv4-compatible, 6to4, NAT64), else
    ``ip`` itself."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip in _COMPAT and int(ip) > 1):  # ::, ::1 are IPv6's own
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def classify(ip: IPAddress | str) -> str | None:
    """The ``blocked: <kind> address`` an address falls in by the tables, None for a public one."""
    addr = parse_ip(ip) if isinstance(ip, str) else ip
    if addr is None:
        raise ValueError(f"not an IP address: {ip!r}")
    addr = unwrap(addr)
    for reason, nets in _TABLE:
        if _within(addr, nets):
            return reason
    return None


def _networks(items: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in items)


def _within(ip: IPAddress, nets: tuple[Network, ...]) -> bool:
    return any(ip in n for n in nets if n.version == ip.version)


def _host_port(url: str, default: int) -> tuple[str, int] | None:
    with_scheme = url if "://" in url else "x://" + url
    try:
        parts = urlsplit(with_scheme)
        return (parts.hostname or "", parts.port or default)
    except ValueError:
        return None


def _database_endpoints(url: str) -> list[tuple[str, int]]:
    """The (host, port) pairs of a libpq URL: the authority's, or libpq's ``host`` and
    ``port`` query parameters (comma lists; a host that is a socket directory gives its port
    alone, as "": the server listens on that port over TCP too)."""
    found = _host_port(url, 5432)
    if found is None:
        return []
    query = parse_qs(urlsplit(url).query)
    hosts = [h for v in query.get("host", ()) for h in v.split(",")] or [found[0]]
    ports = [p for v in query.get("port", ()) for p in v.split(",")]
    out: list[tuple[str, int]] = []
    for i, host in enumerate(hosts):
        port = ports[min(i, len(ports) - 1)] if ports else None
        out.append(("" if host.startswith("/") else host,
                    int(port) if port and port.isdigit() else found[1]))
    return out


def service_endpoints(s: Settings) -> tuple[frozenset[tuple[IPAddress, int]], frozenset[int]]:
    """The addresses and ports of this deployment's PostgreSQL, NATS and API (host names
    resolved once per process: every guard built from the same settings shares the lookup),
    and those ports (refused on any loopback address)."""
    return _endpoints(s.database_url, s.nats_url, s.http_addr, s.database_read_url)


@functools.lru_cache(maxsize=8)
def _endpoints(database_url: str, nats_url: str, http_addr: str, read_url: str | None = None
               ) -> tuple[frozenset[tuple[IPAddress, int]], frozenset[int]]:
    wanted: list[tuple[str, int]] = _database_endpoints(database_url)
    if read_url:
        wanted += _database_endpoints(read_url)
    for url in nats_url.split(","):
        found = _host_port(url.strip(), 4222)
        if found is not None:
            wanted.append(found)
    try:
        wanted.append(split_addr(http_addr))  # ":8080": the port, no endpoint
    except ValueError:
        pass
    endpoints: set[tuple[IPAddress, int]] = set()
    ports: set[int] = set()
    for name, port_ in wanted:
        if not port_:
            continue  # port 0: chosen by the system at start, unknown here
        ports.add(port_)
        ip = parse_ip(name)
        if ip is not None:
            endpoints.add((ip, port_))
        elif name:
            try:
                infos = socket.getaddrinfo(name, port_, type=socket.SOCK_STREAM)
            except OSError:
                continue
            for info in infos:
                found_ip = parse_ip(str(info[4][0]))
                if found_ip is not None:
                    endpoints.add((found_ip, port_))
    return frozenset(endpoints), frozenset(ports)


def host_allowed(host: str, allow_hosts: Iterable[str]) -> bool:
    """Whether a host name is in ``allowHosts`` (``name`` or ``*.suffix``, lower case)."""
    name = host.lower().rstrip(".")
    for pattern in allow_hosts:
        if pattern.startswith("*."):
            if name.endswith(pattern[1:]):
                return True
        elif name == pattern:
            return True
    return False


@dataclass(frozen=True, slots=True, eq=False)
class NetPolicy:
    """The rules: allowed and denied networks, allowed host names, service endpoints."""

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    allow_hosts: tuple[str, ...] = ()
    endpoints: frozenset[tuple[IPAddress, int]] = frozenset()
    service_ports: frozenset[int] = frozenset()  # refused on every loopback address
    lookup_timeout: float = 2.0
    # the verdicts, by (address, port): an LRU cache of ``_judge`` of this policy's own
    _verdicts: Callable[[str, int], str | None] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_verdicts",
                           functools.lru_cache(maxsize=_CACHE_SIZE)(self._judge))

    @classmethod
    def from_settings(cls, s: Settings, extra_hosts: Iterable[str] = ()) -> NetPolicy:
        """The settings' policy; ``extra_hosts`` allowed besides ``allowHosts`` (an IP address
        among them: that address), as the github fetcher's ``githubBaseUrl`` host."""
        endpoints, ports = service_endpoints(s)
        names, literals = [], []
        for h in extra_hosts:
            ip = parse_ip(h)
            if ip is None:
                names.append(h.lower().rstrip("."))
            else:
                literals.append(ipaddress.ip_network(ip))
        return cls(allow=(*_networks(s.allow_networks), *literals),
                   deny=_networks(s.deny_networks),
                   allow_hosts=tuple(dict.fromkeys((*s.allow_hosts, *names))),
                   endpoints=endpoints, service_ports=ports,
                   lookup_timeout=min(2.0, s.connect_timeout))

    def verdict(self, ip: IPAddress | str, port: int) -> str | None:
        """Why a connection to ``ip:port`` is refused, None if it is allowed (cached)."""
        return self._verdicts(str(ip), port)

    def _judge(self, ip: IPAddress | str, port: int) -> str | None:
        addr = parse_ip(ip) if isinstance(ip, str) else ip
        if addr is None:
            raise ValueError(f"not an IP address: {ip!r}")
        inner = unwrap(addr)
        if _within(addr, self.deny) or _within(inner, self.deny):
            return BLOCKED_DENIED
        if ((addr, port) in self.endpoints or (inner, port) in self.endpoints
                or (port in self.service_ports and classify(inner) == BLOCKED_LOOPBACK)):
            return BLOCKED_SERVICE
        if _within(addr, self.allow) or _within(inner, self.allow):
            return None
        return classify(inner)

    def host_allowed(self, host: str) -> bool:
        return bool(self.allow_hosts) and host_allowed(host, self.allow_hosts)


def _target(url: str) -> tuple[str, int, bool] | None:
    """What ``check_url`` judges of ``url``: (the address, port, True) for an IP literal, (the
    name, port, False) for a name, None for what it lets through (no host, not parseable)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host:
        return None
    port = port or DEFAULT_PORTS.get(parts.scheme.lower(), 80)
    ip = parse_ip(host)
    return (host, port, False) if ip is None else (str(ip), port, True)


def _remember(cache: OrderedDict[_K, _V], key: _K, value: _V) -> None:
    """Store ``key`` as the newest of a cache bounded to ``_CACHE_SIZE``, the oldest dropped."""
    cache[key] = value
    cache.move_to_end(key)
    if len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)


class NetGuard:
    """A policy applied: the connector's resolver and socket factory, and a check per URL."""

    def __init__(self, policy: NetPolicy, resolver: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._resolver = resolver
        self._dns: OrderedDict[tuple[str, int], tuple[float, list[ResolveResult]]] = OrderedDict()
        self._pinned: OrderedDict[str, float] = OrderedDict()  # allowHosts addresses: expiry
        self._unresolved: OrderedDict[tuple[str, int], float] = OrderedDict()  # until
        # check_url's parse of each origin asked for (``_target``)
        self._targets: OrderedDict[str, tuple[str, int, bool] | None] = OrderedDict()

    @classmethod
    def from_settings(cls, s: Settings, extra_hosts: Iterable[str] = ()) -> NetGuard:
        return cls(NetPolicy.from_settings(s, extra_hosts))

    def connector(self, **kw: Any) -> TCPConnector:
        """A ``TCPConnector`` whose every connection goes through the guard. Its DNS cache
        (``ttl_dns_cache``) is bounded by half the guard's pin, so aiohttp asks the guard
        again (its own cache answers) before an ``allowHosts`` name's pin can lapse."""
        kw["ttl_dns_cache"] = min(kw.get("ttl_dns_cache") or 10, int(_DNS_TTL) // 2)
        return TCPConnector(resolver=GuardedResolver(self), socket_factory=self.socket_factory,
                            **kw)

    def refusal(self, ip: str, port: int) -> str | None:
        """The verdict on an address about to be connected to, pinned names' addresses let
        through (not past ``denyNetworks`` or a service port)."""
        reason = self.policy.verdict(ip, port)
        if reason is None or reason in (BLOCKED_DENIED, BLOCKED_SERVICE):
            return reason
        addr = str(parse_ip(ip) or ip)
        expiry = self._pinned.get(addr)
        if expiry is not None and expiry > time.monotonic():
            return None
        return reason

    def socket_factory(self, addr_info: tuple[Any, ...]) -> socket.socket:
        """aiohappyeyeballs' socket factory: AddressBlocked before a socket exists for a
        refused address, else a plain socket (the caller connects it)."""
        family, type_, proto, _, address = addr_info
        reason = self.refusal(str(address[0]), int(address[1]))
        if reason is not None:
            raise AddressBlocked(reason)
        return socket.socket(family=family, type=type_, proto=proto)

    async def _lookup(self, host: str, port: int,
                      family: socket.AddressFamily = socket.AF_UNSPEC) -> list[ResolveResult]:
        key = (host, port)
        now = time.monotonic()
        cached = self._dns.get(key)
        if cached is not None and cached[0] > now and family == socket.AF_UNSPEC:
            return cached[1]
        if self._resolver is None:
            self._resolver = DefaultResolver()
        found = await self._resolver.resolve(host, port, family)
        if family == socket.AF_UNSPEC:
            _remember(self._dns, key, (now + _DNS_TTL, found))
        return found

    def _pin(self, results: list[ResolveResult]) -> None:
        expiry = time.monotonic() + _DNS_TTL
        for r in results:
            _remember(self._pinned, str(parse_ip(r["host"]) or r["host"]), expiry)

    async def resolve(self, host: str, port: int,
                      family: socket.AddressFamily = socket.AF_UNSPEC) -> list[ResolveResult]:
        """``host``'s addresses the guard allows; AddressBlocked when it refuses them all."""
        found = await self._lookup(host, port, family)
        if self.policy.host_allowed(host):
            self._pin(found)
        kept: list[ResolveResult] = []
        first: str | None = None
        for r in found:
            reason = self.refusal(r["host"], r["port"] or port)
            if reason is None:
                kept.append(r)
            elif first is None:
                first = reason
        if not kept and first is not None:
            raise AddressBlocked(first)
        return kept

    def literal_refusal(self, origin: str) -> tuple[bool, str | None]:
        """``check_url(origin + "/")`` when it needs no lookup, without a coroutine: (True, its
        answer) for an IP literal (or what it lets through unparsed), (False, None) for a name,
        which ``check_url`` resolves. The parse of each origin (``scheme://host[:port]``) is
        kept (``refusals`` asks for every host of every batch of visits: at 1,000 hosts, as
        often as there are visits), and the verdict on the address is read anew each time (an
        ``allowHosts`` name's addresses are let through only while pinned)."""
        try:
            target = self._targets[origin]
        except KeyError:
            target = _target(origin + "/")
            _remember(self._targets, origin, target)
        if target is None:
            return True, None
        host, port, literal = target
        return (True, self.refusal(host, port)) if literal else (False, None)

    async def refusals(self, origins: Iterable[str]) -> dict[str, str]:
        """Why each of ``origins`` (``scheme://host[:port]``) the guard refuses is refused (those
        it does not refuse are left out): IP literals at once (``literal_refusal``), names
        resolved together (``check_url``, cached). The host gate asks this for every batch of
        visits, every host in it."""
        refused: dict[str, str] = {}
        names: list[str] = []
        for origin in origins:
            literal, reason = self.literal_refusal(origin)
            if not literal:
                names.append(origin)
            elif reason is not None:
                refused[origin] = reason
        if names:
            verdicts = await asyncio.gather(*(self.check_url(n + "/") for n in names))
            refused.update({n: r for n, r in zip(names, verdicts, strict=True) if r is not None})
        return refused

    async def check_url(self, url: str) -> str | None:
        """Why fetching ``url`` would be refused, None if it would not (or cannot be known:
        a name that does not resolve in time is left to the fetch, which says why)."""
        target = _target(url)
        if target is None:
            return None
        host, port, literal = target
        if literal:
            return self.refusal(host, port)
        key = (host, port)
        if self._unresolved.get(key, 0.0) > time.monotonic():
            return None  # asked lately in vain: the fetch will say why, without a wait here
        try:
            async with asyncio.timeout(self.policy.lookup_timeout):
                await self.resolve(host, port)
        except AddressBlocked as e:
            return e.reason
        except (OSError, TimeoutError):
            _remember(self._unresolved, key, time.monotonic() + _UNRESOLVED_TTL)
        return None

    async def open_connection(self, host: str, port: int
                              ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A guarded TCP connection to ``host:port`` (the browser's SOCKS relay), made as the
        connector makes one: a name resolved by :meth:`resolve` (refused addresses dropped,
        AddressBlocked if none is left), its addresses raced (happy eyeballs) through
        :meth:`socket_factory` (a refused one never connected to). The caller bounds it."""
        ip = parse_ip(host)
        found = ([(str(ip), port)] if ip is not None
                 else [(r["host"], r["port"] or port) for r in await self.resolve(host, port)])
        infos = [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (a, p, 0, 0))
                 if ":" in a else
                 (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (a, p))
                 for a, p in found]  # as aiohttp's connector makes them
        if not infos:
            raise OSError(errno.EHOSTUNREACH, f"{host}: no address")
        sock = await aiohappyeyeballs.start_connection(
            infos, happy_eyeballs_delay=0.25, socket_factory=self.socket_factory)
        return await asyncio.open_connection(sock=sock)


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver through a :class:`NetGuard`: refused addresses dropped."""

    def __init__(self, guard: NetGuard) -> None:
        self._guard = guard

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return await self._guard.resolve(host, port, family)

    async def close(self) -> None:
        return None
