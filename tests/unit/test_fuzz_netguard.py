"""Fuzzing the SSRF guard's verdicts (shared/netguard.py ``NetPolicy.verdict``): an IPv4 address
is judged the same however it is written, IPv4-mapped (``::ffff:a.b.c.d``), IPv4-compatible
(``::a.b.c.d``), 6to4 (``2002:AABB:CCDD::``) or NAT64 (``64:ff9b::a.b.c.d``), under any allow- and
deny-list, service ports included; and any address of either family gets a verdict, never an
exception. Nothing here connects anywhere."""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.config import Settings
from shared.netguard import NetPolicy, classify

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SERVICES = {"database_url": "postgresql://u@127.0.0.1:5432/h", "nats_url": "nats://127.0.0.1:4222",
            "http_addr": "127.0.0.1:8080"}

NETWORKS = st.builds(lambda ip, n: str(ipaddress.ip_network(f"{ip}/{n}", strict=False)),
                     st.ip_addresses(v=4), st.integers(0, 32))
# Addresses near the interesting ranges as well as anywhere.
INTERESTING = st.sampled_from(["127.0.0.1", "10.1.2.3", "169.254.169.254", "172.16.0.1",
                               "192.168.0.1", "100.64.0.1", "0.0.0.0", "0.0.0.1", "0.0.0.2",
                               "224.0.0.1", "255.255.255.255", "8.8.8.8", "192.0.0.192"])
IPV4 = st.ip_addresses(v=4) | INTERESTING.map(ipaddress.IPv4Address)
PORTS = st.sampled_from([80, 443, 5432, 4222, 8080]) | st.integers(1, 65535)


def forms(ip: ipaddress.IPv4Address) -> list[str]:
    n = int(ip)
    out = [str(ip), f"::ffff:{ip}", str(ipaddress.IPv6Address((0x2002 << 112) | (n << 80))),
           str(ipaddress.IPv6Address((0x64FF9B << 96) | n))]
    if n > 1:  # "::" and "::1" are IPv6's own unspecified and loopback addresses
        out.append(str(ipaddress.IPv6Address(n)))
    return out


@FUZZ
@given(IPV4, PORTS, st.lists(NETWORKS, max_size=3), st.lists(NETWORKS, max_size=2))
def test_an_ipv4_address_is_judged_alike_in_every_form(
        ip: ipaddress.IPv4Address, port: int, allow: list[str], deny: list[str]) -> None:
    policy = NetPolicy.from_settings(Settings(allow_networks=tuple(allow),
                                              deny_networks=tuple(deny), **SERVICES))
    verdicts = {form: policy.verdict(form, port) for form in forms(ip)}
    assert len(set(verdicts.values())) == 1, verdicts


@FUZZ
@given(st.ip_addresses(), PORTS)
def test_every_address_gets_a_verdict(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                                      port: int) -> None:
    policy = NetPolicy.from_settings(Settings(**SERVICES))
    reason = policy.verdict(str(ip), port)
    assert reason is None or reason.startswith("blocked: ")
    assert reason == policy.verdict(f"[{ip}]" if ip.version == 6 else str(ip), port)
    if reason is None:  # no allow-list: what the tables allow, only public addresses
        assert classify(ip) is None
