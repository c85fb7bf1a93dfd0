"""Bytes per brokered connection, as the kernel counts them.

A brokered socket lives in the supervisor's network namespace, so the kernel's socket
diagnostics (NETLINK_SOCK_DIAG, via pyroute2) report its TCP counters there: bytes the
peer acknowledged (sent) and bytes received. Nothing the sandbox says is involved. A
background thread polls every `interval` seconds; a connection is identified by its socket
cookie (stable until the socket is freed, also after the program closed it and the
kernel still finishes the FIN exchange), and reported once, when it disappears or when the
session ends.
"""
from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable

INET_DIAG_INFO = 2
_OUR_FIN_ACKED = {5, 6}                 # FIN_WAIT2, TIME_WAIT
_PEER_FIN_RECEIVED = {6, 8, 9, 11}      # TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING


# (Plain classes, not dataclasses: `run` creates a meter for every session with a network
# policy, before the sandbox's first decision.)
class Connection:
    def __init__(self, target: str, cookie: int, bytes_sent: int = 0, bytes_received: int = 0,
                 notif: str = "", measured: bool = False):
        self.target = target
        self.cookie = cookie
        self.bytes_sent = bytes_sent
        self.bytes_received = bytes_received
        self.notif = notif
        # seen at least once (a connection that opened and closed between two polls
        # leaves no counters behind)
        self.measured = measured


class ConnectionMeter:
    def __init__(self, on_closed: Callable[[Connection, str], None], interval: float = 0.1,
                 totals: dict | None = None, error: str | None = None):
        self.on_closed = on_closed      # (connection, "closed" | "open at session end")
        self.interval = interval
        self.totals = {"bytes_sent": 0, "bytes_received": 0} if totals is None else totals
        self._by_cookie: dict = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error = error

    def track(self, fd: int, target: str, notif: str = "") -> None:
        """A TCP socket the supervisor connected for the sandbox (before the hand-over)."""
        cookie = socket_cookie(fd)
        with self._lock:
            self._by_cookie[cookie] = Connection(target, cookie, notif=notif)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="aarm-net-meter", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Final reading; every connection still known is reported."""
        self._stop.set()
        if self._thread is None:
            return                       # nothing was ever tracked (no sock_diag, no pyroute2)
        self._thread.join(5)
        self.poll()
        with self._lock:
            left = list(self._by_cookie.values())
            self._by_cookie.clear()
        for c in left:
            self.on_closed(c, "open at session end")

    def _run(self) -> None:
        # The socket diagnostics library is imported at once, not at the first reading
        # (~100 ms of CPU), and at normal priority; then the thread drops to nice 10, not
        # SCHED_IDLE: a reading is ~1 ms every `interval`, and a thread that other work can
        # starve completely misses short connections (they close between two readings and
        # are reported unmeasured; CI's network test saw it with the machine busy).
        try:
            from pyroute2 import DiagSocket  # noqa: F401
        except Exception:  # noqa: BLE001 - poll() reports it
            pass
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except OSError:
            pass
        while not self._stop.wait(self.interval):
            if self._by_cookie:          # nothing open: no dump
                self.poll()

    def poll(self) -> None:
        # Only a connection tracked before the dump began can be missing from it because it
        # closed: one tracked while the dump ran (a busy machine makes a dump take 100 ms)
        # is simply not in it yet, and must wait for the next reading.
        with self._lock:
            before = set(self._by_cookie)
        try:
            seen = _tcp_counters()
        except Exception as e:  # noqa: BLE001 - accounting must never stop the session
            self.error = f"socket diagnostics unavailable: {e}"
            return
        closed: list[Connection] = []
        with self._lock:
            for cookie, (sent, received) in seen.items():
                c = self._by_cookie.get(cookie)
                if c is not None:
                    self._add(c, sent, received)
            for cookie in [k for k in before if k in self._by_cookie and k not in seen]:
                closed.append(self._by_cookie.pop(cookie))
        for c in closed:
            self.on_closed(c, "closed")

    def _add(self, c: Connection, sent: int, received: int) -> None:
        self.totals["bytes_sent"] += max(0, sent - c.bytes_sent)
        self.totals["bytes_received"] += max(0, received - c.bytes_received)
        c.bytes_sent, c.bytes_received = max(sent, c.bytes_sent), max(received, c.bytes_received)
        c.measured = True


def _tcp_counters() -> dict[int, tuple[int, int]]:
    """cookie -> (bytes acked, bytes received) for every TCP socket of this netns."""
    from pyroute2 import DiagSocket
    out: dict[int, tuple[int, int, int]] = {}
    with DiagSocket() as ds:
        ds.bind()
        for fam in (socket.AF_INET, socket.AF_INET6):
            for msg in ds.get_sock_stats(family=fam, extensions=1 << (INET_DIAG_INFO - 1)):
                info = msg.get_attr("INET_DIAG_INFO")
                if info is None:
                    continue
                cookie = int(msg["idiag_cookie"]) if not isinstance(msg["idiag_cookie"], (list, tuple)) \
                    else (msg["idiag_cookie"][0] | (msg["idiag_cookie"][1] << 32))
                # the counters advance by one for the SYN, and for each FIN once it is
                # acknowledged / received: count only data
                state = msg["idiag_state"]
                acked = (info.get("tcpi_bytes_acked") or 0) - 1 - (state in _OUR_FIN_ACKED)
                received = (info.get("tcpi_bytes_received") or 0) - (state in _PEER_FIN_RECEIVED)
                out[cookie] = (max(0, acked), max(0, received))
    return out


SO_COOKIE = 57


def socket_cookie(fd: int) -> int:
    """The kernel's unique id of a socket, the same one sock_diag reports."""
    s = socket.socket(fileno=os.dup(fd))
    try:
        return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little")
    finally:
        s.close()
