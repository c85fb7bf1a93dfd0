"""The sandbox's only name server: a policy gate, never a forwarder.

The sandbox runs in an empty network namespace whose /etc/resolv.conf points here. A DNS
query is itself an outbound channel: the labels of a name reach every server on the
resolution path, so a forwarded query for ``<secret>.attacker.example`` exfiltrates the
secret even if no connection ever follows. This stub therefore decides on the name
*before* anything leaves the host: a denied name is answered NXDOMAIN locally and is
never looked up, and every query, allowed or not, is reported to ``on_query`` so the
supervisor journals it (tunnelling attempts are denied *and* visible).

Allowed A/AAAA names are resolved by the supervisor's own resolver (``getaddrinfo``
by default) and only the resulting addresses are handed back; the query packet itself is
never relayed. The addresses handed out are remembered so the supervisor can attribute a
later ``connect()`` to the name the sandbox asked for (``names_for``).
"""
from __future__ import annotations

import ipaddress
import os
import queue
import re
import select
import socket
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable


class _LazyDns:
    """dnspython, imported at the first query (~50 ms a session that never resolves a name
    should not pay at startup); then the module global is the real package."""

    def __getattr__(self, name: str):
        import dns as real
        import dns.flags  # noqa: F401 - the submodules this module uses
        import dns.message  # noqa: F401
        import dns.name  # noqa: F401
        import dns.opcode  # noqa: F401
        import dns.rcode  # noqa: F401
        import dns.rdataclass  # noqa: F401
        import dns.rdatatype  # noqa: F401
        import dns.rrset  # noqa: F401
        globals()["dns"] = real
        return getattr(real, name)


dns = _LazyDns()

Resolver = Callable[[str, int], list[str]]
QueryReporter = Callable[[dict], None]

MAX_PACKET = 4096               # larger datagrams are not DNS queries we care to parse
MAX_REMEMBERED = 10_000         # (address, name) pairs kept for names_for()
MAX_PENDING = 64                # lookups in flight on the serving thread; beyond: SERVFAIL
MAX_ANSWERS = 8                 # 8 AAAA + longest name + OPT still fit 512 bytes
RESOLVE_WORKERS = 4
RESOLVE_TIMEOUT = 5.0
PLAIN_UDP_LIMIT = 512           # RFC 1035 limit without EDNS
OUR_EDNS_PAYLOAD = 1232         # the usual fragmentation-safe EDNS size

_A, _AAAA = 1, 28                         # dns.rdatatype.A / AAAA (an IntEnum: equal keys)
_ADDRESS_TYPES = {_A: socket.AF_INET, _AAAA: socket.AF_INET6}
_ADDRESS_VERSION = {_A: 4, _AAAA: 6}
# A hostname as getaddrinfo() should see it: anything escaped by dnspython (dots inside
# labels, control or non-ASCII bytes, '*', quotes...) is not a hostname.
# (compiled by re's cache at the first query: many sessions never resolve a name)
_PLAIN_HOSTNAME = r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*"
_NO_SUCH_NAME = {socket.EAI_NONAME}
_NO_ADDRESS_OF_FAMILY = {getattr(socket, "EAI_NODATA", None), getattr(socket, "EAI_ADDRFAMILY", None)} - {None}


def resolve_with_getaddrinfo(name: str, family: int) -> list[str]:
    """The default resolver: the supervisor's own view of the name, in the host namespace.

    glibc reports "the name exists but has no address of this family" as EAI_NONAME
    for some sources (e.g. /etc/hosts). Answering that as NXDOMAIN would make musl and
    other stubs treat the whole name as non-existent once its AAAA query comes back, so
    a name that resolves in the other family yields an empty answer (NODATA) instead.
    """
    try:
        infos = socket.getaddrinfo(name, None, family, socket.SOCK_STREAM)
    except socket.gaierror as error:
        if error.errno in _NO_SUCH_NAME and _resolves_in_other_family(name, family):
            return []
        raise
    return list(dict.fromkeys(info[4][0] for info in infos))


