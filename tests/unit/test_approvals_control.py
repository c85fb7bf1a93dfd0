"""The control socket over real AF_UNIX sockets, real peer credentials and real processes.

The broker here is a small in-test object with the broker's interface (single-use answers,
hash binding, a sandbox-membership predicate we steer): what is under test is the socket,
its checks and the CLI, not the broker.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from aarm_sandbox.approvals.client import ControlClient, ControlError, find_request
from aarm_sandbox.approvals.control import ControlServer

HASH = "ab" * 32
OTHER_HASH = "cd" * 32


class FakeBroker:
    def __init__(self, session_id: str = "S1"):
        self.session_id = session_id
        self.pending = {"r-0001": {"request": "r-0001", "action_hash": HASH, "view": {
            "request": "r-0001", "session": session_id, "kind": "step_up",
            "action": {"type": "file.delete", "target": "/w/\x1b[31mx", "syscall": "unlinkat"},
            "rule": {"id": "ask-delete", "reason": "deleting needs a human"}}}}
        self.answers: list[dict] = []
        self.context: list[tuple[str, str, dict]] = []
        self.sandbox_pids: set[int] = set()
        self.events: list[dict] = []
        self.cond = threading.Condition()

    def status(self) -> dict:
        return {"session": self.session_id, "pid": os.getpid(), "pending": len(self.pending),
                "approver": "socket"}

    def list_requests(self) -> list[dict]:
        return [{"request": rid, "session": self.session_id, "kind": "step_up",
                 "type": "file.delete", "target": p["view"]["action"]["target"],
                 "rule": "ask-delete"} for rid, p in self.pending.items()]

    def get(self, request_id: str) -> dict | None:
        return self.pending.get(request_id)

    def answer(self, request_id, action_hash, approve, approver, reason=None, scope="once"):
        p = self.pending.get(request_id)
        if p is None:
            return 404, {"error": "no such pending request"}
        if action_hash != p["action_hash"]:
            return 409, {"error": "action_hash does not match the request"}
        if scope not in ("once", "session"):
            return 400, {"error": "bad scope"}
        del self.pending[request_id]                      # single use
        self.answers.append({"request": request_id, "approve": approve, "approver": approver,
                             "reason": reason, "scope": scope})
        return 200, {"ok": True, "request": request_id,
                     "answer": "approve" if approve else "deny", "scope": scope}

    def add_context(self, key, value, by):
        if key == "boom":
            raise RuntimeError("broker bug")
        self.context.append((key, value, by))
        return 200, {"ok": True, "released": ["r-0001"], "escalated": [], "still_waiting": []}

    def push_event(self, ev: dict) -> None:
        with self.cond:
            self.events.append({"seq": len(self.events) + 1, **ev})
            self.cond.notify_all()

    def events_after(self, after, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.events) <= after and time.monotonic() < deadline:
                self.cond.wait(deadline - time.monotonic())
            return len(self.events), [e for e in self.events if e["seq"] > after]

    def is_sandbox_process(self, pid: int) -> bool:
        return pid in self.sandbox_pids


@pytest.fixture
def state(tmp_path):
    """$XDG_STATE_HOME for the CLI; the session socket at its control/ directory."""
    return tmp_path / "state"


@pytest.fixture
def served(state):
    broker = FakeBroker()
    server = ControlServer(broker, state / "aarm-sandbox" / "control" / "S1.sock").start()
    yield broker, server, ControlClient(server.path)
    server.stop()


def raw_request(path: Path, data: bytes) -> tuple[int, dict]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    s.sendall(data)
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    s.close()
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def in_child(fn) -> tuple[int, dict]:
    """Run fn() in a forked child; it reports (status, body) through a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                          # child: never returns
        os.close(r)
        try:
            out = json.dumps(fn()).encode()
        except BaseException as e:                        # noqa: BLE001
            out = json.dumps([-1, {"error": repr(e)}]).encode()
        os.write(w, out)
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    status, body = json.loads(data)
    return status, body


def cli(state: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, XDG_STATE_HOME=str(state))     # (the package as the tests import it)
    return subprocess.run([sys.executable, "-m", "aarm_sandbox", *args], env=env, text=True,
                          capture_output=True, timeout=60)


