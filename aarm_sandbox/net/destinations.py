"""Where the sandbox may connect: the egress destination policy (pure logic, no I/O).

Every connect() from the sandbox is decided here, so this is the one place that knows which
addresses reach the host itself. The supervisor asks `Destinations.decide()` and gets one of:

* ``broker``  - a rule names the destination; the supervisor makes the connection itself
  (so ``--allow-net 127.0.0.1:5432`` means the *host's* port 5432);
* ``inside``  - loopback / unspecified, not named: the program talks to its own network
  namespace and never leaves the sandbox;
* ``deny``    - anything else.

Rules (``--allow-net`` values and profile egress entries) are ``[tcp://|udp://]HOST[:PORT]``:

* HOST is a DNS name (``example.com``), ``*.example.com`` (any subdomain at any depth, not
  the apex), ``*`` (any name), an IP address (``10.0.0.5``, ``::1``, ``[::1]`` before a
  port) or a CIDR (``10.0.0.0/8``, ``fd00::/8``, ``[fd00::/8]:443``);
* PORT is a number or a range ``8000-8100``; absent means any port;
* no protocol means both tcp and udp.

Names only ever match through the names this session's DNS stub resolved to the address:
a bare IP is judged as a bare IP, whatever names it may have elsewhere.

Special ranges need explicit naming. Addresses that reach the host or its private
surroundings (loopback, unspecified, link-local, cloud metadata, private) are named only by
an exact IP, a DNS name or ``*.suffix`` rule, or a CIDR no wider than /8 (IPv4) or /16
(IPv6). ``0.0.0.0/0``, ``::/0``, any other wider CIDR and the ``*`` name are accepted and
mean "any public address", but they never open those ranges: an agent allowed "anywhere"
still cannot reach 169.254.169.254 or the host's loopback. Note that this makes ``fd00::/8``
too wide to open unique-local addresses: name the /16 (or narrower) actually in use.
Multicast, broadcast and reserved addresses are denied unless a rule contains them, but
any containing rule will do.

Addresses are judged in canonical form (`canonical_ip`): IPv4-mapped, IPv4-compatible and
NAT64 (64:ff9b::/96) IPv6 addresses are the IPv4 address they embed, because that is what
they reach (or may be translated to). Consequently an IPv6 CIDR rule never contains them;
name them as IPv4 (a rule written as ``::ffff:127.0.0.1`` is stored as ``127.0.0.1``).
"""
from __future__ import annotations

import ipaddress
import re
import socket  # inet_ntop only: formatting addresses, no I/O
from collections import namedtuple
from collections.abc import Callable, Iterable

from aarm_sandbox.records import FrozenRecord

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

AF_INET = 2
AF_INET6 = 10
# The kernel rejects shorter addresses with EINVAL (sizeof(sockaddr_in), SIN6_LEN_RFC2133),
# so nothing shorter must ever be brokered by the supervisor either.
SOCKADDR_IN_MIN = 16
SOCKADDR_IN6_MIN = 24

PROTOCOLS = frozenset({"tcp", "udp"})
ANY_PORT = (0, 65535)

BROKER, INSIDE, DENY = "broker", "inside", "deny"

LOOPBACK = "loopback"
UNSPECIFIED = "unspecified"
LINK_LOCAL = "link-local"
METADATA = "metadata"
PRIVATE = "private"
SITE_LOCAL = "site-local"
MULTICAST = "multicast"
BROADCAST = "broadcast"
RESERVED = "reserved"

# Categories a wide CIDR or the "*" name does not open (see the module docstring).
NEEDS_NARROW_RULE = frozenset({LOOPBACK, UNSPECIFIED, LINK_LOCAL, METADATA, PRIVATE})
STAYS_INSIDE = frozenset({LOOPBACK, UNSPECIFIED})
WIDEST_NAMING_PREFIX = {4: 8, 6: 16}

SYNTAX = (
    "expected [tcp://|udp://]HOST[:PORT] where HOST is a name (example.com, *.example.com, *),"
    " an IP address (10.0.0.5, ::1, [::1] before a port) or a CIDR (10.0.0.0/8, [fd00::/8])"
    " and PORT is a number or a range (8000-8100)"
)


class DestSpecError(ValueError):
    """A rule that cannot be parsed; the message is shown to users as-is."""


_Fail = Callable[[str], DestSpecError]


# ---------------------------------------------------------------------------------------
# Canonical addresses and raw sockaddrs

_V4_MAPPED_HIGH = 0xFFFF                      # ::ffff:0:0/96, bits above the low 32
_NAT64_HIGH = int(ipaddress.IPv6Address("64:ff9b::")) >> 32
_LOW32 = 0xFFFFFFFF


