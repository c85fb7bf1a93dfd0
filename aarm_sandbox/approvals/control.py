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

import base64
import errno
import json
import os
import selectors
import pwd
import socket
import socketserver
import stat
import struct
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:
    from aarm_sandbox.approvals.broker import ApprovalBroker

MAX_BODY = 64 * 1024
EVENTS_WAIT_DEFAULT = 25.0
EVENTS_WAIT_MAX = 60.0
LABEL_MAX = 200


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected, as the kernel recorded it."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


def _text_or_b64(raw: bytes) -> str | dict:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(raw).decode("ascii")}


def peer_identity(pid: int, uid: int) -> dict[str, Any]:
    """Who answered, from kernel facts only (the free-text label is added per request)."""
    try:
        user: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = None
    try:
        exe: str | dict | None = _text_or_b64(os.readlink(f"/proc/{pid}/exe".encode()))
    except OSError:
        exe = None
    return {"channel": "control", "uid": uid, "user": user, "pid": pid, "exe": exe,
            "label": None}


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "aarm-sandbox-control"
    sys_version = ""
    timeout = 15                     # a client that stalls mid-request frees its thread
    server: "_Server"

    # -- plumbing --------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:   # noqa: A002 - stdlib name
        pass                                                    # no stderr noise per request

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, default=repr).encode()
        self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests the stdlib rejects get the same JSON shape as ours."""
        try:
            text = message or self.responses.get(code, ("error",))[0]
            self._send_json(code, {"error": text})
        except OSError:
            self.close_connection = True

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        try:
            try:
                status, body = self._route()
            except _HTTPError as e:
                self._send_json(e.status, {"error": str(e)}, e.headers)
                return
            self._send_json(status, body)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - one bad request must not stop approvals
            try:
                self._send_json(500, {"error": repr(e)})
            except OSError:
                self.close_connection = True

    # -- checks ----------------------------------------------------------------------
    def _authorize(self) -> dict[str, Any]:
        pid, uid, _gid = peer_credentials(self.request)
        if uid != os.geteuid() and uid != 0:
            raise _HTTPError(403, f"uid {uid} is not the session owner")
        if pid <= 0:
            raise _HTTPError(403, "the caller's pid is not visible from the supervisor's pid "
                             "namespace, so it cannot be shown to be outside the sandbox")
        if self.server.broker.is_sandbox_process(pid):
            raise _HTTPError(403, "the caller is inside the sandbox: a sandboxed process can "
                             "never answer approvals")
        return peer_identity(pid, uid)

    def _body(self) -> dict[str, Any]:
        if self.headers.get("Transfer-Encoding"):
            raise _HTTPError(411, "send a Content-Length, not a chunked body")
        raw_len = self.headers.get("Content-Length", "0")
        try:
            length = int(raw_len)
        except ValueError:
            raise _HTTPError(400, "bad Content-Length") from None
        if length < 0:
            raise _HTTPError(400, "bad Content-Length")
        if length > MAX_BODY:
            raise _HTTPError(413, f"request body over {MAX_BODY} bytes")
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise _HTTPError(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _HTTPError(400, "the body must be a JSON object")
        return body

    @staticmethod
    def _field(body: dict, name: str, required: bool = False) -> str | None:
        value = body.get(name)
        if value is None:
            if required:
                raise _HTTPError(400, f"missing field {name!r}")
            return None
        if not isinstance(value, str):
            raise _HTTPError(400, f"field {name!r} must be a string")
        return value

    # -- routes ----------------------------------------------------------------------
    def _route(self) -> tuple[int, Any]:
        identity = self._authorize()               # before looking at anything else
        broker = self.server.broker
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        method = self.command

        def only(allowed: str) -> None:
            if method != allowed:
                raise _HTTPError(405, f"use {allowed} for {url.path}", {"Allow": allowed})

        if parts == ["v1", "session"]:
            only("GET")
            return 200, broker.status()
        if parts == ["v1", "requests"]:
            only("GET")
            return 200, {"requests": broker.list_requests()}
        if len(parts) == 3 and parts[:2] == ["v1", "requests"] and parts[2]:
            only("GET")
            found = broker.get(parts[2])
            if found is None:
                return 404, {"error": f"no pending request {parts[2]!r} in this session"}
            return 200, found
        if len(parts) == 4 and parts[:2] == ["v1", "requests"] and parts[3] in ("approve", "deny"):
            only("POST")
            body = self._body()
            action_hash = self._field(body, "action_hash", required=True)
            reason = self._field(body, "reason")
            label = self._field(body, "approver")
            approve = parts[3] == "approve"
            scope = (self._field(body, "scope") or "once") if approve else "once"
            approver = dict(identity, label=label[:LABEL_MAX] if label is not None else None)
            return broker.answer(parts[2], action_hash, approve, approver, reason=reason,
                                 scope=scope)
        if parts == ["v1", "context"]:
            only("POST")
            body = self._body()
            key = self._field(body, "key", required=True)
            value = self._field(body, "value", required=True)
            label = self._field(body, "approver")
            by = dict(identity, label=label[:LABEL_MAX] if label is not None else None)
            return broker.add_context(key, value, by=by)
        if parts == ["v1", "events"]:
            only("GET")
            query = parse_qs(url.query)
            try:
                after = int(query.get("after", ["0"])[-1])
                wait = float(query.get("wait", [str(EVENTS_WAIT_DEFAULT)])[-1])
            except ValueError:
                raise _HTTPError(400, "after must be an integer and wait a number") from None
            if wait != wait:                           # NaN
                raise _HTTPError(400, "wait must be a number")
            wait = min(max(wait, 0.0), EVENTS_WAIT_MAX)
            nxt, events = broker.events_after(after, wait)
            return 200, {"next": nxt, "events": events}
        raise _HTTPError(404, f"no such route: {url.path}")


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, path: Path, broker: "ApprovalBroker"):
        self.broker = broker
        super().__init__(str(path), _Handler, bind_and_activate=False)

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