# ------------------------------------------------------------------ protocol
def test_list_get_approve_round_trip_records_the_peer_as_approver(served):
    broker, _server, client = served
    assert client.request("GET", "/v1/session") == (200, broker.status())
    status, body = client.request("GET", "/v1/requests")
    assert status == 200 and [r["request"] for r in body["requests"]] == ["r-0001"]
    status, found = client.request("GET", "/v1/requests/r-0001")
    assert status == 200 and found["action_hash"] == HASH
    assert found["view"]["action"]["target"] == "/w/\x1b[31mx"      # JSON carries it intact
    status, body = client.request("POST", "/v1/requests/r-0001/approve",
                                  {"action_hash": HASH, "reason": "ok", "scope": "session",
                                   "approver": "alice" * 100})
    assert (status, body["answer"], body["scope"]) == (200, "approve", "session")
    (ans,) = broker.answers
    who = ans["approver"]
    assert ans["approve"] is True and ans["reason"] == "ok" and ans["scope"] == "session"
    assert who["channel"] == "control" and who["uid"] == os.geteuid()
    assert who["pid"] == os.getpid() and who["exe"] == os.readlink("/proc/self/exe")
    assert who["label"] == ("alice" * 100)[:200]
    assert client.request("GET", "/v1/requests/r-0001")[0] == 404


def test_deny_is_recorded_as_deny(served):
    broker, _server, client = served
    status, body = client.request("POST", "/v1/requests/r-0001/deny", {"action_hash": HASH})
    assert status == 200 and body["answer"] == "deny"
    assert broker.answers[0]["approve"] is False and broker.answers[0]["scope"] == "once"


def test_approve_with_wrong_hash_is_409_and_nothing_is_approved(served):
    broker, _server, client = served
    status, body = client.request("POST", "/v1/requests/r-0001/approve",
                                  {"action_hash": OTHER_HASH})
    assert status == 409 and "error" in body
    assert broker.answers == [] and "r-0001" in broker.pending
    status, _ = client.request("POST", "/v1/requests/r-0001/approve", {})
    assert status == 400 and broker.answers == []                # the hash is required


def test_replayed_approval_is_404(served):
    broker, _server, client = served
    route, body = "/v1/requests/r-0001/approve", {"action_hash": HASH}
    assert client.request("POST", route, body)[0] == 200
    assert client.request("POST", route, body)[0] == 404
    assert len(broker.answers) == 1


def test_oversize_body_is_413_and_invalid_json_400(served):
    broker, _server, client = served
    status, _ = client.request("POST", "/v1/requests/r-0001/approve",
                               {"action_hash": HASH, "reason": "x" * (64 * 1024)})
    assert status == 413
    status, _ = raw_request(client.path, b"POST /v1/requests/r-0001/approve HTTP/1.1\r\n"
                            b"Host: x\r\nContent-Length: 9\r\n\r\n{not json")
    assert status == 400
    status, _ = raw_request(client.path, b"POST /v1/context HTTP/1.1\r\nHost: x\r\n"
                            b"Content-Length: 2\r\n\r\n[]")
    assert status == 400
    assert broker.answers == [] and broker.context == []


def test_unknown_route_404_wrong_method_405(served):
    _broker, _server, client = served
    assert client.request("GET", "/v1/nope")[0] == 404
    assert client.request("POST", "/v1/session", {})[0] == 405
    assert client.request("GET", "/v1/requests/r-0001/approve")[0] == 405
    assert client.request("DELETE", "/v1/requests/r-0001")[0] == 405


def test_handler_exception_is_500_and_the_server_keeps_serving(served):
    _broker, _server, client = served
    status, body = client.request("POST", "/v1/context", {"key": "boom", "value": "1"})
    assert status == 500 and "broker bug" in body["error"]
    assert client.request("GET", "/v1/session")[0] == 200


def test_context_is_given_with_the_peer_identity(served):
    broker, _server, client = served
    status, body = client.request("POST", "/v1/context", {"key": "ticket", "value": "OPS-1"})
    assert status == 200 and body["released"] == ["r-0001"]
    key, value, by = broker.context[0]
    assert (key, value, by["uid"], by["pid"]) == ("ticket", "OPS-1", os.geteuid(), os.getpid())


