"""Egress destination policy: rule parsing, canonical addresses, classification, decisions."""
from __future__ import annotations

import ipaddress
import struct
import time

import pytest

from aarm_sandbox.net.destinations import (
    BROKER, DENY, INSIDE, DestSpec, DestSpecError, Destinations, canonical_ip, classify,
    parse_spec, sockaddr_to_ip_port,
)

AF_INET, AF_INET6 = 2, 10


def sockaddr_in(ip: str, port: int, zero: bytes = bytes(8)) -> bytes:
    return struct.pack("<H", AF_INET) + struct.pack(">H", port) + ipaddress.IPv4Address(ip).packed + zero


def sockaddr_in6(ip: str, port: int, flowinfo: int = 0, scope_id: int = 0) -> bytes:
    return (struct.pack("<H", AF_INET6) + struct.pack(">H", port) + struct.pack(">I", flowinfo)
            + ipaddress.IPv6Address(ip).packed + struct.pack("<I", scope_id))


def decide_sockaddr(dest: Destinations, raw: bytes, proto: str = "tcp",
                    names: frozenset[str] = frozenset()):
    parsed = sockaddr_to_ip_port(raw)
    assert parsed is not None
    _, ip, port = parsed
    return dest.decide(ip, port, proto, names)


# --- parsing ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, canonical, protos, ports, kind", [
    ("example.com", "example.com", {"tcp", "udp"}, (0, 65535), "name"),
    ("Example.COM.:443", "example.com:443", {"tcp", "udp"}, (443, 443), "name"),
    ("tcp://api.example.com:8000-8100", "tcp://api.example.com:8000-8100", {"tcp"}, (8000, 8100), "name"),
    ("UDP://dns.example:53", "udp://dns.example:53", {"udp"}, (53, 53), "name"),
    ("*.example.com", "*.example.com", {"tcp", "udp"}, (0, 65535), "subdomains"),
    ("*", "*", {"tcp", "udp"}, (0, 65535), "any-name"),
    ("*:443", "*:443", {"tcp", "udp"}, (443, 443), "any-name"),
    ("10.0.0.5", "10.0.0.5", {"tcp", "udp"}, (0, 65535), "address"),
    ("127.0.0.1:5432", "127.0.0.1:5432", {"tcp", "udp"}, (5432, 5432), "address"),
    ("[::1]:5432", "[::1]:5432", {"tcp", "udp"}, (5432, 5432), "address"),
    ("::1", "::1", {"tcp", "udp"}, (0, 65535), "address"),
    ("[2001:DB8::1]", "2001:db8::1", {"tcp", "udp"}, (0, 65535), "address"),
    ("10.0.0.0/8", "10.0.0.0/8", {"tcp", "udp"}, (0, 65535), "network"),
    ("[fd00::/8]:443", "[fd00::/8]:443", {"tcp", "udp"}, (443, 443), "network"),
    ("fd00::/8", "fd00::/8", {"tcp", "udp"}, (0, 65535), "network"),
    ("0.0.0.0/0", "0.0.0.0/0", {"tcp", "udp"}, (0, 65535), "network"),
    ("::/0", "::/0", {"tcp", "udp"}, (0, 65535), "network"),
    ("  udp://1.1.1.1:53  ", "udp://1.1.1.1:53", {"udp"}, (53, 53), "address"),
])
def test_parse_spec_accepts_and_canonicalises(text, canonical, protos, ports, kind):
    spec = parse_spec(text)
    assert (spec.text, set(spec.protos), (spec.port_lo, spec.port_hi), spec.kind) == (
        canonical, protos, ports, kind)


def test_parse_spec_stores_embedded_ipv4_as_ipv4():
    assert parse_spec("::ffff:127.0.0.1").text == "127.0.0.1"
    assert parse_spec("[64:ff9b::a00:1]:80").text == "10.0.0.1:80"
    assert parse_spec("::ffff:10.0.0.0/104").text == "10.0.0.0/8"


