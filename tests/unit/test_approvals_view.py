"""The approver's view of a held `rm -rf` whose arguments try to hide: an ANSI "conceal"
sequence around a path, a bidi override, a newline inside an argument, a target that is
not UTF-8. The rendering is pinned byte for byte by a reviewed snapshot.

To regenerate after an intended change: AARM_UPDATE_SNAPSHOTS=1, then review the diff."""
from __future__ import annotations

import base64
import os
import unicodedata
from pathlib import Path

import pytest

from aarm_sandbox.approvals.view import render_request, render_summary
from aarm_sandbox.journal.render import escape

SNAPSHOT = Path(__file__).parent / "snapshots" / "approval_rm_rf.txt"
HASH = "3b7e" + "0c1d" * 15
TARGET = {"b64": base64.b64encode(b"/home/u/proj-\xff\xfe").decode()}
ARGV = ["rm", "-rf", "\x1b[8m/home/u\x1b[0m", "--", "/", "report\u202egpj.sh",
        "a b\nrm -rf ~", TARGET]


def rm_rf_view(**changes) -> dict:
    view = {
        "request": "r-3f9a2c81d0", "session": "20250301T101500-5e6f7a8b", "kind": "step_up",
        "action": {"type": "process.exec", "target": "/usr/bin/rm", "syscall": "execve",
                   "pid": 4242, "tid": 4242, "program": "/usr/bin/bash", "argv": ARGV,
                   "paths": ["/usr/bin/rm"],
                   "object": {"dev": 2049, "ino": 1835011, "file_type": "regular"},
                   "semantic": [{"type": "file.delete", "target": "/",
                                 "params": {"recursive": True, "force": True}},
                                {"type": "file.delete", "target": TARGET,
                                 "params": {"recursive": True, "force": True}}]},
        "data_classes": ["source-code", "credentials"],
        "rule": {"id": "rm-recursive", "reason": "recursive delete outside the workspace"},
        "history": [{"type": "process.exec", "target": "/usr/bin/ls", "result": "allow",
                     "executed": True},
                    {"type": "file.delete", "target": "/home/u/.ssh/id_ed25519",
                     "result": "deny", "executed": False}],
        "intent": {"text": "tidy the build directory\x1b[2K\rDONE: approved by admin",
                   "note": "declared by the agent; not verified"},
        "requested_at": "2025-03-01T10:15:02.118020Z",
        "expires_at": "2025-03-01T10:20:02.118020Z", "freeze": True}
    view.update(changes)
    return view


def test_rm_rf_snapshot() -> None:
    text = render_request(rm_rf_view(), HASH)
    if os.environ.get("AARM_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_bytes(text.encode("utf-8"))
    assert text.encode("utf-8") == SNAPSHOT.read_bytes()


def test_nothing_reaches_the_terminal_unescaped() -> None:
    text = render_request(rm_rf_view(), HASH)
    assert "\x1b" not in text and "\u202e" not in text and "\r" not in text
    assert all(c == "\n" or unicodedata.category(c)[0] != "C" for c in text)
    assert "note: some values contained control/invisible characters, shown escaped" in text
    assert text.splitlines()[-1] == f"action hash: {HASH}"
    assert "intent (the agent's claim, not verified): " in text
    lines = text.splitlines()
    assert len(lines) == len(text.split("\n"))          # a value's newline made no line


def test_every_argv_element_is_numbered() -> None:
    lines = render_request(rm_rf_view(), HASH).splitlines()
    for i, arg in enumerate(ARGV):
        assert any(line.strip() == f"argv[{i}] = {escape(arg)}" for line in lines), arg
    assert not any(line.strip().startswith(f"argv[{len(ARGV)}]") for line in lines)


def test_long_values_are_never_cut() -> None:
    path = "/w/" + "d" * 4992 + "/tail"
    action = dict(rm_rf_view()["action"], target=path, argv=["rm", path], paths=[path])
    text = render_request(rm_rf_view(action=action), HASH)
    assert len(path) == 5000
    assert text.count(path) >= 3              # target, command line, argv[1]
    assert "..." not in text and "\u2026" not in text


def test_clean_view_has_no_note_and_defer_names_keys() -> None:
    action = {"type": "net.connect", "target": "api.example.com:443", "syscall": "connect",
              "pid": 7, "tid": 8, "program": None, "paths": [],
              "destination": {"address": "2001:db8::1", "port": 443, "protocol": "tcp",
                              "names": ["api.example.com"]}}
    view = rm_rf_view(kind="defer", action=action, waiting_for=["ticket", "approver"],
                      intent=None, freeze=False, history=[], data_classes=[])
    text = render_request(view, HASH)
    assert "note:" not in text
    assert "DEFER: waiting for context: ticket, approver" in text.splitlines()[0]
    assert "[2001:db8::1]:443/tcp (resolved from api.example.com)" in text
    assert "program     (unknown)" in text
    assert "intent (the agent's claim, not verified): (none declared)" in text
    assert "frozen" not in text


def test_summary_lines() -> None:
    step_up = {"request": "r-3f9a2c81d0", "session": "s", "kind": "step_up",
               "type": "file.delete", "target": "/home/u/\x1b[8mx", "rule": "rm-recursive",
               "requested_at": "2025-03-01T10:15:02.118020Z",
               "expires_at": "2025-03-01T10:20:02.118020Z"}
    assert render_summary(step_up) == \
        r"r-3f9a2c81d0 STEP_UP file.delete /home/u/\x1b[8mx [rm-recursive] expires 10:20:02"
    defer = dict(step_up, kind="defer", waiting_for=["ticket"], target=TARGET)
    assert render_summary(defer) == (r"r-3f9a2c81d0 DEFER file.delete /home/u/proj-\xff\xfe "
                                     r"[rm-recursive] waiting for ticket expires 10:20:02")


@pytest.mark.parametrize("bad", [None, {}, {"action": "not a dict", "history": "x"}])
def test_malformed_views_still_render(bad) -> None:
    text = render_request(bad, HASH)
    assert text.splitlines()[-1] == f"action hash: {HASH}"
