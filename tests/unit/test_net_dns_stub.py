"""The DNS stub over a real UDP socket on 127.0.0.1, queried with dnspython's client.

The resolver is injected and records its calls: "no forwarding before policy" is checked
as "the resolver was never asked", which is the only way a query could leave the host."""
from __future__ import annotations

import os
import socket
import threading
import time

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from aarm_sandbox.net.dns_stub import DnsStub

ALLOWED_SUFFIXES = ("example.com", "in-addr.arpa")
ADDRESSES = {
    ("www.example.com", socket.AF_INET): ["192.0.2.10", "192.0.2.11"],
    ("www.example.com", socket.AF_INET6): ["2001:DB8:0:0::10"],
    ("api.example.com", socket.AF_INET): ["192.0.2.20"],
}


def allow_example(name: str) -> bool:
    return any(name == s or name.endswith("." + s) for s in ALLOWED_SUFFIXES)


class RecordingResolver:
    def __init__(self, table=None, error: BaseException | None = None):
        self.table = ADDRESSES if table is None else table
        self.error = error
        self.calls: list[tuple[str, int]] = []

    def __call__(self, name: str, family: int) -> list[str]:
        self.calls.append((name, family))
        if self.error is not None:
            raise self.error
        if (name, family) not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.table[(name, family)])


class Harness:
    def __init__(self, resolver=None, allow=allow_example, on_query=None, **kwargs):
        self.resolver = resolver or RecordingResolver()
        self.journal: list[dict] = []
        self.allowed_asked: list[str] = []
        self.server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.server.bind(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.client.bind(("127.0.0.1", 0))
        self.client.setblocking(False)       # dns.query.udp(sock=...) requires it to time out
        self.client_text = "127.0.0.1:%d" % self.client.getsockname()[1]

        def allow_name(name: str) -> bool:
            self.allowed_asked.append(name)
            return allow(name)

        self.stub = DnsStub(self.server, allow_name, self.resolver, on_query or self.journal.append,
                            ttl=42, **kwargs)

    def ask(self, name, rdtype="A", **make_query_kwargs) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype, **make_query_kwargs)
        return self.send(query)

    def send(self, query: dns.message.Message) -> dns.message.Message:
        return dns.query.udp(query, "127.0.0.1", port=self.port, timeout=3, sock=self.client)

    def send_raw(self, packet: bytes, timeout: float = 1.0) -> bytes | None:
        self.client.sendto(packet, ("127.0.0.1", self.port))
        self.client.settimeout(timeout)
        try:
            return self.client.recv(65535)
        except socket.timeout:
            return None
        finally:
            self.client.setblocking(False)

    def close(self):
        self.stub.stop()
        self.server.close()
        self.client.close()


@pytest.fixture
def harness():
    h = Harness()
    h.stub.start()
    yield h
    h.close()


def answer_addresses(reply: dns.message.Message) -> list[str]:
    return [rdata.address for rrset in reply.answer for rdata in rrset]