def _canonical_int(ip: IPAddress) -> tuple[int, int]:
    """(version, integer) of the address an IP really reaches, without building objects."""
    n = int(ip)
    if ip.version == 4:
        return 4, n
    high = n >> 32
    if high == _V4_MAPPED_HIGH or high == _NAT64_HIGH:
        return 4, n & _LOW32
    if high == 0 and n > 1:                   # IPv4-compatible; :: and ::1 stay IPv6
        return 4, n
    return 6, n


def canonical_ip(ip: IPAddress | str) -> IPAddress:
    """The address to judge: embedded IPv4 addresses are what an IPv6 form reaches.

    ``::ffff:127.0.0.1`` on an AF_INET6 socket *is* the host's loopback; ``::127.0.0.1``
    (deprecated IPv4-compatible) and ``64:ff9b::7f00:1`` (NAT64) may be translated to it.
    """
    version, n = _canonical_int(_as_ip(ip))
    return ipaddress.IPv4Address(n) if version == 4 else ipaddress.IPv6Address(n)


def sockaddr_to_ip_port(addr: bytes) -> tuple[int, IPAddress, int] | None:
    """(family, address, port) of a raw Linux sockaddr_in / sockaddr_in6, else None.

    None for other families and for buffers the kernel itself would reject as too short;
    the IPv6 scope id and flow info are not part of the destination and are ignored.
    """
    if len(addr) < 2:
        return None
    family = int.from_bytes(addr[0:2], "little")
    if family == AF_INET and len(addr) >= SOCKADDR_IN_MIN:
        return AF_INET, ipaddress.IPv4Address(bytes(addr[4:8])), int.from_bytes(addr[2:4], "big")
    if family == AF_INET6 and len(addr) >= SOCKADDR_IN6_MIN:
        return AF_INET6, ipaddress.IPv6Address(bytes(addr[8:24])), int.from_bytes(addr[2:4], "big")
    return None


def _as_ip(ip: IPAddress | str) -> IPAddress:
    return ip if isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else ipaddress.ip_address(ip)


# ---------------------------------------------------------------------------------------
# Classification

def _ranges(version: int, table: Iterable[tuple[str, Iterable[str]]]) -> tuple[tuple[int, int, str], ...]:
    rows = []
    for category, cidrs in table:
        for cidr in cidrs:
            net = ipaddress.ip_network(cidr)
            assert net.version == version
            rows.append((int(net.network_address), int(net.broadcast_address), category))
    return tuple(rows)


_V4_RANGES = _ranges(4, [
    (LOOPBACK, ["127.0.0.0/8"]),
    # Linux treats 0.x.x.x as "this host" on some paths: all of 0/8 reaches the local host.
    (UNSPECIFIED, ["0.0.0.0/8"]),
    (LINK_LOCAL, ["169.254.0.0/16"]),
    (METADATA, ["169.254.169.254/32", "169.254.170.2/32", "100.100.100.200/32", "168.63.129.16/32"]),
    (PRIVATE, ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "198.18.0.0/15"]),
    (MULTICAST, ["224.0.0.0/4"]),
    (BROADCAST, ["255.255.255.255/32"]),
])
# 240/4 is reserved except its last address, the limited broadcast.
_V4_RANGES += ((int(ipaddress.IPv4Address("240.0.0.0")), int(ipaddress.IPv4Address("255.255.255.254")), RESERVED),)

_V6_RANGES = _ranges(6, [
    (LOOPBACK, ["::1/128"]),
    (UNSPECIFIED, ["::/128"]),
    (LINK_LOCAL, ["fe80::/10"]),
    (METADATA, ["fd00:ec2::254/128"]),
    (PRIVATE, ["fc00::/7", "fec0::/10"]),
    (SITE_LOCAL, ["fec0::/10"]),
    (MULTICAST, ["ff00::/8"]),
])

_EMPTY: frozenset[str] = frozenset()
_CATEGORY_CACHE: dict[tuple[int, int], frozenset[str]] = {}
_CATEGORY_CACHE_MAX = 4096


def _classify_int(version: int, n: int) -> frozenset[str]:
    """Categories of a canonical address; cached because one agent reuses few addresses."""
    key = (version, n)
    found = _CATEGORY_CACHE.get(key)
    if found is not None:
        return found
    table = _V4_RANGES if version == 4 else _V6_RANGES
    found = frozenset(cat for lo, hi, cat in table if lo <= n <= hi) or _EMPTY
    if len(_CATEGORY_CACHE) >= _CATEGORY_CACHE_MAX:
        _CATEGORY_CACHE.clear()
    _CATEGORY_CACHE[key] = found
    return found


