"""Network isolation and brokered egress, against servers this test starts on the host.

Every attack test also runs the same client natively and shows that there it reaches the
host server: the sandbox, not the test setup, is what stops it.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
from hostserver import HostServer

PY = sys.executable


@pytest.fixture
def host_server():
    servers = []

    def make(**kw):
        s = HostServer(**kw)
        servers.append(s)
        return s
    yield make
    for s in servers:
        s.close()


def _py(box, code: str, extra=(), env=None):
    return box.run([PY, "-c", code], extra=list(extra), env=env)


CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1] if len(sys.argv) > 1 else {host!r}, {port}), timeout=5)
s.sendall(b"ping")
print(s.recv(100).decode())
"""


def test_allowed_destination_is_brokered_and_works_blocking_and_nonblocking(box, host_server):
    srv = host_server()
    code = f"""
import socket, select, errno
import time
s = socket.create_connection(("127.0.0.1", {srv.port}), timeout=5)
s.sendall(b"blocking")
print(s.recv(100).decode())
time.sleep(1.5)              # (the kernel's counters are read every 250 ms, by a thread
                             # at nice 10 that a busy 2-core machine can delay for 0.6 s)
n = socket.socket()
n.setblocking(False)
r = n.connect_ex(("127.0.0.1", {srv.port}))
assert r == errno.EINPROGRESS, r
select.select([], [n], [], 5)
assert n.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
n.setblocking(True)
n.sendall(b"nonblocking")
print(n.recv(100).decode())
time.sleep(1.5)
"""
    r = _py(box, code, ["--allow-net", f"127.0.0.1:{srv.port}"])
    assert r.returncode == 0, r.stderr
    assert "pong:blocking" in r.stdout and "pong:nonblocking" in r.stdout
    assert srv.accepted == 2
    rec = r.receipts("net.connect")
    assert rec and all(x["action"]["egress"] == "broker" for x in rec)
    assert rec[0]["action"]["egress_rule"] == f"127.0.0.1:{srv.port}"
    # the kernel's byte counts for each brokered connection, when it closed or the session ended
    closes = [x for x in r.records if x["type"] == "net.close"]
    assert len(closes) == 2 and all(c["measured"] for c in closes), closes
    assert sorted(c["bytes_sent"] for c in closes) == [len("blocking"), len("nonblocking")]
    assert sorted(c["bytes_received"] for c in closes) == [len("pong:blocking"), len("pong:nonblocking")]
    end = r.records[-1]
    assert end["egress_bytes"]["sent"] == len("blocking") + len("nonblocking")


def test_http_clients_reach_an_allowed_host_service(box, host_server):
    srv = host_server()
    url = f"http://127.0.0.1:{srv.port}/"
    r = _py(box, f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).read().decode())",
            ["--allow-net", f"127.0.0.1:{srv.port}"])
    assert r.returncode == 0, r.stderr
    assert "hello" in r.stdout
    if shutil.which("curl"):
        r = box.run(["curl", "-sS", "--max-time", "5", url], extra=["--allow-net", f"127.0.0.1:{srv.port}"])
        assert r.returncode == 0, r.stderr
        assert r.stdout == "hello"


def test_denied_destination_gets_no_connection(box, host_server):
    srv = host_server()
    code = CLIENT.format(host="127.0.0.1", port=srv.port)
    native = box.native([PY, "-c", code])
    assert "pong:ping" in native.stdout and srv.accepted == 1      # the attack, natively
    r = _py(box, code)
    assert r.returncode != 0 and "ConnectionRefused" in r.stderr
    assert srv.accepted == 1                   # nothing more reached the host
    out = _py(box, "import socket\ntry:\n    socket.create_connection(('10.1.2.3', 80), timeout=3)\n"
                   "except OSError as e:\n    print('refused', e.errno)\n")
    assert "refused 111" in out.stdout, out.stderr
    deny = [x for x in out.receipts("net.connect") if x["decision"]["result"] == "deny"]
    assert deny and deny[0]["decision"]["rule"] == "egress"
    assert "aarm-sandbox: denied net.connect 10.1.2.3:80" in out.stderr


