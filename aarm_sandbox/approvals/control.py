"""The per-session control socket: HTTP/1.1 + JSON over an AF_UNIX stream socket.

It lets a human (or their tooling) list, inspect, approve and deny the actions a session
holds, and give it the context DEFERred actions wait for. Why that is safe to expose:

* The socket lives in the supervisor's state directory (`state_dir()/control/`), which is
  outside the sandbox's mount namespace view: a sandboxed process cannot even name it.
* The file is 0600 inside a 0700 directory owned by the session's user, so only that user
  (or root) can connect at all.
* Every request is checked against the peer's kernel credentials (SO_PEERCRED), not
  anything the client says: the uid must be the session owner's (or root), and the pid
  must not belong to the sandboxed process tree. A process in the sandbox that somehow got
  hold of a connected descriptor would still be refused, because SO_PEERCRED names the
  process that connected.
* An answer names a request id *and* the hash of the exact view it approves, and the broker
  accepts it once: a stale or forged view gets 409, a replay 404.
"""
from __future__ import annotations

import errno
import os
import selectors
import socket
import socketserver
import stat
import struct
import threading
from pathlib import Path

TYPE_CHECKING = False      # (typing itself costs the startup path ~4 ms)
if TYPE_CHECKING:
    from typing import Any

    from aarm_sandbox.approvals.broker import ApprovalBroker



def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected, as the kernel recorded it."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


def _handler(request, client_address, server):
    from aarm_sandbox.approvals.http_api import Handler
    return Handler(request, client_address, server)


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, path: Path, broker: "ApprovalBroker"):
        self.broker = broker
        super().__init__(str(path), _handler, bind_and_activate=False)

    def server_bind(self) -> None:
        old = os.umask(0o177)                          # the file is born 0600: no window
        try:
            self.socket.bind(self.server_address)
        finally:
            os.umask(old)
        os.chmod(self.server_address, 0o600)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass                                           # a dropped client is not news


def _prepare_dir(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, "the control directory is not a directory", str(directory))
    if st.st_uid != os.geteuid():
        raise OSError(errno.EPERM, f"the control directory is owned by uid {st.st_uid}, "
                      f"not by us ({os.geteuid()})", str(directory))
    os.chmod(directory, 0o700)


def _clear_stale(path: Path) -> None:
    """Remove a socket left by a session that died; refuse to take over a live one."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, "a file that is not a socket is in the way", str(path))
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except FileNotFoundError:
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "another live session already serves this control socket",
                  str(path))


class ControlServer:
    """Serves one broker on `path` from a daemon thread until `stop()`."""

    def __init__(self, broker: "ApprovalBroker", path: Path):
        self.broker = broker
        self.path = Path(path)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._ino: tuple[int, int] | None = None

    def start(self) -> "ControlServer":
        _prepare_dir(self.path.parent)
        _clear_stale(self.path)
        server = _Server(self.path, self.broker)
        try:
            server.server_bind()
            server.server_activate()
        except BaseException:
            server.server_close()
            raise
        st = os.lstat(self.path)
        self._ino = (st.st_dev, st.st_ino)
        self._server = server
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._serve, args=(server,),
                                        name=f"aarm-control-{self.path.stem}", daemon=True)
        self._thread.start()
        return self

    def _serve(self, server) -> None:
        """Accept until stop() writes to the wake pipe: no polling while idle, and the
        session's end is not delayed by a poll interval."""
        with selectors.DefaultSelector() as sel:
            sel.register(server.socket, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():
                    if key.fileobj == self._wake_r:
                        return
                    server._handle_request_noblock()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        server.server_close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        try:                          # only unlink the file if it is still ours
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
