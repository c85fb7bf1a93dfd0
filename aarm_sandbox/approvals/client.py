"""Client side of the control socket (see `control.py` for the protocol and its checks).

The CLI only ever talks to sessions through here, so "which sessions are running" has one
answer: a session is running when its socket under `state_dir()/control/` accepts a
connection. Sockets that refuse are leftovers of a session that died and are skipped.
"""
from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aarm_sandbox.xdg import control_dir


class ControlError(Exception):
    """The session cannot be reached, or answered something that is not our protocol."""


def socket_path(session_id: str) -> Path:
    return control_dir() / f"{session_id}.sock"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class ControlClient:
    """One session's control socket. `request` returns (status, JSON body)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.session = self.path.name[:-5] if self.path.name.endswith(".sock") else self.path.name

    def request(self, method: str, route: str, body: dict | None = None,
                timeout: float = 30) -> tuple[int, dict]:
        conn = _UnixHTTPConnection(str(self.path), timeout)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            try:
                conn.request(method, route, body=data, headers=headers)
            except (BrokenPipeError, ConnectionResetError):
                # The server answered before reading the whole body (413: too large) and
                # closed: its answer is still there to be read.
                pass
            resp = conn.getresponse()
            status, raw = resp.status, resp.read()
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"session {self.session} is not running (no control socket at "
                               f"{self.path})") from None
        except PermissionError:
            raise ControlError(f"permission denied on the control socket {self.path} (it "
                               "belongs to another user)") from None
        except socket.timeout:
            raise ControlError(f"session {self.session} did not answer within {timeout:g}s") from None
        except (OSError, http.client.HTTPException) as e:
            raise ControlError(f"session {self.session}: control socket error: {e}") from None
        finally:
            conn.close()
        try:
            parsed = json.loads(raw)
        except ValueError:
            raise ControlError(f"session {self.session} answered {status} without JSON") from None
        if not isinstance(parsed, dict):
            raise ControlError(f"session {self.session} answered {status} with a non-object")
        return status, parsed

    @staticmethod
    def request_route(request_id: str, action: str | None = None) -> str:
        route = "/v1/requests/" + quote(request_id, safe="")
        return route + "/" + action if action else route


def session_sockets() -> dict[str, Path]:
    """Every control socket by session id, sorted (live or not: callers find out)."""
    directory = control_dir()
    try:
        paths = sorted(directory.glob("*.sock"))
    except OSError:
        return {}
    return {p.name[:-5]: p for p in paths}


def find_request(request_id: str) -> tuple[ControlClient, dict]:
    """The live session holding `request_id`, and its {"request","action_hash","view"}."""
    route = ControlClient.request_route(request_id)
    refusals = []
    for path in session_sockets().values():
        client = ControlClient(path)
        try:
            status, body = client.request("GET", route)
        except ControlError:
            continue                                  # a dead session's leftover socket
        if status == 200:
            return client, body
        if status != 404:
            refusals.append(f"session {client.session}: {body.get('error', status)}")
    detail = f" ({'; '.join(refusals)})" if refusals else ""
    raise ControlError(f"no running session has a pending request {request_id!r}{detail}")