LOOPBACK_SPELLINGS = ["127.0.0.1", "127.1", "0x7f000001", "2130706433", "0177.0.0.1", "127.0.1",
                      "127.0.0.2", "127.255.255.254", "0.0.0.0", "0", "0x0", "localhost", "::1",
                      "::", "::ffff:127.0.0.1", "::ffff:7f00:1", "0:0:0:0:0:0:0:1",
                      "::ffff:0.0.0.0", "0000::0001", "::ffff:127.1.2.3"]


def test_twenty_spellings_of_the_hosts_loopback_never_reach_it(box, host_server):
    srv = host_server(family=socket.AF_INET6, addr=("::", 0), dual_stack=True)
    code = f"""
import socket
ok = 0
for h in {LOOPBACK_SPELLINGS!r}:
    try:
        fam = socket.AF_INET6 if ":" in h else socket.AF_INET
        s = socket.socket(fam)
        s.settimeout(3)
        addr = socket.getaddrinfo(h, {srv.port}, fam, socket.SOCK_STREAM)[0][4]
        s.connect(addr)
        s.sendall(b"x")
        s.recv(10)
        ok += 1
    except OSError:
        pass
print("connected", ok)
"""
    native = box.native([PY, "-c", code])
    assert "connected 20" in native.stdout, native.stdout + native.stderr
    before = srv.accepted
    r = _py(box, code, ["--allow-net", "example.com:80", "--allow-net", "10.0.0.0/8"])
    assert r.returncode == 0, r.stderr
    assert "connected 0" in r.stdout
    assert srv.accepted == before


def test_udp_and_fastopen_to_a_host_service_deliver_nothing(box, host_server):
    udp = host_server(kind=socket.SOCK_DGRAM)
    tcp = host_server()
    code = f"""
import socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.sendto(b"udp-leak", ("127.0.0.1", {udp.port}))
except OSError as e:
    print("udp", e.errno)
try:
    u.sendto(b"udp-out", ("192.0.2.1", 9))
except OSError as e:
    print("udp-out", e.errno)
t = socket.socket()
try:
    t.sendto(b"tfo-leak", socket.MSG_FASTOPEN, ("127.0.0.1", {tcp.port}))
except OSError as e:
    print("tfo", e.errno)
"""
    native = box.native([PY, "-c", code])
    time.sleep(0.3)
    assert b"udp-leak" in udp.data and tcp.accepted == 1           # natively both arrive
    udp.data.clear()
    r = _py(box, code)
    time.sleep(0.3)
    assert udp.data == [] and tcp.accepted == 1, r.stderr
    assert "udp-out 1" in r.stdout                                  # EPERM: no egress


def test_raw_packet_and_foreign_family_sockets_are_refused(box):
    code = """
import socket
for fam, typ, proto in ((socket.AF_PACKET, socket.SOCK_RAW, 0), (socket.AF_INET, socket.SOCK_RAW, 1),
                        (socket.AF_NETLINK, socket.SOCK_RAW, 4), (40, socket.SOCK_STREAM, 0),
                        (38, socket.SOCK_SEQPACKET, 0)):
    try:
        socket.socket(fam, typ, proto).close()
        print("open", fam)
    except OSError as e:
        print("refused", fam, e.errno)
socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()
print("route netlink ok")
"""
    native = box.native([PY, "-c", code])
    assert "open 17" in native.stdout                 # root opens a packet socket natively
    r = _py(box, code)
    assert r.returncode == 0, r.stderr
    assert "open" not in r.stdout.replace("route netlink ok", "")
    assert "refused 17 97" in r.stdout and "refused 2 1" in r.stdout
    assert "route netlink ok" in r.stdout


