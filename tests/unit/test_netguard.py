"""The SSRF guard's tables and verdicts (shared/netguard.py). Nothing here connects anywhere:
non-loopback addresses are only classified, and the socket factory is called without a connect."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from shared.config import Settings, load_settings
from shared.netguard import (
    AddressBlocked,
    NetGuard,
    NetPolicy,
    classify,
    host_allowed,
    unwrap,
)
from shared.robots import (
    BLOCKED_DENIED,
    BLOCKED_LINK_LOCAL,
    BLOCKED_LOOPBACK,
    BLOCKED_METADATA,
    BLOCKED_MULTICAST,
    BLOCKED_PREFIX,
    BLOCKED_PRIVATE,
    BLOCKED_RESERVED,
    BLOCKED_SERVICE,
    BLOCKED_UNSPECIFIED,
    is_refusal,
)

TABLE = [
    ("127.0.0.1", BLOCKED_LOOPBACK), ("127.255.0.9", BLOCKED_LOOPBACK), ("::1", BLOCKED_LOOPBACK),
    ("0.0.0.0", BLOCKED_UNSPECIFIED), ("0.1.2.3", BLOCKED_UNSPECIFIED), ("::", BLOCKED_UNSPECIFIED),
    ("169.254.169.254", BLOCKED_METADATA), ("169.254.170.2", BLOCKED_METADATA),
    ("100.100.100.200", BLOCKED_METADATA), ("168.63.129.16", BLOCKED_METADATA),
    ("192.0.0.192", BLOCKED_METADATA), ("fd00:ec2::254", BLOCKED_METADATA),
    ("169.254.1.1", BLOCKED_LINK_LOCAL), ("fe80::1", BLOCKED_LINK_LOCAL),
    ("10.0.0.1", BLOCKED_PRIVATE), ("172.16.0.1", BLOCKED_PRIVATE),
    ("172.31.255.255", BLOCKED_PRIVATE), ("192.168.1.1", BLOCKED_PRIVATE),
    ("fc00::1", BLOCKED_PRIVATE), ("fd12:3456::1", BLOCKED_PRIVATE), ("fec0::1", BLOCKED_PRIVATE),
    ("224.0.0.1", BLOCKED_MULTICAST), ("239.1.2.3", BLOCKED_MULTICAST),
    ("ff02::1", BLOCKED_MULTICAST),
    ("100.64.0.1", BLOCKED_RESERVED), ("192.0.0.1", BLOCKED_RESERVED),
    ("192.0.2.1", BLOCKED_RESERVED), ("198.18.0.1", BLOCKED_RESERVED),
    ("198.51.100.1", BLOCKED_RESERVED), ("203.0.113.1", BLOCKED_RESERVED),
    ("240.0.0.1", BLOCKED_RESERVED), ("255.255.255.255", BLOCKED_RESERVED),
    ("2001:db8::1", BLOCKED_RESERVED), ("2001::1", BLOCKED_RESERVED), ("100::1", BLOCKED_RESERVED),
    ("64:ff9b:1::1", BLOCKED_RESERVED),
    ("93.184.215.14", None), ("8.8.8.8", None), ("172.32.0.1", None), ("11.0.0.1", None),
    ("2606:4700::1111", None), ("100.63.255.255", None),
]


@pytest.mark.parametrize(("ip", "reason"), TABLE)
def test_classify_by_the_tables(ip: str, reason: str | None) -> None:
    assert classify(ip) == reason


@pytest.mark.parametrize("wrapped", [
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.1.2.3",  # IPv4-mapped
    "::127.0.0.1", "::10.1.2.3",                                       # IPv4-compatible
    "2002:7f00:1::", "2002:a9fe:a9fe::1", "2002:0a01:0203::",          # 6to4
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::a01:203",       # NAT64
])
def test_an_embedded_ipv4_address_is_judged_as_itself(wrapped: str) -> None:
    inner = str(unwrap(__import__("ipaddress").ip_address(wrapped)))
    assert classify(wrapped) == classify(inner) is not None


def test_a_public_address_wrapped_stays_public() -> None:
    assert classify("::ffff:8.8.8.8") is None
    assert classify("64:ff9b::808:808") is None
    assert classify("2002:0808:0808::1") is None


def test_every_reason_is_a_refusal() -> None:
    for _, reason in TABLE:
        if reason is not None:
            assert reason.startswith(BLOCKED_PREFIX) and is_refusal(reason)
    assert is_refusal("blocked by robots.txt") and is_refusal("robots.txt unreachable")
    assert not is_refusal("HTTP 404") and not is_refusal(None)


def _settings(**kw: object) -> Settings:
    base: dict[str, object] = {"database_url": "postgresql://h:h@127.0.0.1:5999/d",
                               "nats_url": "nats://127.0.0.1:4999", "http_addr": "127.0.0.1:8999"}
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


def test_allow_networks_allow_deny_wins() -> None:
    policy = NetPolicy.from_settings(_settings(allow_networks=("127.0.0.0/8", "10.0.0.0/8"),
                                               deny_networks=("10.9.0.0/16",)))
    assert policy.verdict("127.0.0.2", 80) is None
    assert policy.verdict("::ffff:127.0.0.2", 80) is None  # the unwrapped address allowed too
    assert policy.verdict("10.1.2.3", 443) is None
    assert policy.verdict("10.9.1.1", 443) == BLOCKED_DENIED
    assert policy.verdict("::ffff:10.9.1.1", 443) == BLOCKED_DENIED
    assert policy.verdict("192.168.0.1", 80) == BLOCKED_PRIVATE
    assert policy.verdict("169.254.169.254", 80) == BLOCKED_METADATA
    assert policy.verdict("8.8.8.8", 53) is None


def test_service_ports_refused_on_every_loopback_address_even_when_allowed() -> None:
    policy = NetPolicy.from_settings(_settings(allow_networks=("127.0.0.0/8",)))
    for port in (5999, 4999, 8999):
        assert policy.verdict("127.0.0.1", port) == BLOCKED_SERVICE
        assert policy.verdict("127.0.0.2", port) == BLOCKED_SERVICE
        assert policy.verdict("::ffff:127.0.0.1", port) == BLOCKED_SERVICE
    assert policy.verdict("127.0.0.1", 8998) is None


def test_no_allow_list_refuses_loopback() -> None:
    policy = NetPolicy.from_settings(_settings())
    assert policy.verdict("127.0.0.1", 80) == BLOCKED_LOOPBACK


def test_the_factory_refuses_before_a_socket_exists() -> None:
    guard = NetGuard(NetPolicy.from_settings(_settings(allow_networks=("127.0.0.1/32",))))
    for family, addr in ((socket.AF_INET, ("169.254.169.254", 80)),
                         (socket.AF_INET, ("10.0.0.1", 80)),
                         (socket.AF_INET, ("127.0.0.2", 80)),
                         (socket.AF_INET6, ("::ffff:169.254.169.254", 80, 0, 0)),
                         (socket.AF_INET6, ("fe80::1%1", 80, 0, 1))):
        with pytest.raises(AddressBlocked) as e:
            guard.socket_factory((family, socket.SOCK_STREAM, 6, "", addr))
        assert e.value.reason.startswith(BLOCKED_PREFIX)
    sock = guard.socket_factory((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80)))
    try:
        assert sock.family == socket.AF_INET
        with pytest.raises(OSError):  # an unconnected socket: nothing was sent
            sock.getpeername()
    finally:
        sock.close()


async def test_check_url_on_literals_is_pure() -> None:
    guard = NetGuard(NetPolicy.from_settings(_settings(allow_networks=("127.0.0.1/32",))))
    assert await guard.check_url("http://169.254.169.254/latest/meta-data/") == BLOCKED_METADATA
    assert await guard.check_url("http://[::ffff:a9fe:a9fe]/") == BLOCKED_METADATA
    assert await guard.check_url("http://127.0.0.2:8000/") == BLOCKED_LOOPBACK
    assert await guard.check_url("http://127.0.0.1:8000/") is None
    assert await guard.check_url("http://127.0.0.1:8999/") == BLOCKED_SERVICE
    assert await guard.check_url("http://[fd00::1]/") == BLOCKED_PRIVATE


class NoLookups:
    """A resolver that must not be asked: the answers below need no lookup."""

    async def resolve(self, host: str, port: int = 0, family: object = None) -> list[object]:
        raise AssertionError(f"looked up {host}")

    async def close(self) -> None:
        pass


async def test_literal_refusal_answers_as_check_url_without_a_lookup() -> None:
    # the host gate's fast path: every origin answerable from the literal alone, at once, with
    # the verdict check_url gives; a name is left to check_url (which resolves it)
    guard = NetGuard(NetPolicy.from_settings(_settings(allow_networks=("127.0.0.1/32",))),
                     resolver=NoLookups())  # type: ignore[arg-type]
    for origin, verdict in (("http://169.254.169.254", BLOCKED_METADATA),
                            ("http://[::ffff:a9fe:a9fe]", BLOCKED_METADATA),
                            ("http://127.0.0.2:8000", BLOCKED_LOOPBACK),
                            ("http://127.0.0.1:8000", None), ("http://127.0.0.1:8999", BLOCKED_SERVICE),
                            ("https://[fd00::1]", BLOCKED_PRIVATE),
                            ("http://", None), ("http://[::1", None)):  # let through, unparsed
        for _ in range(2):  # parsed once, then kept: the same answer
            assert guard.literal_refusal(origin) == (True, verdict), origin
        assert await guard.check_url(origin + "/") == verdict, origin
    assert guard.literal_refusal("http://intra.example") == (False, None)


class Answers:
    """A resolver answering from a table, each name asked noted."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int = 0, family: object = None) -> list[object]:
        self.asked.append(host)
        return [{"hostname": host, "host": self.table[host], "port": port,
                 "family": socket.AF_INET, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        pass


async def test_refusals_judge_a_batch_of_hosts_looking_up_only_the_names() -> None:
    # the host gate's question for each batch of visits: literals at once, names resolved
    answers = Answers({"intra.example": "10.1.1.1", "public.example": "93.184.216.34"})
    guard = NetGuard(NetPolicy.from_settings(_settings()), resolver=answers)  # type: ignore[arg-type]
    got = await guard.refusals(["http://127.0.0.1:8000", "http://10.0.0.1", "http://8.8.8.8",
                                "http://intra.example", "http://public.example", "http://[::1"])
    assert got == {"http://127.0.0.1:8000": BLOCKED_LOOPBACK, "http://10.0.0.1": BLOCKED_PRIVATE,
                   "http://intra.example": BLOCKED_PRIVATE}
    assert sorted(answers.asked) == ["intra.example", "public.example"]
    assert await guard.refusals([]) == {}


async def test_literal_refusal_reads_a_pinned_address_anew() -> None:
    # an allowHosts name's address is let through while pinned (its lookup pins it), refused
    # again once the pin lapses: the kept parse of the origin must not keep the verdict
    guard = NetGuard(NetPolicy.from_settings(_settings()))
    assert guard.literal_refusal("http://10.1.2.3") == (True, BLOCKED_PRIVATE)
    guard._pin([{"hostname": "intra.example", "host": "10.1.2.3", "port": 80,
                 "family": socket.AF_INET, "proto": 0, "flags": 0}])
    assert guard.literal_refusal("http://10.1.2.3") == (True, None)
    guard._pinned.clear()
    assert guard.literal_refusal("http://10.1.2.3") == (True, BLOCKED_PRIVATE)


def test_allow_hosts_patterns() -> None:
    assert host_allowed("intra.example", ("intra.example",))
    assert host_allowed("a.b.example", ("*.example",))
    assert not host_allowed("example", ("*.example",))
    assert not host_allowed("evil-example", ("*.example",))


def test_settings_contract() -> None:
    s = load_settings(env={"HARVESTER_ALLOW_NETWORKS": "127.0.0.1, 10.1.0.0/16",
                           "HARVESTER_DENY_NETWORKS": "none",
                           "HARVESTER_NATS_PASSWORD": "very-secret-password"})
    assert s.allow_networks == ("127.0.0.1/32", "10.1.0.0/16") and s.deny_networks == ()
    assert "very-secret-password" not in repr(s)
    assert "very-secret-password" not in s.model_dump_json()
    assert load_settings(env={}).allow_networks == ()


def test_harvester_up_allows_loopback_unless_something_names_an_allow_list(tmp_path: Path) -> None:
    from harvester_ops.supervisor import loopback_by_default
    plain = tmp_path / "plain.json"
    plain.write_text('{"robots": false}')
    named = tmp_path / "named.json"
    named.write_text('{"allowNetworks": []}')
    assert loopback_by_default(None, {})
    assert loopback_by_default(str(plain), {})
    assert not loopback_by_default(str(named), {})
    assert not loopback_by_default(None, {"HARVESTER_ALLOW_NETWORKS": "none"})


def test_a_refusal_is_counted_by_its_bounded_kind() -> None:
    from prometheus_client import REGISTRY

    from shared import metrics
    from shared.robots import BLOCKED_LOOPBACK, TRAP, blocked_kind, redirected

    assert blocked_kind(redirected(BLOCKED_LOOPBACK, "http://127.0.0.1/x")) == "loopback address"
    assert blocked_kind(TRAP + " (URL longer than 2048 characters)") == "crawler trap"

    def n(kind: str) -> float:
        return REGISTRY.get_sample_value("harvester_blocked_total", {"why": kind}) or 0.0

    before = n("crawler trap"), n("loopback address")
    metrics.count_blocked([TRAP + " (path deeper than 32 segments)", TRAP + " (more than 32 "
                           "query parameters)", redirected(BLOCKED_LOOPBACK, "http://x/")])
    assert (n("crawler trap"), n("loopback address")) == (before[0] + 2, before[1] + 1)


def test_a_database_url_over_a_unix_socket_still_refuses_its_port() -> None:
    # `harvester up` gives the tiers libpq's socket form: the port is a query parameter, and
    # the server listens on that port over TCP too (127.0.0.1): never a crawl target.
    for url in ("postgresql://postgres@/harvester?host=/srv/h/pg&port=6543",
                "postgresql://postgres@/harvester?port=6543&host=%2Fsrv%2Fh%2Fpg",
                "postgresql:///harvester?host=127.0.0.1,/tmp&port=6543,6543"):
        policy = NetPolicy.from_settings(_settings(allow_networks=("127.0.0.0/8",),
                                                   database_url=url))
        assert policy.verdict("127.0.0.1", 6543) == BLOCKED_SERVICE, url
        assert policy.verdict("127.0.0.1", 6544) is None