@pytest.mark.parametrize("text, problem", [
    ("exa mple.com", "not a host name, IP address or CIDR"),
    ("bücher.de", "non-ASCII"),
    ("", "empty destination"),
    ("   ", "empty destination"),
    (":80", "empty host"),
    ("tcp://", "empty host"),
    ("example.com:", "empty port"),
    ("example.com:0", "port 0 out of range"),
    ("example.com:65536", "port 65536 out of range"),
    ("example.com:99999", "out of range"),
    ("example.com:http", "bad port"),
    ("example.com:9000-8000", "backwards"),
    ("example.com:8000-0", "port 0 out of range"),
    ("http://example.com", "unknown protocol 'http'"),
    ("sctp://example.com", "unknown protocol"),
    ("[::1", "missing ']'"),
    ("[::1]x", "unexpected"),
    ("[10.0.0.1]:80", "brackets are only for IPv6"),
    ("::1::2", "not a valid IPv6 address"),
    ("fe80::1%eth0", "scope ids"),
    ("10.0.0.1/8", "host bits set in the CIDR (did you mean 10.0.0.0/8)"),
    ("10.0.0.0/33", "not a valid CIDR"),
    ("10.0.0.256", "looks like an IPv4 address"),
    ("a.*.example.com", "not a host name"),
    ("*example.com", "not a host name"),
    ("*..", "not a host name"),
    ("-bad.example.com", "not a host name"),
    ("bad-.example.com", "not a host name"),
    ("a..b", "not a host name"),
    ("under_score.example", "not a host name"),
    ("a" * 64 + ".example", "not a host name"),
    (".".join(["a" * 60] * 5), "not a host name"),
])
def test_parse_spec_rejects_with_message_naming_text_and_syntax(text, problem):
    with pytest.raises(DestSpecError) as info:
        parse_spec(text)
    message = str(info.value)
    assert message.startswith(f'--allow-net "{text}": ')
    assert problem in message
    assert "expected [tcp://|udp://]HOST[:PORT]" in message


def test_parse_spec_error_message_matches_the_documented_form():
    with pytest.raises(DestSpecError, match=r'^--allow-net "exa mple.com": not a host name, IP address or CIDR; '
                                            r'expected \[tcp://\|udp://\]HOST\[:PORT\]'):
        parse_spec("exa mple.com")


def test_parse_spec_error_names_its_origin():
    with pytest.raises(DestSpecError, match='^profile egress entry "x:0": '):
        parse_spec("x:0", origin="profile egress entry")


def test_destspec_error_is_a_value_error():
    assert issubclass(DestSpecError, ValueError)


def test_destinations_reject_a_bad_rule_at_construction():
    with pytest.raises(DestSpecError):
        Destinations(["example.com", "exa mple.com"])


def test_describe_lists_canonical_rules_without_duplicates():
    dest = Destinations(["Example.com:443", "example.com:443", parse_spec("udp://[::1]:53"), "10.0.0.0/8"])
    assert dest.describe() == ["example.com:443", "udp://[::1]:53", "10.0.0.0/8"]


# --- canonical addresses --------------------------------------------------------------------

@pytest.mark.parametrize("given, expected", [
    ("::ffff:127.0.0.1", "127.0.0.1"),          # v4-mapped
    ("::ffff:7f00:1", "127.0.0.1"),
    ("::ffff:8.8.8.8", "8.8.8.8"),
    ("::127.0.0.1", "127.0.0.1"),               # v4-compatible (deprecated)
    ("::8.8.8.8", "8.8.8.8"),
    ("64:ff9b::7f00:1", "127.0.0.1"),           # NAT64 well-known prefix
    ("64:ff9b::169.254.169.254", "169.254.169.254"),
    ("::", "::"),                               # not v4-compatible 0.0.0.0
    ("::1", "::1"),                             # not v4-compatible 0.0.0.1
    ("2001:db8::1", "2001:db8::1"),
    ("10.1.2.3", "10.1.2.3"),
])
def test_canonical_ip_unwraps_embedded_ipv4(given, expected):
    assert canonical_ip(ipaddress.ip_address(given)) == ipaddress.ip_address(expected)
    assert canonical_ip(given) == ipaddress.ip_address(expected)


def test_sockaddr_in_is_parsed_with_big_endian_port():
    assert sockaddr_to_ip_port(sockaddr_in("93.184.216.34", 443)) == (
        AF_INET, ipaddress.IPv4Address("93.184.216.34"), 443)


def test_sockaddr_in6_ignores_flowinfo_and_scope():
    raw = sockaddr_in6("2001:db8::1", 8443, flowinfo=0x12345, scope_id=7)
    assert sockaddr_to_ip_port(raw) == (AF_INET6, ipaddress.IPv6Address("2001:db8::1"), 8443)


def test_sockaddr_in6_without_scope_id_is_accepted_like_the_kernel_does():
    assert sockaddr_to_ip_port(sockaddr_in6("::1", 80)[:24]) == (AF_INET6, ipaddress.IPv6Address("::1"), 80)


