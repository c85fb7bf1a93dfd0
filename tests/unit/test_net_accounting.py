"""The connection meter on real loopback TCP connections and the kernel's socket diagnostics."""
import socket

import pytest

from aarm_sandbox.net import accounting
from aarm_sandbox.net.accounting import ConnectionMeter

pytest.importorskip("pyroute2")


@pytest.fixture
def pair_factory():
    srv = socket.create_server(("127.0.0.1", 0))
    made = []

    def make():
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
        made.extend((a, b))
        return a, b

    yield make
    for s in made + [srv]:
        s.close()


def test_connection_tracked_while_a_reading_runs_is_measured_not_reported_closed(pair_factory, monkeypatch):
    """A dump taken before a connection existed cannot show it: the connection must wait for
    the next reading instead of being reported closed and unmeasured (CI saw exactly that
    when a busy machine made a dump slow and a second connection came during it)."""
    closed = []
    meter = ConnectionMeter(lambda c, why: closed.append((c, why)), interval=3600)
    first, _ = pair_factory()
    meter.track(first.fileno(), "127.0.0.1:1")
    real_dump = accounting._tcp_counters
    later = []

    def dump_then_track():
        seen = real_dump()
        later.extend(pair_factory())         # connected and tracked while the reading runs
        meter.track(later[0].fileno(), "127.0.0.1:2")
        return seen

    monkeypatch.setattr(accounting, "_tcp_counters", dump_then_track)
    meter.poll()
    monkeypatch.setattr(accounting, "_tcp_counters", real_dump)
    assert closed == []
    second, second_peer = later

    second.sendall(b"hello")
    assert second_peer.recv(5) == b"hello"
    second_peer.sendall(b"pong!!")
    assert second.recv(6) == b"pong!!"
    meter.poll()
    second.close()
    second_peer.close()
    for _ in range(50):                 # the FIN exchange is the kernel's, asynchronous
        meter.poll()
        if closed:
            break
    meter.stop()
    by_target = {c.target: (c, why) for c, why in closed}
    c, why = by_target["127.0.0.1:2"]
    assert why == "closed" and c.measured
    assert (c.bytes_sent, c.bytes_received) == (5, 6)
    assert by_target["127.0.0.1:1"][1] == "open at session end"