def test_events_long_poll_returns_promptly_when_an_event_appears(served):
    broker, _server, client = served
    threading.Timer(0.3, broker.push_event, [{"event": "answered", "request": "r-1"}]).start()
    began = time.monotonic()
    status, body = client.request("GET", "/v1/events?after=0&wait=30")
    elapsed = time.monotonic() - began
    assert status == 200 and body["next"] == 1 and body["events"][0]["request"] == "r-1"
    assert 0.2 < elapsed < 3
    began = time.monotonic()
    status, body = client.request("GET", "/v1/events?after=1&wait=0.2")
    assert (status, body["events"]) == (200, []) and time.monotonic() - began < 2
    assert client.request("GET", "/v1/events?after=x")[0] == 400


# ------------------------------------------------------------------ the socket itself
def test_socket_is_0600_in_a_0700_directory_even_if_the_directory_was_open(tmp_path):
    directory = tmp_path / "control"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    server = ControlServer(FakeBroker(), directory / "S1.sock").start()
    try:
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        st = os.stat(server.path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    finally:
        server.stop()
    assert not server.path.exists()


def test_directory_owned_by_another_uid_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    directory = tmp_path / "control"
    directory.mkdir(mode=0o700)
    os.chown(directory, 65534, 65534)
    with pytest.raises(OSError):
        ControlServer(FakeBroker(), directory / "S1.sock").start()


def test_stale_socket_is_replaced_but_a_live_one_is_not_taken_over(tmp_path):
    path = tmp_path / "control" / "S1.sock"
    path.parent.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()                                        # the file stays; nobody listens
    server = ControlServer(FakeBroker(), path).start()
    try:
        assert ControlClient(path).request("GET", "/v1/session")[0] == 200
        with pytest.raises(OSError) as err:
            ControlServer(FakeBroker(), path).start()
        assert "live" in str(err.value)
        assert ControlClient(path).request("GET", "/v1/session")[0] == 200
    finally:
        server.stop()


def test_missing_socket_is_a_clear_control_error(tmp_path):
    with pytest.raises(ControlError, match="session gone is not running"):
        ControlClient(tmp_path / "gone.sock").request("GET", "/v1/session")


# ------------------------------------------------------------------ peer checks
def test_process_inside_the_sandbox_is_refused_403(served):
    broker, _server, client = served
    go_r, go_w = os.pipe()
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:                                        # child: the "sandboxed" caller
        os.close(go_w)
        os.close(report_r)
        try:
            os.read(go_r, 1)                            # wait until the parent marked us
            out = json.dumps(client.request("POST", "/v1/requests/r-0001/approve",
                                            {"action_hash": HASH})).encode()
        except BaseException as e:                      # noqa: BLE001
            out = json.dumps([-1, {"error": repr(e)}]).encode()
        os.write(report_w, out)
        os._exit(0)
    os.close(go_r)
    os.close(report_w)
    broker.sandbox_pids.add(pid)
    os.write(go_w, b"x")
    os.close(go_w)
    data = b""
    while chunk := os.read(report_r, 65536):
        data += chunk
    os.close(report_r)
    os.waitpid(pid, 0)
    status, body = json.loads(data)
    assert status == 403 and "inside the sandbox" in body["error"]
    assert broker.answers == [] and "r-0001" in broker.pending
    # The same request from outside the sandbox goes through.
    assert client.request("POST", "/v1/requests/r-0001/approve", {"action_hash": HASH})[0] == 200


def test_peer_with_another_uid_is_refused_403():
    if os.geteuid() != 0:
        pytest.skip("needs root to become another uid")
    root = Path(tempfile.mkdtemp(prefix="aarm-ctl-"))
    try:
        broker = FakeBroker()
        server = ControlServer(broker, root / "control" / "S1.sock").start()
        try:
            # Open the filesystem permissions on purpose: this test proves the uid check
            # itself, not the 0600/0700 modes (proved above).
            os.chmod(root, 0o755)
            os.chmod(server.path.parent, 0o755)
            os.chmod(server.path, 0o666)

            def child():
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                return ControlClient(server.path).request(
                    "POST", "/v1/requests/r-0001/approve", {"action_hash": HASH})

            status, body = in_child(child)
            assert status == 403 and "uid 65534 is not the session owner" in body["error"]
            assert broker.answers == []
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------ the CLI
def test_cli_list_and_show_json(served, state):
    _broker, _server, _client = served
    res = cli(state, "approvals", "list", "--json")
    assert res.returncode == 0, res.stderr
    assert [r["request"] for r in json.loads(res.stdout)["requests"]] == ["r-0001"]
    res = cli(state, "approvals", "show", "r-0001", "--json")
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout)
    assert shown["action_hash"] == HASH and shown["view"]["action"]["target"] == "/w/\x1b[31mx"
    res = cli(state, "approvals", "show", "r-nope")
    assert res.returncode == 1 and res.stderr.startswith("aarm-sandbox: ")
    assert "Traceback" not in res.stderr