def test_host_unix_sockets_pathname_and_abstract_are_unreachable(box):
    path = str(box.outside / "host.sock")
    abstract = "\0aarm-test-" + uuid.uuid4().hex
    servers = []
    for addr in (path, abstract):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(addr)
        s.listen(8)
        s.settimeout(0.5)
        servers.append(s)
    code = f"""
import socket
for a in ({path!r}, {abstract!r}):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(a)
        print("connected", len(a))
    except OSError as e:
        print("refused", e.errno)
"""
    try:
        native = box.native([PY, "-c", code])
        assert native.stdout.count("connected") == 2
        for s in servers:
            s.accept()[0].close()
        r = _py(box, code)
        assert r.stdout.count("refused") == 2, r.stdout + r.stderr
        for s in servers:
            with pytest.raises(socket.timeout):
                s.accept()
    finally:
        for s in servers:
            s.close()


def test_unknown_names_get_nxdomain_from_the_stub_and_are_journaled(box):
    r = box.run(["getent", "hosts", "secret-xyz.example"])
    assert r.returncode != 0 and r.stdout == ""
    q = [x for x in r.receipts("dns.query") if x["action"]["target"] == "secret-xyz.example"]
    assert q and all(x["decision"]["result"] == "deny" for x in q)
    assert q[0]["outcome"]["rcode"] == "NXDOMAIN"
    assert "aarm-sandbox: denied dns.query secret-xyz.example" in r.stderr


def test_an_allowed_name_resolves_through_the_stub_and_connects(box, host_server):
    srv = host_server()
    code = f"""
import socket, dns.resolver
res = dns.resolver.Resolver()           # /etc/resolv.conf: the session's stub
print("nameservers", res.nameservers)
ip = res.resolve("localhost", "A")[0].address
s = socket.create_connection((ip, {srv.port}), timeout=5)
s.sendall(b"by-name")
print(s.recv(100).decode())
"""
    r = _py(box, code, ["--allow-net", f"localhost:{srv.port}"])
    assert r.returncode == 0, r.stderr
    assert "127.0.0.53" in r.stdout and "pong:by-name" in r.stdout
    c = r.receipts("net.connect")[0]
    assert c["action"]["names"] == ["localhost"] and c["action"]["egress"] == "broker"
    # the same IP without the name having been resolved through the stub is a bare IP
    r2 = _py(box, CLIENT.format(host="127.0.0.1", port=srv.port), ["--allow-net", f"localhost:{srv.port}"])
    assert r2.returncode != 0 and srv.accepted == 1


def test_loopback_server_and_client_inside_the_sandbox_work(box):
    code = """
import socket, threading
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
def serve():
    c, _ = srv.accept(); c.sendall(c.recv(10) + b"!"); c.close()
threading.Thread(target=serve).start()
c = socket.create_connection(srv.getsockname(), timeout=5)
c.sendall(b"inside")
print(c.recv(10).decode())
"""
    r = _py(box, code)
    assert r.returncode == 0, r.stderr
    assert "inside!" in r.stdout
    assert all(x["action"]["egress"] == "inside" for x in r.receipts("net.connect"))


