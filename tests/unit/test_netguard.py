"""The outbound guard with an injected resolver: no DNS, no sockets."""

from __future__ import annotations

import ipaddress

import pytest

from shared.core.errors import BlockedTargetError
from shared.delivery.netguard import check_url, parse_cidrs


def resolves_to(*addresses: str):
    calls: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return list(addresses)

    resolver.calls = calls  # type: ignore[attr-defined]
    return resolver


def test_a_public_address_passes_and_is_the_one_connected_to():
    resolver = resolves_to("93.184.216.34", "2606:2800:220:1::1")

    target = check_url("https://hooks.example.com/in?x=1", resolver=resolver)

    assert (target.scheme, target.host, target.port) == ("https", "hooks.example.com", 443)
    assert target.address == "93.184.216.34"
    assert target.path == "/in?x=1"
    assert target.host_header == "hooks.example.com"
    assert resolver.calls == [("hooks.example.com", 443)]


def test_a_non_default_port_is_kept_in_the_host_header():
    target = check_url("http://hooks.example.com:8443", resolver=resolves_to("93.184.216.34"))
    assert (target.port, target.path, target.host_header) == (8443, "/", "hooks.example.com:8443")


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.5.6.7", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.9", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "special-purpose"),
        ("100.127.255.254", "special-purpose"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),  # noqa: S104  # a refused target, not a bind
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("::ffff:127.0.0.1", "IPv4-mapped"),
        ("::ffff:8.8.8.8", "IPv4-mapped"),
        ("64:ff9b::a00:1", "reserved"),
        ("198.18.0.1", "private"),
        ("192.0.0.8", "special-purpose"),
        ("2002:a00:1::1", "special-purpose"),
        ("192.0.2.10", "private"),
    ],
)
def test_non_public_addresses_are_refused(address, reason):
    with pytest.raises(BlockedTargetError) as info:
        check_url("http://victim.example.com/", resolver=resolves_to(address))
    assert f"resolves to {ipaddress.ip_address(address)}, " in info.value.detail
    assert reason in info.value.detail
    assert "OUTBOUND_ALLOW_CIDRS" in info.value.detail


def test_one_private_address_among_public_ones_refuses_the_host():
    with pytest.raises(BlockedTargetError, match=r"resolves to 10\.0\.0\.5, a private address"):
        check_url("http://mixed.example.com/", resolver=resolves_to("93.184.216.34", "10.0.0.5"))


def test_the_allow_list_admits_exactly_its_ranges():
    allow = parse_cidrs(["127.0.0.0/8", "10.20.0.0/16"])

    assert check_url("http://a.test/", allow, resolves_to("127.0.0.1")).address == "127.0.0.1"
    assert check_url("http://a.test/", allow, resolves_to("10.20.3.4")).address == "10.20.3.4"
    with pytest.raises(BlockedTargetError, match=r"10\.21\.0\.1"):
        check_url("http://a.test/", allow, resolves_to("10.21.0.1"))
    with pytest.raises(BlockedTargetError, match="IPv4-mapped"):
        check_url("http://a.test/", allow, resolves_to("::ffff:127.0.0.1"))


def test_an_ip_literal_is_checked_like_a_name():
    resolver = resolves_to("169.254.169.254")
    with pytest.raises(BlockedTargetError, match="link-local"):
        check_url("http://169.254.169.254/latest/meta-data/", resolver=resolver)
    assert resolver.calls == [("169.254.169.254", 80)]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", "only http:// and https://"),
        ("file:///etc/passwd", "only http:// and https://"),
        ("gopher://example.com", "only http:// and https://"),
        ("http:///nohost", "no host"),
        ("http://user:pw@example.com/", "credentials"),
        ("http://example.com:99999/", "not a valid URL"),
        ("http://example.com/" + "a" * 3000, "longer than 2048"),
    ],
)
def test_malformed_or_foreign_urls_are_refused_before_any_lookup(url, message):
    resolver = resolves_to("93.184.216.34")
    with pytest.raises(BlockedTargetError, match=message):
        check_url(url, resolver=resolver)
    assert resolver.calls == []


def test_a_host_that_resolves_to_nothing_is_refused():
    with pytest.raises(BlockedTargetError, match="resolves to no address"):
        check_url("http://empty.example.com/", resolver=resolves_to())