def classify(ip: IPAddress | str) -> frozenset[str]:
    """Special categories of the canonical address (empty for an ordinary public one)."""
    return _classify_int(*_canonical_int(_as_ip(ip)))


# ---------------------------------------------------------------------------------------
# Rules

ADDRESS, NETWORK, NAME, SUBDOMAINS, ANY_NAME = "address", "network", "name", "subdomains", "any-name"


class DestSpec(FrozenRecord):
    """One parsed rule. `host` is the canonical host text; `network` is set for ADDRESS and
    NETWORK rules, `name` for NAME (the name) and SUBDOMAINS (the suffix, without "*.").
    Equal and hashed by value (Destinations drops duplicate rules)."""
    __slots__ = ("text", "kind", "host", "protos", "port_lo", "port_hi", "network", "name")

    def __init__(self, text: str, kind: str, host: str, protos: frozenset[str], port_lo: int,
                 port_hi: int, network: IPNetwork | None = None, name: str | None = None):
        setattr_ = object.__setattr__
        setattr_(self, "text", text)
        setattr_(self, "kind", kind)
        setattr_(self, "host", host)
        setattr_(self, "protos", protos)
        setattr_(self, "port_lo", port_lo)
        setattr_(self, "port_hi", port_hi)
        setattr_(self, "network", network)
        setattr_(self, "name", name)

    def accepts(self, port: int, proto: str) -> bool:
        return self.port_lo <= port <= self.port_hi and proto in self.protos

    @property
    def names_special_ranges(self) -> bool:
        """Whether this rule is narrow enough to open loopback, metadata, private... ranges."""
        if self.kind == ANY_NAME:
            return False
        if self.kind == NETWORK:
            assert self.network is not None
            return self.network.prefixlen >= WIDEST_NAMING_PREFIX[self.network.version]
        return True

    def __str__(self) -> str:
        return self.text


# (patterns, compiled by re's cache at the first rule parsed: most sessions parse none)
_PROTO_PATTERN = r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)\Z"
_PORT_PATTERN = r"(\d{1,5})(?:-(\d{1,5}))?\Z"
_LABEL_PATTERN = r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z"
MAX_NAME_LEN = 253


def parse_spec(text: str, origin: str = "--allow-net") -> DestSpec:
    """Parse one ``[tcp://|udp://]HOST[:PORT]`` rule; `origin` says where it came from in
    error messages (``--allow-net``, ``profile egress entry``...)."""
    def fail(problem: str) -> DestSpecError:
        shown = text if text.isprintable() else repr(text)[1:-1]
        return DestSpecError(f'{origin} "{shown}": {problem}; {SYNTAX}')

    if not text.isascii():
        raise fail("non-ASCII host names are not supported; write the IDNA form (xn--...)")
    rest = text.strip()
    if not rest:
        raise fail("empty destination")
    protos = PROTOCOLS
    m = re.match(_PROTO_PATTERN, rest, re.S)
    if m:
        proto = m.group(1).lower()
        if proto not in PROTOCOLS:
            raise fail(f"unknown protocol {m.group(1)!r} (only tcp and udp)")
        protos, rest = frozenset({proto}), m.group(2)
    host_text, port_text = _split_host_port(rest, fail)
    ports = _parse_ports(port_text, fail) if port_text is not None else None
    kind, host, network, name = _parse_host(host_text, fail)
    port_lo, port_hi = ports or ANY_PORT
    return DestSpec(_spec_text(protos, host, ports, kind), kind, host, protos, port_lo, port_hi, network, name)


def _split_host_port(rest: str, fail: _Fail) -> tuple[str, str | None]:
    """Brackets hold IPv6; without them, two or more colons mean a bare IPv6 (no port)."""
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise fail("missing ']' after an IPv6 address")
        host, after = rest[1:close], rest[close + 1:]
        if ":" not in host:
            raise fail("brackets are only for IPv6 addresses")
        if after == "":
            return host, None
        if not after.startswith(":"):
            raise fail(f"unexpected {after!r} after ']'")
        return host, after[1:]
    if rest.count(":") >= 2:
        return rest, None
    if ":" in rest:
        host, port = rest.split(":", 1)
        return host, port
    return rest, None


def _parse_ports(port_text: str, fail: _Fail) -> tuple[int, int]:
    m = re.match(_PORT_PATTERN, port_text)
    if not m:
        raise fail(f"bad port {port_text!r}" if port_text else "empty port after ':'")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) else lo
    for port in (lo, hi):
        if not 1 <= port <= 65535:
            raise fail(f"port {port} out of range (1-65535)")
    if lo > hi:
        raise fail(f"port range {lo}-{hi} is backwards")
    return lo, hi


