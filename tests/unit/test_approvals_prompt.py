"""The terminal approver on real pseudo-terminals.

Each test forks a child with pty.fork() (a session leader whose controlling terminal is
the pty). The child imitates `run`: it forks a "sandboxed command" into its own process
group, makes that group the foreground, and the command blocks reading the terminal.
Then the child runs a TerminalApprover against a one-request broker. The test plays the
human at the pty master and checks what the broker recorded and what the command read.
"""
from __future__ import annotations

import json
import os
import pty
import select
import signal
import threading
import time
import traceback
from pathlib import Path

import pytest

from aarm_sandbox.approvals.prompt import PROMPT, TerminalApprover
from conftest import wait_for

RID = "r-0a1b2c3d4e"
HASH = "5d" * 32
VIEW = {"request": RID, "session": "test-session", "kind": "step_up",
        "action": {"type": "file.delete", "target": "/tmp/\x1b[31mred", "syscall": "unlinkat",
                   "pid": 1, "tid": 1, "program": "/usr/bin/rm",
                   "argv": ["rm", "-rf", "\x1b[8m/home/u\x1b[0m"], "paths": ["/tmp/\x1b[31mred"]},
        "data_classes": [], "rule": {"id": "rm", "reason": "deleting"}, "history": [],
        "intent": {"text": "y", "note": "declared by the agent; not verified"},
        "requested_at": "2025-03-01T10:15:02.118020Z",
        "expires_at": "2025-03-01T10:20:02.118020Z", "freeze": False}
PROMPT_BYTES = PROMPT.encode()
TIMEOUT = 5.0


class OneRequestBroker:
    """The three broker calls the approver uses, for one request."""

    def __init__(self, expire_file: Path) -> None:
        self.pending = True
        self.expire_file = expire_file         # created by the test: "answered elsewhere"
        self.answers: list[dict] = []
        self.done = threading.Event()

    def is_pending(self, request_id: str) -> bool:
        if self.pending and self.expire_file.exists():
            self.pending = False
            self.done.set()
        return self.pending and request_id == RID

    def get(self, request_id: str) -> dict | None:
        if not self.is_pending(request_id):
            return None
        return {"request": RID, "action_hash": HASH, "view": VIEW}

    def answer(self, request_id, action_hash, approve, approver, reason, scope):
        if not self.is_pending(request_id) or action_hash != HASH:
            return 409, {"error": "not pending"}
        self.pending = False
        self.answers.append({"approve": approve, "approver": approver, "reason": reason,
                             "scope": scope})
        self.done.set()
        return 200, {"request": request_id, "approved": approve, "scope": scope}


# ---------------------------------------------------------------------- the child side

def _command(tmp: Path, steal: bool) -> None:
    """The "sandboxed command": waits to be foreground, then reads the terminal. With
    `steal`, it ignores SIGTTOU and takes the foreground back once the prompt took it."""
    os.setpgid(0, 0)
    out = tmp / "command.out"
    if steal:
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)

    def on_sigint(signum, frame):
        with open(out, "a") as f:
            f.write("SIGINT\n")
    signal.signal(signal.SIGINT, on_sigint)
    while os.tcgetpgrp(0) != os.getpgrp():
        time.sleep(0.005)
    (tmp / "command.ready").touch()
    if steal:
        while os.tcgetpgrp(0) == os.getpgrp():
            time.sleep(0.005)
        time.sleep(0.1)
        os.tcsetpgrp(0, os.getpgrp())
        (tmp / "command.stole").touch()
    while True:
        data = os.read(0, 1024)
        if not data:
            os._exit(0)
        with open(out, "ab") as f:
            f.write(data)


def _child(tmp: Path, with_command: bool, wait_type_ahead: bool, steal: bool) -> None:
    signal.alarm(15)                           # a hang kills the child, never the test run
    results: dict = {"available": TerminalApprover.available()}
    command = None
    if with_command:
        command = os.fork()
        if command == 0:
            _command(tmp, steal)
        try:
            os.setpgid(command, command)
        except OSError:
            pass
        (tmp / "command.pid").write_text(str(command))
        os.tcsetpgrp(0, command)
        assert wait_for((tmp / "command.ready").exists)
        time.sleep(0.1)                        # let it block inside read()
    if wait_type_ahead:                        # the test typed before any prompt exists
        select.select([0], [], [], TIMEOUT)
    broker = OneRequestBroker(tmp / "expire")
    TerminalApprover.prepare_main_thread()
    approver = TerminalApprover(broker).start()
    approver.submit(RID)
    results["done"] = wait_for(lambda: broker.done.is_set() or not approver._thread.is_alive(),
                                TIMEOUT * 2)
    if with_command:                            # the test types "after" once it is over
        wait_for(lambda: b"after" in _read(tmp / "command.out"))
    approver.stop()
    results["thread_alive"] = approver._thread.is_alive()
    results["answers"] = broker.answers
    (tmp / "results.json").write_text(json.dumps(results))
    if command is not None:
        os.kill(command, signal.SIGKILL)
        os.waitpid(command, 0)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


# ---------------------------------------------------------------------- the human side

