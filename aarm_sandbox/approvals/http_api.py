"""The HTTP/JSON routes of the control socket (see `control.py` for how the socket is
guarded). Loaded at the first connection: http.server costs 15-40 ms of imports that a
session nobody talks to should not pay at startup."""
from __future__ import annotations

import json
import os
import pwd
import socket
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from aarm_sandbox.approvals.control import peer_credentials
from aarm_sandbox.journal.canonical import raw_bytes_value

MAX_BODY = 64 * 1024
EVENTS_WAIT_DEFAULT = 25.0
EVENTS_WAIT_MAX = 60.0
LABEL_MAX = 200


def peer_identity(pid: int, uid: int) -> dict[str, Any]:
    """Who answered, from kernel facts only (the free-text label is added per request)."""
    try:
        user: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = None
    try:
        exe: str | dict | None = raw_bytes_value(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        exe = None
    return {"channel": "control", "uid": uid, "user": user, "pid": pid, "exe": exe,
            "label": None}


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class Handler(BaseHTTPRequestHandler):
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
        self._discard_unread_body()
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

    def _discard_unread_body(self) -> None:
        """An answer sent (and the connection closed) before the client finished sending
        its body would give the client EPIPE instead of the answer: read what is left
        (bounded; an oversize body is not read, the client gets 413 or a reset)."""
        if getattr(self, "_body_read", False):
            return
        self._body_read = True
        try:
            length = int(self.headers.get("Content-Length", "0")) if self.headers else 0
        except ValueError:
            return
        if 0 < length <= MAX_BODY:
            try:
                self.rfile.read(length)
            except OSError:
                pass

    def _body(self) -> dict[str, Any]:
        self._body_read = True
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