def _parse_host(host: str, fail: _Fail) -> tuple[str, str, IPNetwork | None, str | None]:
    """(kind, canonical host text, network, name) of a HOST."""
    if not host:
        raise fail("empty host")
    if "%" in host:
        raise fail("IPv6 scope ids (%...) are not supported")
    if "/" in host:
        net = _parse_network(host, fail)
        return NETWORK, str(net), net, None
    try:
        ip = canonical_ip(ipaddress.ip_address(host))
    except ValueError:
        pass
    else:
        return ADDRESS, str(ip), ipaddress.ip_network(ip), None
    if ":" in host:
        raise fail("not a valid IPv6 address (an IPv6 address before a port goes in brackets: [::1]:5432)")
    return _parse_name(host, fail)


def _parse_network(host: str, fail: _Fail) -> IPNetwork:
    try:
        net = ipaddress.ip_network(host)
    except ValueError:
        try:
            loose = ipaddress.ip_network(host, strict=False)
        except ValueError:
            raise fail("not a valid CIDR") from None
        raise fail(f"host bits set in the CIDR (did you mean {loose})") from None
    return _canonical_network(net)


def _canonical_network(net: IPNetwork) -> IPNetwork:
    """IPv4-mapped and NAT64 ranges contain IPv4 addresses, so store them as IPv4 ranges."""
    if net.version == 6 and net.prefixlen >= 96:
        high = int(net.network_address) >> 32
        if high in (_V4_MAPPED_HIGH, _NAT64_HIGH):
            low = int(net.network_address) & _LOW32
            return ipaddress.IPv4Network((low, net.prefixlen - 96))
    return net


def _parse_name(host: str, fail: _Fail) -> tuple[str, str, None, str]:
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if name == "*":
        return ANY_NAME, "*", None, ""
    kind = NAME
    if name.startswith("*."):
        kind, name = SUBDOMAINS, name[2:]
    if not name or len(name) > MAX_NAME_LEN or not all(re.match(_LABEL_PATTERN, label) for label in name.split(".")):
        raise fail("not a host name, IP address or CIDR")
    if name.rsplit(".", 1)[-1].isdigit():
        raise fail("looks like an IPv4 address but is not a valid one")
    return kind, (f"*.{name}" if kind == SUBDOMAINS else name), None, name


def _spec_text(protos: frozenset[str], host: str, ports: tuple[int, int] | None, kind: str) -> str:
    prefix = f"{next(iter(protos))}://" if len(protos) == 1 else ""
    if ports is None:
        return prefix + host
    lo, hi = ports
    port = str(lo) if lo == hi else f"{lo}-{hi}"
    if kind in (ADDRESS, NETWORK) and ":" in host:
        host = f"[{host}]"
    return f"{prefix}{host}:{port}"


def normalize_name(name: str) -> str:
    """DNS names compare case-insensitively and without the root's trailing dot."""
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


# ---------------------------------------------------------------------------------------
# Decisions

# kind: BROKER, INSIDE or DENY; spec: canonical text of the rule that named the destination
# (or None); reason: one sentence for the user and the journal. (collections.namedtuple,
# what typing.NamedTuple builds, without importing typing on the startup path.)
Verdict = namedtuple("Verdict", ("kind", "spec", "reason"))


_CATEGORY_WORDS = (           # most telling first: the one a deny reason names
    (METADATA, "cloud metadata"),
    (LINK_LOCAL, "link-local"),
    (SITE_LOCAL, "site-local (deprecated, private)"),
    (PRIVATE, "a private address"),
    (MULTICAST, "multicast"),
    (BROADCAST, "broadcast"),
    (RESERVED, "a reserved address"),
)