def _resolves_in_other_family(name: str, family: int) -> bool:
    other = socket.AF_INET if family == socket.AF_INET6 else socket.AF_INET6
    try:
        return bool(socket.getaddrinfo(name, None, other, socket.SOCK_STREAM))
    except (socket.gaierror, UnicodeError):
        return False


def canonical_address(text: str) -> str | None:
    """One spelling per address, so names_for() finds what connect() later targets.

    An IPv4-mapped IPv6 address names the same destination as the IPv4 address, so it is
    folded to it (a dual-stack socket connecting to an A answer arrives mapped)."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.compressed


def format_client(client: tuple) -> str:
    """ip:port for the journal; IPv6 in brackets so the port stays unambiguous."""
    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class _AddressBook:
    """address -> names answered, bounded: a sandbox spraying queries must not grow the
    supervisor's memory without limit, so the oldest pairs are forgotten first."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._pairs: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._names_by_address: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def remember(self, address: str, name: str) -> None:
        with self._lock:
            pair = (address, name)
            if pair in self._pairs:
                self._pairs.move_to_end(pair)
                return
            self._pairs[pair] = None
            self._names_by_address.setdefault(address, set()).add(name)
            while len(self._pairs) > self._capacity:
                self._forget(*self._pairs.popitem(last=False)[0])

    def _forget(self, address: str, name: str) -> None:
        names = self._names_by_address[address]
        names.discard(name)
        if not names:
            del self._names_by_address[address]

    def names_for(self, address: str) -> frozenset[str]:
        with self._lock:
            return frozenset(self._names_by_address.get(address, ()))


