"""A TCP/UDP server on the host that counts what reaches it (for the network tests)."""
from __future__ import annotations

import socket
import threading


class HostServer:
    """A TCP (or unix) server on the host that counts what reaches it."""

    def __init__(self, family=socket.AF_INET, addr=("127.0.0.1", 0), kind=socket.SOCK_STREAM,
                 dual_stack=False):
        self.sock = socket.socket(family, kind)
        if dual_stack:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(addr)
        self.kind = kind
        if kind == socket.SOCK_STREAM:
            self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.accepted = 0
        self.data: list[bytes] = []
        self._stop = False
        self._t = threading.Thread(target=self._serve, daemon=True)
        self._t.start()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def _serve(self):
        while not self._stop:
            try:
                if self.kind == socket.SOCK_DGRAM:
                    self.data.append(self.sock.recv(65536))
                    continue
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted += 1
            c.settimeout(2)
            try:
                got = c.recv(65536)
                self.data.append(got)
                if got.startswith(b"GET "):
                    c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                else:
                    c.sendall(b"pong:" + got)
            except OSError:
                pass
            finally:
                c.close()

    def close(self):
        self._stop = True
        self._t.join(2)
        self.sock.close()