class Destinations:
    """The allowed egress destinations of one session, indexed for fast connect() decisions."""

    def __init__(self, specs: Iterable[str | DestSpec] = (), origin: str = "--allow-net") -> None:
        parsed = [s if isinstance(s, DestSpec) else parse_spec(s, origin) for s in specs]
        self.specs: tuple[DestSpec, ...] = tuple(dict.fromkeys(parsed))
        self._addresses: dict[tuple[int, int], tuple[DestSpec, ...]] = {}
        self._networks: dict[int, list[tuple[int, int, DestSpec]]] = {4: [], 6: []}
        self._names: dict[str, tuple[DestSpec, ...]] = {}
        self._subdomains: dict[str, tuple[DestSpec, ...]] = {}
        self._any_name: tuple[DestSpec, ...] = ()
        for spec in self.specs:
            self._index(spec)

    def _index(self, spec: DestSpec) -> None:
        if spec.kind in (ADDRESS, NETWORK):
            net = spec.network
            assert net is not None
            if net.prefixlen == net.max_prefixlen:
                key = (net.version, int(net.network_address))
                self._addresses[key] = self._addresses.get(key, ()) + (spec,)
            else:
                self._networks[net.version].append((int(net.network_address), int(net.netmask), spec))
        elif spec.kind == NAME:
            self._names[spec.name] = self._names.get(spec.name, ()) + (spec,)  # type: ignore[index]
        elif spec.kind == SUBDOMAINS:
            self._subdomains[spec.name] = self._subdomains.get(spec.name, ()) + (spec,)  # type: ignore[index]
        else:
            self._any_name += (spec,)

    def describe(self) -> list[str]:
        """The rules in canonical text, for the journal's session.start."""
        return [spec.text for spec in self.specs]

    def allows_name(self, name: str, proto: str | None = None) -> bool:
        """Whether a name rule (not an IP/CIDR) covers this DNS name, whatever the port:
        the DNS stub answers only such names."""
        name = normalize_name(name)
        for spec in self._name_specs(name):
            if proto is None or proto in spec.protos:
                return True
        return False

    def _name_specs(self, name: str) -> Iterable[DestSpec]:
        yield from self._names.get(name, ())
        dot = name.find(".")
        while dot >= 0:
            yield from self._subdomains.get(name[dot + 1:], ())
            dot = name.find(".", dot + 1)
        yield from self._any_name

    def decide(self, ip: IPAddress | str, port: int, proto: str,
               names: frozenset[str] = frozenset()) -> Verdict:
        """Broker, keep inside or deny a connect() to ip:port (see the module docstring)."""
        if proto not in PROTOCOLS:
            raise ValueError(f"protocol must be tcp or udp, not {proto!r}")
        ip = _as_ip(ip)
        version, n = _canonical_int(ip)
        categories = _classify_int(version, n)
        special = not categories.isdisjoint(NEEDS_NARROW_RULE)
        spec, too_wide = self._naming_spec(version, n, port, proto, names, special)
        where = _where(ip, version, n, port, proto, names)
        if spec is not None:
            return Verdict(BROKER, spec.text, f"{where} is allowed by {spec.text}")
        if not categories.isdisjoint(STAYS_INSIDE):
            what = "loopback" if LOOPBACK in categories else "the unspecified address (the local host)"
            return Verdict(INSIDE, None, f"{where} is {what}: it stays in the sandbox's own network namespace")
        return Verdict(DENY, None, _deny_reason(where, categories, too_wide))

    def _naming_spec(self, version: int, n: int, port: int, proto: str, names: frozenset[str],
                     special: bool) -> tuple[DestSpec | None, DestSpec | None]:
        """(the rule naming the destination, else a rule that matched but is too wide to)."""
        too_wide = None
        for spec in self._addresses.get((version, n), ()):
            if spec.accepts(port, proto):
                return spec, None
        for name in names:
            for spec in self._name_specs(normalize_name(name)):
                if spec.accepts(port, proto):
                    if not special or spec.names_special_ranges:
                        return spec, None
                    too_wide = spec
        for network, mask, spec in self._networks[version]:
            if n & mask == network and spec.accepts(port, proto):
                if not special or spec.names_special_ranges:
                    return spec, None
                too_wide = spec
        return None, too_wide


def _where(ip: IPAddress, version: int, n: int, port: int, proto: str, names: frozenset[str]) -> str:
    """'ip:port/proto', then the canonical address when it differs and the resolved names."""
    if ip.version == 6:
        text = f"[{socket.inet_ntop(socket.AF_INET6, ip.packed)}]:{port}/{proto}"
    else:
        text = f"{socket.inet_ntop(socket.AF_INET, ip.packed)}:{port}/{proto}"
    notes = [f"= {socket.inet_ntop(socket.AF_INET, n.to_bytes(4, 'big'))}"] if version != ip.version else []
    notes.extend(sorted(names))
    return f"{text} ({'; '.join(notes)})" if notes else text


def _deny_reason(where: str, categories: frozenset[str], too_wide: DestSpec | None) -> str:
    for category, words in _CATEGORY_WORDS:
        if category in categories:
            reason = f"{where} is {words}: denied unless a rule names it explicitly"
            if too_wide is not None and category in NEEDS_NARROW_RULE:
                reason += f" ({too_wide.text} is too wide to name it)"
            return reason
    return f"{where} is not in the allowed destinations (--allow-net or the profile's egress list)"