class _Future:
    """The result of one resolver call, set once by a pool worker: the part of
    concurrent.futures.Future this stub uses (result/exception with a timeout, done
    callbacks). Importing concurrent.futures (and logging with it) would cost every
    session's startup ~10 ms for a stub that may never see a query."""
    __slots__ = ("_done", "_lock", "_value", "_error", "_callbacks")

    def __init__(self) -> None:
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._value = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[_Future], object]] = []

    def set_result(self, value) -> None:
        self._settle(value, None)

    def set_exception(self, error: BaseException) -> None:
        self._settle(None, error)

    def _settle(self, value, error: BaseException | None) -> None:
        with self._lock:
            self._value, self._error = value, error
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            self._run_callback(callback)

    def add_done_callback(self, callback: Callable[[_Future], object]) -> None:
        """Called with this future once it is done (at once if it already is)."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        self._run_callback(callback)

    def _run_callback(self, callback: Callable[[_Future], object]) -> None:
        try:
            callback(self)
        except Exception:       # as concurrent.futures: a failing callback hurts no other
            pass

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self._done.wait(timeout):
            raise TimeoutError
        return self._error

    def result(self, timeout: float | None = None):
        """The value, or the resolver's exception raised; TimeoutError if not done within
        `timeout` seconds."""
        if not self._done.wait(timeout):
            raise TimeoutError
        if self._error is not None:
            raise self._error
        return self._value


class _DaemonPool:
    """A tiny executor whose workers are daemon threads.

    concurrent.futures' pool joins its workers at interpreter exit, so one getaddrinfo
    stuck on an unreachable upstream would hold the supervisor's exit. Daemon workers
    cannot."""

    def __init__(self, workers: int) -> None:
        self._size = workers
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._lock = threading.Lock()

    def submit(self, fn: Callable, *args) -> _Future:
        future = _Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("resolver pool is shut down")
            if len(self._threads) < self._size:
                self._spawn()
            self._jobs.put((future, fn, args))
        return future

    def _spawn(self) -> None:
        worker = threading.Thread(target=self._work, name="dns-stub-resolve", daemon=True)
        self._threads.append(worker)
        worker.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            try:
                future.set_result(fn(*args))
            except BaseException as error:    # a resolver must not be able to kill a worker
                future.set_exception(error)

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            for _ in self._threads:
                self._jobs.put(None)


class _Question:
    """One well-formed query, reduced to what policy and the reply need."""

    def __init__(self, message: dns.message.Message, qname: dns.name.Name, name: str,
                 qtype: int, client: str) -> None:
        self.message = message
        self.qname = qname
        self.name = name            # canonical: lower-case, no final dot, odd bytes escaped
        self.qtype = qtype
        self.client = client


class _PendingLookup:
    """A lookup in flight (compared and hashed by identity: kept in a set)."""

    def __init__(self, question: _Question, address: tuple, future: _Future,
                 deadline: float) -> None:
        self.question = question
        self.address = address
        self.future = future
        self.deadline = deadline


class _Outcome:
    """What the stub answers, before it is rendered."""

    def __init__(self, rcode: int, allowed: bool, addresses: list[str] | None = None) -> None:
        self.rcode = rcode
        self.allowed = allowed
        self.addresses = [] if addresses is None else addresses


class DnsStub:
    """Answers the sandbox's DNS queries from policy; forwards nothing, ever.

    ``sock`` is an already bound UDP socket (127.0.0.53:53 in the sandbox's namespace in
    production); the stub only recvfrom()s and sendto()s on it and never closes it: the
    launcher owns it. ``allow_name`` sees the canonical name and is consulted before any
    lookup. ``resolve(name, family)`` returns addresses; raising socket.gaierror with
    EAI_NONAME means NXDOMAIN, EAI_NODATA/EAI_ADDRFAMILY or ``[]`` means "no address of
    this family" (NOERROR, empty), anything else (or taking longer than
    ``resolve_timeout``) means SERVFAIL. ``on_query`` receives one dict per answered
    query, on the serving thread (or on handle()'s caller).

    ``stats`` counts what never reaches on_query or what went wrong (dropped packets,
    callback failures, resolver errors and timeouts), for the supervisor's diagnostics.
    """

    max_answers = MAX_ANSWERS

    def __init__(self, sock: socket.socket, allow_name: Callable[[str], bool],
                 resolve: Resolver | None = None, on_query: QueryReporter | None = None,
                 ttl: int = 60, *, resolve_timeout: float = RESOLVE_TIMEOUT,
                 max_remembered: int = MAX_REMEMBERED) -> None:
        self._sock = sock
        self._allow_name = allow_name
        self._resolve = resolve or resolve_with_getaddrinfo
        self._on_query = on_query
        self._ttl = ttl
        self._resolve_timeout = resolve_timeout
        self._address_book = _AddressBook(max_remembered)
        self._pool = _DaemonPool(RESOLVE_WORKERS)
        self._pending: set[_PendingLookup] = set()
        self._completed: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_lock = threading.Lock()
        self._stopping = threading.Event()
        self._lifecycle = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stats_lock = threading.Lock()
        self.stats: Counter[str] = Counter()

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> "DnsStub":
        """Serve on a daemon thread, so a wedged stub never keeps the supervisor alive."""
        with self._lifecycle:
            if self._thread is not None or self._stopping.is_set():
                raise RuntimeError("DnsStub can be started once")
            self._thread = threading.Thread(target=self._serve, name="dns-stub", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (idempotent). The caller's socket stays open: the launcher owns it.

        The serving thread sleeps in poll() on the socket and a self-pipe, so waking it
        through the pipe ends it at once rather than after some socket timeout."""
        with self._lifecycle:
            if self._stopping.is_set():
                return
            self._stopping.set()
            self._wake()
            if self._thread is not None:
                self._thread.join(timeout=1.0)
            self._pool.shutdown()
            if self._thread is None or not self._thread.is_alive():
                self._close_wake_pipe()

    def _close_wake_pipe(self) -> None:
        """Under the wake lock: a late pool callback must never write into a reused fd."""
        with self._wake_lock:
            os.close(self._wake_read)
            os.close(self._wake_write)
            self._wake_write = -1

    # -- public queries --------------------------------------------------------------

    def names_for(self, ip: str) -> frozenset[str]:
        """The names whose answers carried ``ip``: lets connect() policy and the journal
        say which name the sandbox meant when it dials a bare address."""
        address = canonical_address(ip)
        return self._address_book.names_for(address) if address else frozenset()

    def handle(self, packet: bytes, client: tuple) -> bytes | None:
        """The reply to one query packet, or None to drop it; waits for resolution.

        The serving thread uses the same decisions but does not wait: see _serve()."""
        step = self._decide(packet, client)
        if not isinstance(step, _PendingLookup):
            return step
        return self._finish(step.question, self._await(step.future))

    # -- decision --------------------------------------------------------------------

    def _decide(self, packet: bytes, client: tuple) -> bytes | None | _PendingLookup:
        """Everything up to (not including) resolution: cheap, so it runs inline."""
        if len(packet) > MAX_PACKET:
            self._count("dropped_oversized")
            return None
        try:
            message = dns.message.from_wire(packet)
        except Exception:       # hostile bytes: any parser failure is a malformed query
            return self._reply_to_unparseable(packet, client)
        if message.flags & dns.flags.QR:
            self._count("dropped_responses")     # never answer answers: no reflection loops
            return None
        question = self._question_of(message, client)
        if message.opcode() != dns.opcode.QUERY:
            return self._finish(question, _Outcome(dns.rcode.NOTIMP, allowed=False))
        if len(message.question) != 1:
            return self._finish(question, _Outcome(dns.rcode.FORMERR, allowed=False))
        return self._decide_question(question, client)

    def _decide_question(self, question: _Question, client: tuple) -> bytes | _PendingLookup:
        if question.message.question[0].rdclass != dns.rdataclass.IN:
            return self._finish(question, _Outcome(dns.rcode.REFUSED, allowed=False))
        if not self._is_allowed(question.name):
            return self._finish(question, _Outcome(dns.rcode.NXDOMAIN, allowed=False))
        if question.qtype == dns.rdatatype.ANY:
            return self._finish(question, _Outcome(dns.rcode.REFUSED, allowed=True))
        if question.qtype not in _ADDRESS_TYPES:
            # HTTPS/SVCB/MX/TXT...: "no such data" lets clients fall back to A/AAAA.
            return self._finish(question, _Outcome(dns.rcode.NOERROR, allowed=True))
        if not re.fullmatch(_PLAIN_HOSTNAME, question.name):
            # getaddrinfo re-parses escapes (glibc turns "a\.b" back into one label), so
            # an escaped name could resolve as something other than what policy saw.
            return self._finish(question, _Outcome(dns.rcode.NXDOMAIN, allowed=True))
        return self._start_lookup(question, client)

    def _question_of(self, message: dns.message.Message, client: tuple) -> _Question:
        if not message.question:
            return _Question(message, dns.name.empty, "", 0, format_client(client))
        first = message.question[0]
        name = first.name.canonicalize().to_text(omit_final_dot=True)
        return _Question(message, first.name, name, first.rdtype, format_client(client))

    def _is_allowed(self, name: str) -> bool:
        """Fail closed: a policy callback that raises denies the name."""
        try:
            return bool(self._allow_name(name))
        except Exception:
            self._count("allow_name_errors")
            return False

    # -- resolution ------------------------------------------------------------------

    def _start_lookup(self, question: _Question, client: tuple) -> bytes | _PendingLookup:
        family = _ADDRESS_TYPES[question.qtype]
        try:
            future = self._pool.submit(self._resolve, question.name, family)
        except RuntimeError:            # stopped: nothing more gets resolved
            return self._finish(question, _Outcome(dns.rcode.SERVFAIL, allowed=True))
        deadline = time.monotonic() + self._resolve_timeout
        return _PendingLookup(question, client, future, deadline)

    def _await(self, future: _Future) -> _Outcome:
        try:
            future.result(timeout=self._resolve_timeout)
        except TimeoutError:
            self._count("resolve_timeouts")
            return _Outcome(dns.rcode.SERVFAIL, allowed=True)
        except BaseException:
            pass                        # classified from the future below
        return self._outcome_of(future)

    def _outcome_of(self, future: _Future) -> _Outcome:
        """Map the resolver's result onto DNS: only "no such name" is NXDOMAIN."""
        error = future.exception()
        if error is None:
            return _Outcome(dns.rcode.NOERROR, allowed=True, addresses=future.result())
        if isinstance(error, socket.gaierror) and error.errno in _NO_SUCH_NAME:
            return _Outcome(dns.rcode.NXDOMAIN, allowed=True)
        if isinstance(error, socket.gaierror) and error.errno in _NO_ADDRESS_OF_FAMILY:
            return _Outcome(dns.rcode.NOERROR, allowed=True)
        self._count("resolve_errors")
        return _Outcome(dns.rcode.SERVFAIL, allowed=True)

    # -- replies ---------------------------------------------------------------------

    def _finish(self, question: _Question, outcome: _Outcome) -> bytes:
        """Render, remember and report one answer; the single exit for every query."""
        addresses = self._usable_addresses(question.qtype, outcome.addresses)
        response = dns.message.make_response(question.message, recursion_available=True,
                                             our_payload=OUR_EDNS_PAYLOAD)
        response.flags &= ~dns.flags.AA         # we are nobody's authority
        response.set_rcode(outcome.rcode)
        if addresses:
            response.answer.append(dns.rrset.from_text_list(
                question.qname, self._ttl, dns.rdataclass.IN, question.qtype, addresses))
        # Unshuffled: the host resolver's order (RFC 6724 preference) is the useful one.
        wire = response.to_wire(max_size=self._reply_limit(question.message),
                                prefer_truncation=True, want_shuffle=False)
        for address in addresses:
            self._address_book.remember(address, question.name)
        self._report(question, outcome, addresses)
        return wire

    def _usable_addresses(self, qtype: int, addresses: list[str]) -> list[str]:
        """Canonical, of the asked family, unique, capped so the reply fits 512 bytes.

        There is no TCP listener in the sandbox, so a truncated reply would make glibc's
        TCP retry fail: better a few addresses than a TC bit."""
        version = _ADDRESS_VERSION.get(qtype)
        usable: list[str] = []
        for text in addresses:
            address = self._address_of_version(text, version)
            if address is None:
                self._count("resolver_bad_addresses")
            elif address not in usable:
                usable.append(address)
        return usable[:self.max_answers]

    @staticmethod
    def _address_of_version(text: str, version: int | None) -> str | None:
        """v4-mapped AAAA answers are not handed out: they would alias an A answer."""
        try:
            address = ipaddress.ip_address(str(text).split("%", 1)[0])
        except ValueError:
            return None
        if address.version != version:
            return None
        if address.version == 6 and address.ipv4_mapped is not None:
            return None
        return address.compressed

    @staticmethod
    def _reply_limit(query: dns.message.Message) -> int:
        if query.edns < 0:
            return PLAIN_UDP_LIMIT
        return max(PLAIN_UDP_LIMIT, min(query.payload, OUR_EDNS_PAYLOAD))

    def _reply_to_unparseable(self, packet: bytes, client: tuple) -> bytes | None:
        """FORMERR if at least the header (id) can be read, so the client stops waiting."""
        if len(packet) < 12:
            self._count("dropped_malformed")
            return None
        query_id = int.from_bytes(packet[0:2], "big")
        query_flags = int.from_bytes(packet[2:4], "big")
        if query_flags & dns.flags.QR:
            self._count("dropped_responses")
            return None
        reply = dns.message.Message(id=query_id)
        reply.flags = dns.flags.QR | dns.flags.RA | (query_flags & dns.flags.RD)
        reply.set_opcode(dns.opcode.from_flags(query_flags))
        reply.set_rcode(dns.rcode.FORMERR)
        self._report_raw("", "", False, dns.rcode.FORMERR, [], format_client(client))
        return reply.to_wire()

    # -- reporting -------------------------------------------------------------------

    def _report(self, question: _Question, outcome: _Outcome, addresses: list[str]) -> None:
        qtype = dns.rdatatype.to_text(question.qtype) if question.qtype else ""
        self._report_raw(question.name, qtype, outcome.allowed, outcome.rcode, addresses,
                         question.client)

    def _report_raw(self, name: str, qtype: str, allowed: bool, rcode: int,
                    answers: list[str], client: str) -> None:
        """A journal failure must not silence the stub: the sandbox would hang on DNS."""
        if self._on_query is None:
            return
        info = {"name": name, "qtype": qtype, "allowed": allowed,
                "rcode": dns.rcode.to_text(rcode), "answers": list(answers), "client": client}
        try:
            self._on_query(info)
        except Exception:
            self._count("on_query_errors")

    def _count(self, what: str) -> None:
        with self._stats_lock:
            self.stats[what] += 1

    # -- serving thread --------------------------------------------------------------

    def _serve(self) -> None:
        """One thread owns the socket and on_query; lookups run on the pool and come back
        through a queue plus the self-pipe, so a slow name delays only its own answer."""
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        while not self._stopping.is_set():
            for fd, mask in poller.poll(self._poll_timeout_ms()):
                if fd == self._wake_read:
                    self._drain_wake()
                elif mask & select.POLLNVAL:
                    return                       # the owner closed the socket under us
                else:
                    self._receive_one()
            if not self._stopping.is_set():
                self._answer_completed()
                self._expire_overdue()

    def _poll_timeout_ms(self) -> int | None:
        if not self._pending:
            return None
        earliest = min(lookup.deadline for lookup in self._pending)
        return max(0, int((earliest - time.monotonic()) * 1000) + 1)

    def _receive_one(self) -> None:
        try:
            packet, client = self._sock.recvfrom(MAX_PACKET + 1, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:                          # e.g. a queued ICMP error from a send
            self._count("receive_errors")
            return
        try:
            step = self._decide(packet, client)
        except Exception:                        # a bug here must not end DNS service
            self._count("internal_errors")
            return
        if isinstance(step, _PendingLookup):
            self._track(step)
        elif step is not None:
            self._send(step, client)

    def _track(self, lookup: _PendingLookup) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._count("dropped_overloaded")
            self._send(self._finish(lookup.question, _Outcome(dns.rcode.SERVFAIL, allowed=True)),
                       lookup.address)
            return
        self._pending.add(lookup)
        lookup.future.add_done_callback(lambda _future: self._on_lookup_done(lookup))

    def _on_lookup_done(self, lookup: _PendingLookup) -> None:
        """Runs on a pool worker: hand the result to the serving thread, nothing more."""
        self._completed.put(lookup)
        self._wake()

    def _answer_completed(self) -> None:
        while True:
            try:
                lookup = self._completed.get_nowait()
            except queue.Empty:
                return
            if lookup in self._pending:          # else it already timed out
                self._pending.discard(lookup)
                self._reply_safely(lookup, lambda: self._outcome_of(lookup.future))

    def _expire_overdue(self) -> None:
        now = time.monotonic()
        for lookup in [p for p in self._pending if p.deadline <= now]:
            self._pending.discard(lookup)
            self._count("resolve_timeouts")
            self._reply_safely(lookup, lambda: _Outcome(dns.rcode.SERVFAIL, allowed=True))

    def _reply_safely(self, lookup: _PendingLookup, outcome: Callable[[], _Outcome]) -> None:
        try:
            wire = self._finish(lookup.question, outcome())
        except Exception:
            self._count("internal_errors")
            return
        self._send(wire, lookup.address)

    def _send(self, wire: bytes, client: tuple) -> None:
        try:
            self._sock.sendto(wire, socket.MSG_DONTWAIT, client)
        except OSError:
            self._count("send_errors")

    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_write < 0:
                return
            try:
                os.write(self._wake_write, b"\0")
            except OSError:                      # full pipe: a wake-up is already pending
                pass

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