def test_cli_human_output_never_carries_raw_escapes(served, state):
    res = cli(state, "approvals", "list")
    assert res.returncode == 0 and "r-0001" in res.stdout and "\x1b" not in res.stdout
    res = cli(state, "approvals", "show", "r-0001")
    assert res.returncode == 0 and "\x1b" not in res.stdout


def test_cli_approve_against_a_live_server(served, state):
    broker, _server, _client = served
    res = cli(state, "approvals", "approve", "r-0001", "--hash", OTHER_HASH)
    assert res.returncode == 1 and "changed since you looked" in res.stderr
    assert broker.answers == []
    res = cli(state, "approvals", "approve", "r-0001", "--hash", HASH, "--session-scope",
              "--reason", "fine", "--as", "alice")
    assert res.returncode == 0, res.stderr
    (ans,) = broker.answers
    assert ans["approve"] and ans["scope"] == "session" and ans["reason"] == "fine"
    assert ans["approver"]["label"] == "alice" and ans["approver"]["channel"] == "control"
    res = cli(state, "approvals", "approve", "r-0001")
    assert res.returncode == 1 and "no running session" in res.stderr


def test_cli_list_with_no_sessions_says_so(state):
    res = cli(state, "approvals", "list")
    assert (res.returncode, res.stdout.strip()) == (0, "no pending requests")


def test_cli_context_add_bad_key_is_125_and_stopped_session_is_1(served, state):
    broker, _server, _client = served
    res = cli(state, "context", "add", "S1", "bad key=1")
    assert res.returncode == 125 and res.stderr.startswith("aarm-sandbox: ")
    res = cli(state, "context", "add", "S1", "novalue")
    assert res.returncode == 125
    assert broker.context == []
    res = cli(state, "context", "add", "S2", "ticket=1")
    assert res.returncode == 1 and "S2 is not running" in res.stderr
    res = cli(state, "context", "add", "S1", "ticket=OPS-12")
    assert res.returncode == 0, res.stderr
    assert "released: r-0001" in res.stdout and broker.context[0][:2] == ("ticket", "OPS-12")


def test_cli_watch_prints_events_as_json_lines(served, state):
    broker, _server, _client = served
    broker.push_event({"event": "answered", "session": "S1", "request": "r-0001"})
    env = dict(os.environ, XDG_STATE_HOME=str(state))     # (the package as the tests import it)
    proc = subprocess.Popen([sys.executable, "-m", "aarm_sandbox", "approvals", "watch",
                             "--json"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        first = json.loads(proc.stdout.readline())
        assert first["event"] == "answered" and first["session"] == "S1"
        broker.push_event({"event": "context", "session": "S1", "key": "ticket"})
        second = json.loads(proc.stdout.readline())
        assert second["key"] == "ticket" and second["seq"] == 2
    finally:
        proc.kill()
        proc.wait()


def test_find_request_skips_dead_sockets(served, state, monkeypatch):
    dead = state / "aarm-sandbox" / "control" / "S0.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(dead))
    s.close()
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    client, found = find_request("r-0001")
    assert client.session == "S1" and found["action_hash"] == HASH
    with pytest.raises(ControlError, match="no running session"):
        find_request("r-nope")