class Human:
    """The pty master: what the terminal shows, and the keyboard."""

    def __init__(self, tmp: Path, with_command: bool = True, type_ahead: bytes = b"",
                 steal: bool = False) -> None:
        self.tmp = tmp
        self.out = bytearray()
        self.pos = 0
        self.pid, self.master = pty.fork()
        if self.pid == 0:
            try:
                _child(tmp, with_command, bool(type_ahead), steal)
                os._exit(0)
            except BaseException:
                (tmp / "child.err").write_text(traceback.format_exc())
                os._exit(3)
        if type_ahead:
            self.type(type_ahead)

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def _pump(self, timeout: float) -> bool:
        if not select.select([self.master], [], [], max(timeout, 0))[0]:
            return True
        try:
            data = os.read(self.master, 4096)
        except OSError:
            data = b""
        self.out += data
        return bool(data)

    def expect(self, needle: bytes) -> bytes:
        """Wait for `needle` after what was already matched; returns the text up to it."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            i = self.out.find(needle, self.pos)
            if i >= 0:
                seen, self.pos = bytes(self.out[self.pos:i + len(needle)]), i + len(needle)
                return seen
            if time.monotonic() > deadline or not self._pump(deadline - time.monotonic()):
                raise AssertionError(f"no {needle!r} on the terminal; it showed "
                                     f"{bytes(self.out)!r}; child: {self.child_error()}")

    def child_error(self) -> str:
        return (self.tmp / "child.err").read_text() if (self.tmp / "child.err").exists() else ""

    def finish(self) -> dict:
        deadline = time.monotonic() + TIMEOUT * 2
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.pid = 0
                assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, self.child_error()
                return json.loads((self.tmp / "results.json").read_text())
            self._pump(0.05)
        raise AssertionError(f"the child did not finish; terminal: {bytes(self.out)!r}")

    def close(self) -> None:
        pid_file = self.tmp / "command.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.master)


@pytest.fixture
def human_factory(tmp_path: Path):
    made: list[Human] = []

    def make(**kwargs) -> Human:
        made.append(Human(tmp_path, **kwargs))
        return made[-1]
    yield make
    for h in made:
        h.close()


# ---------------------------------------------------------------------- tests

def test_approve_once_and_the_command_reads_nothing_of_it(human_factory, tmp_path: Path) -> None:
    human = human_factory()
    shown = human.expect(PROMPT_BYTES)
    assert b"request " + RID.encode() in shown
    assert b"/tmp/\\x1b[31mred" in shown and b"argv[2] = \\x1b[8m/home/u\\x1b[0m" in shown
    assert b"\x1b" not in shown
    assert b"intent (the agent's claim, not verified): y" in shown
    human.type(b"x\n")
    human.expect(b"please answer y, s or n")
    human.expect(PROMPT_BYTES)                  # asked again
    human.type(b"y\n")
    human.expect(f"approved {RID} once".encode())
    human.type(b"after\n")
    results = human.finish()
    assert results["available"] is True
    [answer] = results["answers"]
    assert answer["approve"] is True and answer["scope"] == "once" and answer["reason"] is None
    assert answer["approver"]["channel"] == "terminal"
    assert answer["approver"]["tty"].startswith("/dev/pts/")
    assert answer["approver"]["uid"] == os.getuid()
    assert _read(tmp_path / "command.out") == b"after\n"


def test_session_scope(human_factory) -> None:
    human = human_factory(with_command=False)
    human.expect(PROMPT_BYTES)
    human.type(b"s\n")
    human.expect(f"approved {RID} for this session".encode())
    [answer] = human.finish()["answers"]
    assert answer["approve"] is True and answer["scope"] == "session"


def test_type_ahead_is_flushed_and_n_denies(human_factory) -> None:
    human = human_factory(with_command=False, type_ahead=b"y\n")
    human.expect(PROMPT_BYTES)
    time.sleep(0.3)                             # a "y" taken as an answer would show by now
    human.type(b"n\n")
    human.expect(f"denied {RID}".encode())
    [answer] = human.finish()["answers"]
    assert answer["approve"] is False and answer["reason"] == "denied at the terminal"


def test_ctrl_c_denies_and_no_sigint_reaches_the_command(human_factory, tmp_path: Path) -> None:
    human = human_factory()
    human.expect(PROMPT_BYTES)
    human.type(b"\x03")                         # no Enter needed
    human.expect(f"denied {RID}".encode())
    human.type(b"after\n")
    [answer] = human.finish()["answers"]
    assert answer["approve"] is False
    assert _read(tmp_path / "command.out") == b"after\n"


def test_answered_elsewhere_releases_the_terminal(human_factory, tmp_path: Path) -> None:
    human = human_factory()
    human.expect(PROMPT_BYTES)
    (tmp_path / "expire").touch()
    human.expect(b"(answered elsewhere or expired)")
    human.type(b"after\n")
    assert human.finish()["answers"] == []
    assert _read(tmp_path / "command.out") == b"after\n"


def test_a_stolen_foreground_is_taken_back(human_factory, tmp_path: Path) -> None:
    human = human_factory(steal=True)           # the command ignores SIGTTOU, tcsetpgrp's
    human.expect(PROMPT_BYTES)
    human.expect(b"(another process took the terminal; anything typed meanwhile was discarded)")
    human.expect(PROMPT_BYTES)
    assert (tmp_path / "command.stole").exists()
    human.type(b"y\n")
    human.expect(f"approved {RID} once".encode())
    human.type(b"after\n")
    [answer] = human.finish()["answers"]
    assert answer["approve"] is True
    assert _read(tmp_path / "command.out") == b"after\n"


def test_eof_stops_the_approver(human_factory, tmp_path: Path) -> None:
    human = human_factory(with_command=False)
    human.expect(PROMPT_BYTES)
    human.type(b"\x04")                         # Ctrl-D at the start of a line
    results = human.finish()
    assert results["answers"] == [] and results["thread_alive"] is False