@pytest.mark.parametrize("raw", [
    b"",
    b"\x02",
    sockaddr_in("127.0.0.1", 80)[:15],
    sockaddr_in6("::1", 80)[:23],
    struct.pack("<H", 1) + b"/tmp/socket\x00",             # AF_UNIX
    struct.pack("<H", 0) + bytes(14),                       # AF_UNSPEC
    struct.pack("<H", 16) + bytes(14),                      # AF_NETLINK
    struct.pack(">H", AF_INET) + bytes(14),                 # family in the wrong byte order
])
def test_sockaddr_to_ip_port_returns_none_for_other_families_and_short_buffers(raw):
    assert sockaddr_to_ip_port(raw) is None


# --- classification ---------------------------------------------------------------------------

@pytest.mark.parametrize("ip, category", [
    ("127.0.0.1", "loopback"), ("127.200.1.1", "loopback"), ("::1", "loopback"),
    ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"), ("::", "unspecified"),
    ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
    ("169.254.169.254", "metadata"), ("169.254.169.254", "link-local"), ("fd00:ec2::254", "metadata"),
    ("100.100.100.200", "metadata"), ("169.254.170.2", "metadata"), ("168.63.129.16", "metadata"),
    ("10.1.1.1", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"),
    ("192.168.1.1", "private"), ("100.64.0.1", "private"), ("100.127.255.255", "private"),
    ("198.18.0.1", "private"), ("198.19.255.255", "private"), ("fc00::1", "private"), ("fd12::1", "private"),
    ("fec0::1", "site-local"), ("fec0::1", "private"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"), ("255.255.255.254", "reserved"),
    ("::ffff:169.254.169.254", "metadata"), ("64:ff9b::a00:1", "private"),
])
def test_classify_finds_special_ranges(ip, category):
    assert category in classify(ip)


@pytest.mark.parametrize("ip", ["8.8.8.8", "172.32.0.1", "100.128.0.1", "198.20.0.1", "2606:4700::1",
                                "168.63.129.17", "::ffff:1.1.1.1"])
def test_classify_public_addresses_have_no_category(ip):
    assert classify(ip) == frozenset()


def test_classify_broadcast_is_not_reserved():
    assert classify("255.255.255.255") == {"broadcast"}


def test_classify_all_of_0_slash_8_is_unspecified_not_reserved():
    assert classify("0.255.255.255") == {"unspecified"}


# --- the host's loopback, in every spelling a sockaddr can carry -------------------------------

HOST_LOCAL_SOCKADDRS = [
    sockaddr_in("127.0.0.1", 80),
    sockaddr_in("127.1.2.3", 80),
    sockaddr_in("127.255.255.254", 80),
    sockaddr_in("127.255.255.255", 80),
    sockaddr_in("127.0.0.0", 80),
    sockaddr_in("127.0.0.1", 80, zero=b"\xff" * 8),        # junk in sin_zero
    sockaddr_in("0.0.0.0", 80),
    sockaddr_in("0.1.2.3", 80),
    sockaddr_in("0.255.255.255", 80),
    sockaddr_in6("::1", 80),
    sockaddr_in6("0:0:0:0:0:0:0:1", 80, scope_id=1),
    sockaddr_in6("::", 80),
    sockaddr_in6("::ffff:127.0.0.1", 80),
    sockaddr_in6("::ffff:7f00:1", 80, flowinfo=0xABCDE),
    sockaddr_in6("0:0:0:0:0:ffff:7f00:0001", 80, scope_id=3),
    sockaddr_in6("::ffff:127.1.2.3", 80),
    sockaddr_in6("::ffff:0.0.0.0", 80),
    sockaddr_in6("::ffff:0.1.2.3", 80),
    sockaddr_in6("::127.0.0.1", 80),
    sockaddr_in6("::7f00:1", 80, scope_id=2),
    sockaddr_in6("::127.255.255.254", 80),
    sockaddr_in6("::0.0.0.2", 80),                          # v4-compatible 0.0.0.2
    sockaddr_in6("64:ff9b::7f00:1", 80),
    sockaddr_in6("64:ff9b::127.0.0.1", 80, flowinfo=1),
    sockaddr_in6("64:ff9b::", 80),
    sockaddr_in6("64:ff9b::7fff:fffe", 80),
    sockaddr_in6("::1", 80)[:24],                           # RFC 2133 length, no scope id
]


def test_there_are_at_least_twenty_distinct_host_local_encodings():
    assert len(set(HOST_LOCAL_SOCKADDRS)) >= 20


@pytest.mark.parametrize("raw", HOST_LOCAL_SOCKADDRS, ids=lambda raw: raw.hex())
def test_host_local_addresses_stay_inside_without_rules(raw):
    assert decide_sockaddr(Destinations(), raw).kind == INSIDE


@pytest.mark.parametrize("rules", [["example.com:80"], ["10.0.0.0/8"], ["0.0.0.0/0", "::/0"], ["*"],
                                   ["0.0.0.0/1", "128.0.0.0/1"], ["126.0.0.0/7"], ["::/8"]])
@pytest.mark.parametrize("raw", HOST_LOCAL_SOCKADDRS, ids=lambda raw: raw.hex())
def test_host_local_addresses_are_not_brokered_by_unrelated_or_wide_rules(raw, rules):
    verdict = decide_sockaddr(Destinations(rules), raw, names=frozenset({"evil.example"}))
    assert verdict.kind == INSIDE


@pytest.mark.parametrize("raw", [
    sockaddr_in("127.0.0.1", 5432),
    sockaddr_in6("::ffff:127.0.0.1", 5432),
    sockaddr_in6("::ffff:7f00:1", 5432, scope_id=9),
    sockaddr_in6("::127.0.0.1", 5432),
    sockaddr_in6("64:ff9b::7f00:1", 5432),
])
def test_named_loopback_port_is_brokered_in_every_spelling(raw):
    verdict = decide_sockaddr(Destinations(["127.0.0.1:5432"]), raw)
    assert (verdict.kind, verdict.spec) == (BROKER, "127.0.0.1:5432")


@pytest.mark.parametrize("raw", [
    sockaddr_in("127.0.0.1", 5433),
    sockaddr_in6("::ffff:127.0.0.1", 5433),
    sockaddr_in("127.0.0.2", 5432),
    sockaddr_in6("::1", 5432),
])
def test_named_loopback_port_leaves_other_loopback_destinations_inside(raw):
    assert decide_sockaddr(Destinations(["127.0.0.1:5432"]), raw).kind == INSIDE


def test_loopback_named_by_its_slash_8_is_brokered():
    assert Destinations(["127.0.0.0/8:6379"]).decide("127.9.9.9", 6379, "tcp").kind == BROKER


def test_loopback_named_through_a_resolved_name_is_brokered():
    dest = Destinations(["localhost:5432"])
    assert dest.decide("127.0.0.1", 5432, "tcp", frozenset({"localhost"})).kind == BROKER


def test_inside_reason_explains_the_own_namespace():
    verdict = Destinations().decide("::ffff:127.0.0.1", 8080, "tcp")
    assert verdict.spec is None
    assert "127.0.0.1" in verdict.reason and "own network namespace" in verdict.reason


# --- special ranges need narrow rules -------------------------------------------------------------

def test_metadata_is_denied_with_a_reason_naming_it():
    verdict = Destinations(["example.com"]).decide("169.254.169.254", 80, "tcp")
    assert verdict.kind == DENY
    assert verdict.reason.startswith("169.254.169.254:80/tcp is cloud metadata: denied unless a rule names it explicitly")


@pytest.mark.parametrize("rules", [["0.0.0.0/0"], ["128.0.0.0/1"], ["168.0.0.0/6"], ["*"]])
def test_wide_rules_do_not_name_metadata(rules):
    verdict = Destinations(rules).decide("169.254.169.254", 80, "tcp", frozenset({"x.example"}))
    assert verdict.kind == DENY
    assert "cloud metadata" in verdict.reason and "too wide" in verdict.reason


@pytest.mark.parametrize("ip", ["::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "::169.254.169.254"])
def test_metadata_in_ipv6_spellings_is_denied_even_with_any_ipv6(ip):
    assert Destinations(["::/0", "0.0.0.0/0"]).decide(ip, 80, "tcp").kind == DENY


def test_ipv6_metadata_is_not_named_by_any_ipv6():
    assert Destinations(["::/0"]).decide("fd00:ec2::254", 80, "tcp").kind == DENY


@pytest.mark.parametrize("rule", ["169.254.169.254", "169.254.169.254:80", "169.254.0.0/16", "metadata.google.internal"])
def test_metadata_named_narrowly_is_brokered(rule):
    verdict = Destinations([rule]).decide("169.254.169.254", 80, "tcp", frozenset({"metadata.google.internal"}))
    assert (verdict.kind, verdict.spec) == (BROKER, rule)


@pytest.mark.parametrize("ip, words", [
    ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
    ("10.0.0.5", "private"), ("192.168.1.10", "private"), ("100.64.1.1", "private"), ("fd12::1", "private"),
    ("fec0::1", "site-local"),
])
def test_link_local_and_private_are_denied_even_with_any_ip(ip, words):
    verdict = Destinations(["0.0.0.0/0", "::/0"]).decide(ip, 443, "tcp")
    assert verdict.kind == DENY
    assert words in verdict.reason


@pytest.mark.parametrize("rule, ip", [
    ("10.0.0.0/8", "10.2.3.4"), ("192.168.1.10", "192.168.1.10"), ("[fd12::/16]:443", "fd12::1"),
    ("fe80::/16", "fe80::1"), ("169.254.0.0/16", "169.254.1.1"),
])
def test_private_and_link_local_named_narrowly_are_brokered(rule, ip):
    assert Destinations([rule]).decide(ip, 443, "tcp").kind == BROKER


def test_ipv6_cidr_wider_than_slash_16_does_not_name_private_addresses():
    verdict = Destinations(["[fd00::/8]:443"]).decide("fd12::1", 443, "tcp")
    assert verdict.kind == DENY and "too wide" in verdict.reason


def test_private_named_through_a_resolved_name_is_brokered():
    dest = Destinations(["db.corp.internal:5432", "*.svc.internal"])
    assert dest.decide("10.0.0.7", 5432, "tcp", frozenset({"db.corp.internal"})).kind == BROKER
    assert dest.decide("10.0.0.8", 80, "tcp", frozenset({"api.svc.internal"})).kind == BROKER


def test_any_name_rule_does_not_name_private_addresses():
    assert Destinations(["*"]).decide("10.0.0.7", 443, "tcp", frozenset({"rebind.example"})).kind == DENY


@pytest.mark.parametrize("ip, words", [("224.0.0.251", "multicast"), ("255.255.255.255", "broadcast"),
                                       ("240.0.0.1", "reserved")])
def test_multicast_broadcast_reserved_are_denied_with_their_category(ip, words):
    verdict = Destinations(["example.com"]).decide(ip, 5353, "udp")
    assert verdict.kind == DENY and words in verdict.reason


def test_multicast_can_be_named_by_any_ip():
    assert Destinations(["0.0.0.0/0"]).decide("224.0.0.251", 5353, "udp").kind == BROKER


def test_any_ip_brokers_public_addresses():
    dest = Destinations(["0.0.0.0/0", "::/0"])
    assert dest.decide("93.184.216.34", 443, "tcp").kind == BROKER
    assert dest.decide("2606:4700::1", 443, "udp").kind == BROKER
    assert dest.decide("::ffff:93.184.216.34", 443, "tcp").kind == BROKER


def test_unlisted_public_address_is_denied_with_the_generic_reason():
    verdict = Destinations(["example.com"]).decide("203.0.113.9", 443, "tcp")
    assert verdict == (DENY, None, "203.0.113.9:443/tcp is not in the allowed destinations "
                                   "(--allow-net or the profile's egress list)")


# --- names -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, allowed", [
    ("a.example.com", True), ("a.b.example.com", True), ("A.B.Example.COM.", True),
    ("example.com", False), ("badexample.com", False), ("a.badexample.com", False),
    ("example.com.evil", False),
])
def test_wildcard_matches_subdomains_at_any_depth_but_not_the_apex(name, allowed):
    dest = Destinations(["*.example.com:443"])
    assert dest.allows_name(name) is allowed
    verdict = dest.decide("93.184.216.34", 443, "tcp", frozenset({name}))
    assert (verdict.kind == BROKER) is allowed


def test_exact_name_matches_case_insensitively_and_without_trailing_dot():
    dest = Destinations(["Example.COM."])
    assert dest.allows_name("example.com") and dest.allows_name("EXAMPLE.com.")
    assert not dest.allows_name("www.example.com")


def test_any_name_rule_allows_every_name():
    assert Destinations(["*"]).allows_name("anything.at.all")


def test_allows_name_ignores_ip_and_cidr_rules():
    dest = Destinations(["93.184.216.34", "0.0.0.0/0"])
    assert not dest.allows_name("example.com")
    assert not dest.allows_name("93.184.216.34")


def test_allows_name_filters_by_protocol():
    dest = Destinations(["udp://dns.example:53"])
    assert dest.allows_name("dns.example")
    assert dest.allows_name("dns.example", "udp")
    assert not dest.allows_name("dns.example", "tcp")


def test_names_match_only_through_the_resolved_names_argument():
    dest = Destinations(["example.com:443"])
    assert dest.decide("93.184.216.34", 443, "tcp").kind == DENY
    assert dest.decide("93.184.216.34", 443, "tcp", frozenset({"other.example"})).kind == DENY
    verdict = dest.decide("93.184.216.34", 443, "tcp", frozenset({"other.example", "example.com"}))
    assert (verdict.kind, verdict.spec) == (BROKER, "example.com:443")
    assert "example.com" in verdict.reason


# --- ports and protocols -----------------------------------------------------------------------------

@pytest.mark.parametrize("port, kind", [(7999, DENY), (8000, BROKER), (8050, BROKER), (8100, BROKER), (8101, DENY)])
def test_port_range_bounds_are_inclusive(port, kind):
    assert Destinations(["93.184.216.34:8000-8100"]).decide("93.184.216.34", port, "tcp").kind == kind


def test_single_port_rule_matches_only_that_port():
    dest = Destinations(["example.com:443"])
    names = frozenset({"example.com"})
    assert dest.decide("93.184.216.34", 443, "tcp", names).kind == BROKER
    assert dest.decide("93.184.216.34", 80, "tcp", names).kind == DENY


def test_rule_without_port_matches_any_port():
    dest = Destinations(["93.184.216.34"])
    assert all(dest.decide("93.184.216.34", p, "tcp").kind == BROKER for p in (1, 80, 65535))


def test_udp_rule_does_not_allow_tcp():
    dest = Destinations(["udp://1.1.1.1:53"])
    assert dest.decide("1.1.1.1", 53, "udp").kind == BROKER
    assert dest.decide("1.1.1.1", 53, "tcp").kind == DENY


def test_tcp_rule_does_not_allow_udp():
    dest = Destinations(["tcp://example.com"])
    names = frozenset({"example.com"})
    assert dest.decide("93.184.216.34", 443, "tcp", names).kind == BROKER
    assert dest.decide("93.184.216.34", 443, "udp", names).kind == DENY


def test_rule_without_protocol_allows_both():
    dest = Destinations(["1.1.1.1:53"])
    assert dest.decide("1.1.1.1", 53, "udp").kind == BROKER
    assert dest.decide("1.1.1.1", 53, "tcp").kind == BROKER


def test_decide_rejects_unknown_protocols():
    with pytest.raises(ValueError):
        Destinations().decide("1.1.1.1", 53, "sctp")


def test_ipv6_cidr_with_port():
    dest = Destinations(["[2001:db8::/32]:443"])
    assert dest.decide("2001:db8:1::5", 443, "tcp").kind == BROKER
    assert dest.decide("2001:db8:1::5", 80, "tcp").kind == DENY
    assert dest.decide("2001:db9::5", 443, "tcp").kind == DENY


def test_verdict_is_immutable():
    verdict = Destinations().decide("127.0.0.1", 80, "tcp")
    with pytest.raises(AttributeError):
        verdict.kind = BROKER  # type: ignore[misc]


def test_destspec_is_hashable_and_reusable():
    spec = parse_spec("example.com:443")
    assert isinstance(spec, DestSpec) and {spec, parse_spec("EXAMPLE.com:443")} == {spec}


# --- performance ---------------------------------------------------------------------------------------

def test_ten_thousand_decisions_take_well_under_a_second():
    dest = Destinations(["example.com:443", "*.github.com", "10.0.0.0/8:22", "udp://1.1.1.1:53",
                         "127.0.0.1:5432", "[fd00::/8]:443", "0.0.0.0/0:80"])
    cases = [
        (ipaddress.ip_address("140.82.112.3"), 443, "tcp", frozenset({"api.github.com"})),
        (ipaddress.ip_address("93.184.216.35"), 443, "tcp", frozenset()),
        (ipaddress.ip_address("::ffff:127.0.0.1"), 5432, "tcp", frozenset()),
        (ipaddress.ip_address("169.254.169.254"), 80, "tcp", frozenset()),
        (ipaddress.ip_address("2606:4700::1"), 443, "udp", frozenset()),
    ]
    start = time.perf_counter()
    for i in range(10_000):
        dest.decide(*cases[i % len(cases)])
    assert time.perf_counter() - start < 0.25