def test_a_host_unix_socket_named_with_allow_net_is_reachable(box):
    path = str(box.outside / "svc.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    srv.settimeout(5)
    code = f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({path!r})\nprint('connected')\n"
    try:
        r = _py(box, code, ["--allow-net", f"unix:{path}"])
        assert r.returncode == 0 and "connected" in r.stdout, r.stderr
        srv.accept()[0].close()
        other = _py(box, code.replace("svc.sock", "svc.sock"), ["--allow-net", "unix:/elsewhere.sock"])
        assert other.returncode != 0
    finally:
        srv.close()


# A brokered UDP socket lives in the supervisor's (the host's) network namespace and sends
# wherever a datagram's address says, so every way of handing it an address must be judged.
UDP_ESCAPES_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
static int u, t;
static volatile int stop;
static void *flip(void *a) { (void)a; while (!stop) { dup2(t, 60); dup2(u, 60); } return 0; }
int main(int argc, char **argv) {
    u = socket(AF_INET, SOCK_DGRAM, 0);
    t = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in ok = {0}, other = {0};
    ok.sin_family = other.sin_family = AF_INET;
    ok.sin_port = htons(atoi(argv[1]));
    other.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, "127.0.0.1", &ok.sin_addr);
    inet_pton(AF_INET, "127.0.0.1", &other.sin_addr);
    printf("allowed %zd\n", sendto(u, "allowed", 7, 0, (void *)&ok, sizeof ok));
    other.sin_family = AF_UNSPEC;      /* udp_sendmsg reads it as AF_INET */
    printf("unspec-sendto %zd\n", sendto(u, "unspec-sendto", 13, 0, (void *)&other, sizeof other));
    struct iovec iov = { "unspec-sendmmsg", 15 };
    struct mmsghdr m = {0};
    m.msg_hdr.msg_name = &other;
    m.msg_hdr.msg_namelen = sizeof other;
    m.msg_hdr.msg_iov = &iov;
    m.msg_hdr.msg_iovlen = 1;
    printf("unspec-sendmmsg %d\n", sendmmsg(u, &m, 1, 0));
    other.sin_family = AF_INET;
    /* a stream send ignores the address, so it may be left to the kernel... unless the
     * fd number is swapped for the brokered datagram socket meanwhile */
    pthread_t th;
    pthread_create(&th, 0, flip, 0);
    int delivered = 0;
    time_t end = time(0) + 2;
    while (time(0) < end && delivered < 3)
        delivered += sendto(60, "swapped", 7, MSG_NOSIGNAL, (void *)&other, sizeof other) == 7;
    stop = 1;
    pthread_join(th, 0);
    printf("swapped %d\n", delivered);
    return 0;
}
"""


def test_a_brokered_udp_socket_sends_only_where_the_policy_says(box, host_server, compile_c):
    prog = compile_c("net_udp_escapes", UDP_ESCAPES_C)
    allowed, other = host_server(kind=socket.SOCK_DGRAM), host_server(kind=socket.SOCK_DGRAM)
    native = box.native([prog, str(allowed.port), str(other.port)])
    time.sleep(0.3)
    assert {b"unspec-sendto", b"unspec-sendmmsg", b"swapped"} <= set(other.data), native.stdout
    other.data.clear()
    allowed.data.clear()

    r = box.run([prog, str(allowed.port), str(other.port)],
                extra=["--allow-net", f"udp://127.0.0.1:{allowed.port}"])
    time.sleep(0.3)
    assert allowed.data == [b"allowed"], r.stdout + r.stderr
    assert other.data == [], r.stdout + r.stderr
    assert "unspec-sendto -1" in r.stdout and "unspec-sendmmsg -1" in r.stdout, r.stdout
    assert "swapped 0" in r.stdout, r.stdout


RELISTEN = """
import ctypes, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)   # brokered
r = libc.connect(s.fileno(), struct.pack("<H", 0) + bytes(14), 16)          # AF_UNSPEC
print("disconnect", r, ctypes.get_errno())
try:
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    print("listening", s.getsockname()[1], flush=True)
except OSError as e:
    print("bind", e.errno)
"""


def test_a_brokered_connection_cannot_be_dissolved_to_listen_on_the_host(box, host_server):
    """connect(AF_UNSPEC) on the supervisor's socket would leave the sandbox holding an
    unconnected socket of the host's network: bind + listen would then serve the host."""
    srv = host_server()
    native = box.native([PY, "-c", RELISTEN, str(srv.port)])
    assert "disconnect 0 0" in native.stdout and "listening" in native.stdout, native.stdout
    r = box.run([PY, "-c", RELISTEN, str(srv.port)], extra=["--allow-net", f"127.0.0.1:{srv.port}"])
    assert "disconnect -1 1" in r.stdout, r.stdout + r.stderr           # EPERM
    assert "listening" not in r.stdout, r.stdout