def test_allowed_a_query_gets_the_resolvers_addresses_with_ttl(harness):
    reply = harness.ask("www.example.com", "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert answer_addresses(reply) == ["192.0.2.10", "192.0.2.11"]
    assert reply.answer[0].ttl == 42
    assert reply.answer[0].rdtype == dns.rdatatype.A
    assert harness.resolver.calls == [("www.example.com", socket.AF_INET)]


def test_allowed_aaaa_query_gets_canonical_ipv6_addresses(harness):
    reply = harness.ask("www.example.com", "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR
    assert answer_addresses(reply) == ["2001:db8::10"]
    assert reply.answer[0].ttl == 42
    assert harness.resolver.calls == [("www.example.com", socket.AF_INET6)]


def test_reply_keeps_id_and_question_sets_ra_and_not_aa(harness):
    query = dns.message.make_query("www.example.com", "A")
    reply = harness.send(query)
    assert reply.id == query.id
    assert reply.question == query.question
    assert reply.flags & dns.flags.RA
    assert not reply.flags & dns.flags.AA
    assert reply.flags & dns.flags.RD


def test_denied_name_gets_nxdomain_and_is_never_resolved(harness):
    reply = harness.ask("secret.attacker.example", "A")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.answer == []
    assert harness.resolver.calls == []


def test_denied_name_is_not_resolved_for_any_qtype(harness):
    for rdtype in ("A", "AAAA", "TXT", "HTTPS", "ANY", "MX"):
        assert harness.ask("leak.attacker.example", rdtype).rcode() == dns.rcode.NXDOMAIN
    assert harness.resolver.calls == []


def test_names_for_remembers_answered_addresses(harness):
    harness.ask("www.example.com", "A")
    harness.ask("www.example.com", "AAAA")
    harness.ask("api.example.com", "A")
    assert harness.stub.names_for("192.0.2.10") == {"www.example.com"}
    assert harness.stub.names_for("2001:0db8:0000::0010") == {"www.example.com"}
    assert harness.stub.names_for("192.0.2.20") == {"api.example.com"}
    assert harness.stub.names_for("::ffff:192.0.2.20") == {"api.example.com"}
    assert harness.stub.names_for("192.0.2.99") == frozenset()
    assert harness.stub.names_for("not an address") == frozenset()


def test_names_for_does_not_remember_denied_names(harness):
    harness.ask("www.attacker.example", "A")
    assert harness.stub.names_for("192.0.2.10") == frozenset()


def test_names_for_forgets_the_oldest_beyond_its_capacity():
    table = {(f"h{i}.example.com", socket.AF_INET): [f"198.51.100.{i}"] for i in range(5)}
    h = Harness(RecordingResolver(table), max_remembered=3)
    try:
        for i in range(5):
            h.stub.handle(dns.message.make_query(f"h{i}.example.com", "A").to_wire(), ("127.0.0.1", 1))
        assert h.stub.names_for("198.51.100.0") == frozenset()
        assert h.stub.names_for("198.51.100.1") == frozenset()
        assert h.stub.names_for("198.51.100.4") == {"h4.example.com"}
    finally:
        h.close()


def test_names_are_matched_lower_case_without_trailing_dot(harness):
    reply = harness.ask("WWW.Example.COM.", "A")
    assert answer_addresses(reply) == ["192.0.2.10", "192.0.2.11"]
    assert harness.allowed_asked == ["www.example.com"]
    assert harness.resolver.calls == [("www.example.com", socket.AF_INET)]
    assert reply.question[0].name.to_text() == "WWW.Example.COM."   # 0x20 clients need it
    assert harness.stub.names_for("192.0.2.10") == {"www.example.com"}


def test_malformed_packets_do_not_stop_the_server(harness):
    assert harness.send_raw(os.urandom(5), timeout=0.3) is None          # no header: dropped
    assert harness.send_raw(b"\x12\x34", timeout=0.3) is None
    garbage = b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x3fabc"
    reply = dns.message.from_wire(harness.send_raw(garbage))
    assert reply.id == 0xABCD and reply.rcode() == dns.rcode.FORMERR
    for _ in range(20):
        harness.client.sendto(os.urandom(64), ("127.0.0.1", harness.port))
    harness.client.sendto(os.urandom(5000), ("127.0.0.1", harness.port))
    time.sleep(0.2)
    harness.client.settimeout(0.1)
    try:
        while harness.client.recv(65535):                                # discard FORMERRs
            pass
    except socket.timeout:
        pass
    harness.client.setblocking(False)
    assert answer_addresses(harness.ask("www.example.com", "A")) == ["192.0.2.10", "192.0.2.11"]


def test_two_questions_are_formerr_and_not_resolved(harness):
    query = dns.message.make_query("www.example.com", "A")
    query.find_rrset(query.question, dns.name.from_text("api.example.com"),
                     dns.rdataclass.IN, dns.rdatatype.A, create=True)
    reply = harness.send(query)
    assert reply.rcode() == dns.rcode.FORMERR
    assert harness.resolver.calls == []
    assert answer_addresses(harness.ask("api.example.com", "A")) == ["192.0.2.20"]


def test_responses_sent_to_the_stub_are_not_answered(harness):
    response = dns.message.make_response(dns.message.make_query("www.example.com", "A"))
    assert harness.send_raw(response.to_wire(), timeout=0.3) is None
    assert harness.stub.handle(response.to_wire(), ("127.0.0.1", 1)) is None


def test_oversized_packets_are_ignored(harness):
    packet = dns.message.make_query("www.example.com", "A").to_wire() + b"\0" * 4096
    assert harness.stub.handle(packet, ("127.0.0.1", 1)) is None
    assert harness.resolver.calls == []


def test_txt_and_https_for_an_allowed_name_are_noerror_and_empty(harness):
    for rdtype in ("TXT", "HTTPS", "SVCB", "MX"):
        reply = harness.ask("www.example.com", rdtype)
        assert reply.rcode() == dns.rcode.NOERROR, rdtype
        assert reply.answer == []
    assert harness.resolver.calls == []


def test_ptr_is_decided_by_policy_and_answered_empty(harness):
    reply = harness.ask("10.2.0.192.in-addr.arpa", "PTR")
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []
    assert harness.allowed_asked == ["10.2.0.192.in-addr.arpa"]


def test_any_query_is_refused(harness):
    reply = harness.ask("www.example.com", "ANY")
    assert reply.rcode() == dns.rcode.REFUSED
    assert reply.answer == []
    assert harness.resolver.calls == []


def test_on_query_gets_one_documented_record_per_query(harness):
    harness.ask("www.example.com", "A")
    harness.ask("nope.attacker.example", "AAAA")
    harness.ask("www.example.com", "TXT")
    assert harness.journal == [
        {"name": "www.example.com", "qtype": "A", "allowed": True, "rcode": "NOERROR",
         "answers": ["192.0.2.10", "192.0.2.11"], "client": harness.client_text},
        {"name": "nope.attacker.example", "qtype": "AAAA", "allowed": False, "rcode": "NXDOMAIN",
         "answers": [], "client": harness.client_text},
        {"name": "www.example.com", "qtype": "TXT", "allowed": True, "rcode": "NOERROR",
         "answers": [], "client": harness.client_text},
    ]


def test_tunnelling_name_is_denied_and_journaled_whole(harness):
    chunk = "mfrggzdfmztwq2lknnwg23tpobyxe43uov3ho6dzpjqwey3emvtgo2djnjvwy3lo"[:63]
    name = f"{chunk}.{chunk}.{chunk}.t1.exfil.attacker.example"
    reply = harness.ask(name, "TXT")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert harness.resolver.calls == []
    assert harness.journal[-1]["name"] == name
    assert harness.journal[-1]["allowed"] is False
    assert harness.journal[-1]["rcode"] == "NXDOMAIN"


def test_control_bytes_in_labels_are_reported_escaped(harness):
    name = dns.name.Name([b"a\x00b", b"\x1b[31m", b"attacker", b"example", b""])
    reply = harness.ask(name, "A")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    reported = harness.journal[-1]["name"]
    assert reported == "a\\000b.\\027[31m.attacker.example"
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in reported)
    assert harness.allowed_asked == [reported]


def test_escaped_names_are_not_resolved_even_when_allowed():
    h = Harness(allow=lambda name: True)
    try:
        query = dns.message.make_query(dns.name.Name([b"evil.attacker", b"example", b"com", b""]), "A")
        reply = dns.message.from_wire(h.stub.handle(query.to_wire(), ("127.0.0.1", 1)))
        assert reply.rcode() == dns.rcode.NXDOMAIN
        assert h.resolver.calls == []
        assert h.journal[-1]["name"] == "evil\\.attacker.example.com"
    finally:
        h.close()


def test_resolver_failure_gives_servfail_and_the_stub_keeps_serving():
    resolver = RecordingResolver(error=RuntimeError("resolver bug"))
    h = Harness(resolver)
    h.stub.start()
    try:
        assert h.ask("www.example.com", "A").rcode() == dns.rcode.SERVFAIL
        resolver.error = None
        assert answer_addresses(h.ask("www.example.com", "A")) == ["192.0.2.10", "192.0.2.11"]
        assert h.stub.stats["resolve_errors"] == 1
        assert h.journal[0]["rcode"] == "SERVFAIL"
    finally:
        h.close()


def test_name_without_addresses_of_the_family_is_noerror_not_nxdomain():
    resolver = RecordingResolver(error=socket.gaierror(socket.EAI_NODATA, "No address"))
    h = Harness(resolver)
    try:
        wire = h.stub.handle(dns.message.make_query("www.example.com", "AAAA").to_wire(), ("127.0.0.1", 1))
        reply = dns.message.from_wire(wire)
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []
    finally:
        h.close()


def test_unknown_allowed_name_is_nxdomain_after_resolution(harness):
    reply = harness.ask("missing.example.com", "A")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert harness.resolver.calls == [("missing.example.com", socket.AF_INET)]
    assert harness.journal[-1]["allowed"] is True


def test_on_query_and_allow_name_exceptions_do_not_stop_the_stub():
    def journal_down(info: dict) -> None:
        raise RuntimeError("journal down")

    h = Harness(allow=lambda name: 1 / 0, on_query=journal_down)
    h.stub.start()
    try:
        assert h.ask("www.example.com", "A").rcode() == dns.rcode.NXDOMAIN   # fails closed
        assert h.ask("www.example.com", "A").rcode() == dns.rcode.NXDOMAIN
        assert h.stub.stats["on_query_errors"] == 2
        assert h.resolver.calls == []
    finally:
        h.close()


def test_slow_lookup_times_out_with_servfail_without_blocking_other_names():
    release = threading.Event()

    def slow_for_www(name: str, family: int) -> list[str]:
        if name == "www.example.com":
            release.wait(10)
        return ["192.0.2.20"]

    h = Harness(slow_for_www, resolve_timeout=0.5)
    h.stub.start()
    try:
        slow_query = dns.message.make_query("www.example.com", "A")
        h.client.sendto(slow_query.to_wire(), ("127.0.0.1", h.port))
        started = time.monotonic()
        fast_client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        fast_client.setblocking(False)
        fast = dns.query.udp(dns.message.make_query("api.example.com", "A"), "127.0.0.1",
                             port=h.port, timeout=3, sock=fast_client)
        fast_client.close()
        assert answer_addresses(fast) == ["192.0.2.20"]
        assert time.monotonic() - started < 0.4
        h.client.settimeout(3)
        slow = dns.message.from_wire(h.client.recv(65535))
        assert slow.id == slow_query.id and slow.rcode() == dns.rcode.SERVFAIL
        assert 0.4 < time.monotonic() - started < 2.5
    finally:
        release.set()
        h.close()


def test_handle_times_out_synchronously_with_servfail():
    release = threading.Event()
    h = Harness(lambda name, family: release.wait(10) and [], resolve_timeout=0.2)
    try:
        wire = h.stub.handle(dns.message.make_query("www.example.com", "A").to_wire(), ("127.0.0.1", 1))
        assert dns.message.from_wire(wire).rcode() == dns.rcode.SERVFAIL
        assert h.stub.stats["resolve_timeouts"] == 1
    finally:
        release.set()
        h.close()


def test_replies_fit_512_bytes_without_edns():
    many = [f"2001:db8::{i:x}" for i in range(1, 60)]
    long_name = ".".join(["a" * 63] * 3) + ".example.com"
    h = Harness(RecordingResolver({(long_name, socket.AF_INET6): many}))
    h.stub.start()
    try:
        wire = h.stub.handle(dns.message.make_query(long_name, "AAAA").to_wire(), ("127.0.0.1", 1))
        assert len(wire) <= 512
        reply = dns.message.from_wire(wire)
        assert reply.rcode() == dns.rcode.NOERROR and answer_addresses(reply) == many[:8]
        assert not reply.flags & dns.flags.TC
    finally:
        h.close()


def test_reply_too_large_for_the_client_is_truncated_with_tc():
    many = [f"2001:db8::{i:x}" for i in range(1, 31)]      # > 512 bytes, < our 1232 EDNS
    h = Harness(RecordingResolver({("www.example.com", socket.AF_INET6): many}))
    h.stub.max_answers = 100
    try:
        plain = h.stub.handle(dns.message.make_query("www.example.com", "AAAA").to_wire(), ("127.0.0.1", 1))
        assert len(plain) <= 512
        assert dns.message.from_wire(plain).flags & dns.flags.TC
        with_edns = dns.message.make_query("www.example.com", "AAAA", use_edns=0, payload=4096)
        wire = h.stub.handle(with_edns.to_wire(), ("127.0.0.1", 1))
        reply = dns.message.from_wire(wire)
        assert 512 < len(wire) <= 4096
        assert not reply.flags & dns.flags.TC and answer_addresses(reply) == many
    finally:
        h.close()


def test_stop_returns_within_a_second_and_is_idempotent(harness):
    harness.ask("www.example.com", "A")
    started = time.monotonic()
    harness.stub.stop()
    assert time.monotonic() - started < 1.0
    assert not harness.stub._thread.is_alive()
    harness.stub.stop()
    assert harness.server.fileno() >= 0          # the launcher's socket is left open
    assert harness.send_raw(dns.message.make_query("www.example.com", "A").to_wire(), 0.3) is None


def test_start_twice_is_refused(harness):
    with pytest.raises(RuntimeError):
        harness.stub.start()


def test_default_resolver_answers_a_name_without_ipv6_as_nodata_not_nxdomain():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stub = DnsStub(server, lambda name: name == "localhost")
    try:
        a = dns.message.from_wire(stub.handle(dns.message.make_query("localhost", "A").to_wire(), ("127.0.0.1", 1)))
        assert "127.0.0.1" in answer_addresses(a)
        aaaa = dns.message.from_wire(stub.handle(dns.message.make_query("localhost", "AAAA").to_wire(), ("127.0.0.1", 1)))
        assert aaaa.rcode() == dns.rcode.NOERROR         # ::1 or empty, never "no such name"
    finally:
        stub.stop()
        server.close()
