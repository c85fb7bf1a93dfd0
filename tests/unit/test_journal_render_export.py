"""`journal show`, `tail` and `export` on journal files written by hand from the README's
receipts v1 spec: what a reviewer sees must be what happened, escaped, never obeyed."""
from __future__ import annotations

import base64
import calendar
import hashlib
import io
import json
import threading
import time
from datetime import datetime, timezone

import orjson
import pytest

from aarm_sandbox.cli import journal_show
from aarm_sandbox.cli.journal_show import export, show_to, tail_to
from aarm_sandbox.journal.render import escape, ts_to_ms, ts_to_ns
from conftest import wait_for

SESSION = "s-0001"
ESC_TARGET = "/ws/\x1b[31mred\x1b[0m"
BIDI_TARGET = "/ws/invoice\u202efdp.exe"
NEWLINE_TARGET = "/ws/a\nb\tc"
RAW_BYTES = b"/ws/bad-\xff\xfe-name"
MARKUP_TARGET = "/ws/[bold]not markup[/bold]"


def b64(raw: bytes) -> dict:
    return {"b64": base64.b64encode(raw).decode()}


def ts(second: int, micro: int = 0) -> str:
    return f"2026-11-26T13:05:{second:02d}.{micro:06d}Z"


class JournalBuilder:
    """Chained records as the README specifies them (seq, ts, session_id, prev_hash, hash)."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.seq = 0
        self.prev = hashlib.sha256(b"aarm-sandbox/journal/v1\0" + SESSION.encode()).hexdigest()

    def chained(self, type_: str, **fields) -> dict:
        self.seq += 1
        rec = {"v": 1, "type": type_, "seq": self.seq, "ts": fields.pop("ts", ts(self.seq)),
               "session_id": SESSION, "prev_hash": self.prev, **fields}
        rec["hash"] = hashlib.sha256(orjson.dumps(rec, option=orjson.OPT_SORT_KEYS)).hexdigest()
        self.prev = rec["hash"]
        self.lines.append(orjson.dumps(rec, option=orjson.OPT_SORT_KEYS))
        return rec

    def start(self, observe: bool = False, command=None, intent="tidy the workspace") -> dict:
        return self.chained(
            "session.start", command=command or ["python", "agent.py", "--go"], intent=intent,
            workspace="/ws", tmpdir="/tmp/aarm-s", host="devbox", kernel="6.18.0", uid=1000,
            profile={"id": "default", "version": 1, "source": "builtin", "sha256": "ab" * 32},
            identity=IDENTITY, isolation={"namespaces": ["user", "mount"], "backend": "seccomp"},
            key={"id": "ed25519:0011223344556677", "public": "AAAA"},
            checkpoint={"every": 1000, "ms": 1000}, observe=observe)

    def receipt(self, action_type: str, target, result: str = "allow", *, would=None,
                executed=None, ret=0, errno=None, notif=None, rule="default", reason="ok",
                pid=42, exe="/usr/bin/tool", **action_extra) -> dict:
        notif = notif if notif is not None else 1000 + self.seq
        decision = {"result": result, "rule": rule, "reason": reason,
                    "policy": {"id": "default", "version": 1, "sha256": "ab" * 32}}
        if would is not None:
            decision["would"] = would
        executed = (result == "allow") if executed is None else executed
        outcome = {"executed": executed, "return": ret}
        if errno:
            outcome["errno"] = errno
        action = {"type": action_type, "target": target, "syscall": "unlinkat", "pid": pid,
                  "tid": pid, "exe": exe, "notif": notif, **action_extra}
        return self.chained("receipt", receipt_id=f"{SESSION}:{self.seq + 1}", identity=IDENTITY,
                            context_hash="cd" * 32, action=action, decision=decision,
                            outcome=outcome)

    def intent(self, notif: int, action: str, target: bytes, tid: int = 42) -> None:
        self.lines.append(orjson.dumps({"type": "intent", "session_id": SESSION, "notif": notif,
                                        "action": action, "syscall": "unlinkat", "tid": tid,
                                        "target": b64(target)}, option=orjson.OPT_SORT_KEYS))

    def end(self, exit_status: int = 0) -> dict:
        return self.chained("session.end", exit_status=exit_status,
                            actions={"file.delete": 2}, decisions={"allow": 3, "deny": 2},
                            data_classes=[], intents=2, from_seq=1, to_seq=self.seq,
                            key_id="ed25519:0011223344556677", sig="c2ln")

    def raw(self, data: bytes) -> None:
        self.lines.append(data)

    def write(self, path, torn_tail: bytes = b"") -> str:
        path.write_bytes(b"".join(line + b"\n" for line in self.lines) + torn_tail)
        return str(path)


IDENTITY = {"user": "alice", "agent": "agent-7", "service": None, "uid": 1000, "session": SESSION,
            "scope": "profile:default@/ws"}


def full_journal(tmp_path, *, sealed: bool = True, torn_tail: bytes = b"") -> str:
    """Every record kind, with hostile targets."""
    j = JournalBuilder()
    j.start()
    j.intent(5001, "file.delete", b"/ws/old.txt")
    j.receipt("file.delete", "/ws/old.txt", notif=5001)
    j.receipt("file.write", ESC_TARGET, "deny", rule="no-escapes", reason="denied \x1b]0;pwned\x07")
    j.receipt("file.write", BIDI_TARGET, "step_up", rule="git-hooks", reason="held for approval")
    j.receipt("file.rename", NEWLINE_TARGET, "defer", destination="/ws/dst\u200bzw")
    j.receipt("file.create", b64(RAW_BYTES), "allow")
    j.receipt("process.exec", "/usr/bin/rm", "allow", argv=["rm", "-rf", "my file", "\u2028x"],
              exe="/usr/bin/bash")
    j.receipt("net.connect", "10.0.0.5:443", "deny", rule="no-net", reason="no egress")
    j.receipt("file.write", MARKUP_TARGET, "allow")
    j.chained("error", syscall="openat", tid=43, errno="EPERM", reason="supervisor error (denied)")
    j.chained("enforcement", tid=44, reason="exec loaded a different file; process killed")
    j.chained("checkpoint", from_seq=1, to_seq=j.seq,
              key_id="ed25519:0011223344556677", sig="c2ln")
    j.intent(5002, "file.delete", b"/ws/lost-\xff.txt", tid=45)
    if sealed:
        j.end(exit_status=137)
    return j.write(tmp_path / "s.jsonl", torn_tail)


def observe_journal(tmp_path) -> str:
    j = JournalBuilder()
    j.start(observe=True)
    j.receipt("file.delete", "/etc/hostname", "allow", would="deny", rule="outside",
              reason="outside the workspace")
    j.receipt("file.write", "/ws/ok", "allow")
    j.end()
    return j.write(tmp_path / "observe.jsonl")


def run_show(path: str, tty: bool = False, **kw) -> str:
    out = io.StringIO()
    assert show_to(path, out, tty, width=kw.pop("width", 160), **kw) == 0
    return out.getvalue()


# --------------------------------------------------------------------------------------
# escaping

@pytest.mark.parametrize("value,shown", [
    ("\x1b[31mred", "\\x1b[31mred"),
    ("a\nb\tc\rd", "a\\nb\\tc\\x0dd"),
    ("del\x7f c1\x9b", "del\\x7f c1\\x9b"),
    ("abc\u202edef", "abc\\u{202E}def"),
    ("\u2066\u2067\u2068\u2069\u202a\u200e\u200f\u061c", "\\u{2066}\\u{2067}\\u{2068}\\u{2069}"
                                                         "\\u{202A}\\u{200E}\\u{200F}\\u{061C}"),
    ("zero\u200bwidth\u200c\u200d\ufeff", "zero\\u{200B}width\\u{200C}\\u{200D}\\u{FEFF}"),
    ("line\u2028para\u2029", "line\\u{2028}para\\u{2029}"),
    ("nb\u00a0sp", "nb\\u{00A0}sp"),
    ("tag\U000e0041", "tag\\u{E0041}"),
    ("back\\slash", "back\\\\slash"),
    ("caf\u00e9 \u65e5\u672c", "caf\u00e9 \u65e5\u672c"),
    ("/plain/path.txt", "/plain/path.txt"),
])
def test_escape_shows_every_control_bidi_and_invisible_character(value, shown):
    assert escape(value) == shown


def test_escape_shows_undecodable_bytes_as_hex_from_b64_and_surrogates():
    assert escape(b64(RAW_BYTES)) == "/ws/bad-\\xff\\xfe-name"
    assert escape("x\udcff") == "x\\xff"
    assert escape(b64(b"ok \xc3\xa9")) == "ok \u00e9"


def test_escape_never_raises_on_tampered_values():
    assert escape({"b64": "!!not base64"}).startswith("<invalid b64")
    assert escape(None) == ""
    assert escape(12) == "12"
    assert escape(["a", {"k": "\x1b"}]) == '["a",{"k":"\\\\u001b"}]'


def test_escaped_text_never_contains_a_character_a_terminal_would_interpret():
    every_char = "".join(chr(c) for c in range(0, 0x3000)) + "\u202e\u2066\ufeff\U000e0001"
    shown = escape(every_char)
    assert not any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f for c in shown)
    assert not set(shown) & set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
                                "\u200b\u200c\u200d\u200e\u200f\u061c\ufeff\u2028\u2029")


# --------------------------------------------------------------------------------------
# timestamps

def test_ts_converts_exactly_to_ns_and_ms():
    whole = calendar.timegm(datetime(2026, 11, 26, 13, 5, 41, tzinfo=timezone.utc).timetuple())
    assert ts_to_ns("2026-11-26T13:05:41.123456Z") == whole * 10**9 + 123_456_000
    assert ts_to_ms("2026-11-26T13:05:41.999999Z") == whole * 1000 + 999
    assert ts_to_ns("2026-11-26T14:05:41.000001+01:00") == whole * 10**9 + 1000


@pytest.mark.parametrize("bad", ["", "yesterday", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z",
                                 "2026-11-26 13:05:41Z", 1700000000, None])
def test_ts_that_is_not_rfc3339_gives_none(bad):
    assert ts_to_ns(bad) is None


# --------------------------------------------------------------------------------------
# show, plain text

def test_show_plain_has_no_escape_codes_and_shows_hostile_targets_escaped(tmp_path):
    out = run_show(full_journal(tmp_path))
    assert "\x1b" not in out and "\u202e" not in out and "\u2028" not in out
    assert "\\x1b[31mred\\x1b[0m" in out
    assert "invoice\\u{202E}fdp.exe" in out
    assert "/ws/a\\nb\\tc" in out and "-> /ws/dst\\u{200B}zw" in out
    assert "/ws/bad-\\xff\\xfe-name" in out
    assert "denied \\x1b]0;pwned\\x07" in out
    assert "argv: rm -rf 'my file' '\\u{2028}x'" in out


def test_show_plain_is_one_line_per_record(tmp_path):
    out = run_show(full_journal(tmp_path))
    body = [line for line in out.splitlines() if not line.startswith("-- ")]
    # 13 chained records + 1 intent without receipt (the one with a receipt is not shown)
    assert len(body) == 14
    assert [line.split()[0] for line in body[:3]] == ["1", "2", "3"]


def test_show_labels_each_decision_kind(tmp_path):
    out = run_show(full_journal(tmp_path))
    rows = {line.split()[0]: line for line in out.splitlines() if not line.startswith("-- ")}
    assert " allow " in rows["2"]
    assert " DENY " in rows["3"] and "[no-escapes]" in rows["3"]
    assert "STEP_UP (held)" in rows["4"]
    assert "DEFER (held)" in rows["5"]
    assert "ERROR" in rows["10"] and "EPERM" in rows["10"]
    assert "ENFORCED" in rows["11"] and "process killed" in rows["11"]
    assert "checkpoint" in rows["12"] and "records 1-11" in rows["12"]


def test_show_session_rows_summarise_command_profile_exit_and_counts(tmp_path):
    out = run_show(full_journal(tmp_path))
    assert "session start" in out and "command: python agent.py --go" in out
    assert "profile default@1" in out and "intent: tidy the workspace" in out
    assert "session end (seal)" in out and "exit 137 (signal 9)" in out
    assert "decisions: allow 3, deny 2" in out


def test_show_observe_mode_makes_would_deny_visible(tmp_path):
    out = run_show(observe_journal(tmp_path))
    assert "allow (would DENY)" in out and "/etc/hostname" in out
    assert "observe mode" in out


def test_show_flags_intent_without_receipt_and_not_one_with_a_receipt(tmp_path):
    out = run_show(full_journal(tmp_path))
    flagged = [line for line in out.splitlines() if "intent without receipt" in line
               and not line.startswith("-- ")]
    assert len(flagged) == 1
    assert "/ws/lost-\\xff.txt" in flagged[0]
    assert "may have happened unrecorded" in flagged[0]
    assert "old.txt" not in flagged[0]


def test_show_says_sealed_and_not_verified(tmp_path):
    out = run_show(full_journal(tmp_path))
    assert "-- sealed" in out
    assert "not verified; run: aarm-sandbox journal verify" in out


def test_show_says_not_sealed_when_the_seal_is_missing(tmp_path):
    out = run_show(full_journal(tmp_path, sealed=False))
    assert "NOT sealed (truncated or crashed)" in out and "-- sealed" not in out


def test_show_reports_torn_last_line_and_unreadable_lines_without_crashing(tmp_path):
    j = JournalBuilder()
    j.start()
    j.raw(b"this is not json \x1b[2J")
    j.raw(b"[1, 2, 3]")
    j.chained("receipt", action="not an object", decision=["nope"], outcome=None)
    j.chained("mystery.type")
    j.receipt("file.write", "/ws/after", "deny")
    path = j.write(tmp_path / "bad.jsonl", torn_tail=b'{"v":1,"type":"rece')
    out = run_show(path)
    assert "unreadable line 2" in out and "\\x1b[2J" in out and "\x1b" not in out
    assert "unreadable line 3" in out
    assert "line 4: malformed receipt record" in out
    assert "unknown record type mystery.type" in out
    assert "/ws/after" in out
    assert "torn last line (write interrupted)" in out
    assert "NOT sealed" in out


def test_show_survives_wrong_types_in_every_field(tmp_path):
    j = JournalBuilder()
    j.chained("session.start", command="not a list", profile=7, intent={"x": 1})
    j.chained("receipt", action={"type": 5, "target": {"b64": 3}, "argv": "x"},
              decision={"result": {"a": 1}, "would": 3}, outcome={"executed": "yes"})
    j.chained("session.end", decisions=[1], exit_status="x", actions=None)
    out = run_show(j.write(tmp_path / "types.jsonl"))
    assert "command: not\\ a\\ list" not in out and "command: not a list" in out
    assert "exit x" in out and "-- sealed" in out
    out_tty = run_show(str(tmp_path / "types.jsonl"), tty=True)
    assert "session end (seal)" in out_tty


def test_show_only_denied_keeps_non_allow_errors_enforcement_and_orphans(tmp_path):
    out = run_show(full_journal(tmp_path), only_denied=True)
    body = [line for line in out.splitlines() if not line.startswith("-- ")]
    seqs = [line.split()[0] for line in body]
    assert seqs == ["3", "4", "5", "8", "10", "11", "-"]
    assert "intent without receipt" in body[-1]


def test_show_only_denied_keeps_observe_would_deny(tmp_path):
    out = run_show(observe_journal(tmp_path), only_denied=True)
    body = [line for line in out.splitlines() if not line.startswith("-- ")]
    assert len(body) == 1 and "would DENY" in body[0]


def test_show_missing_file_fails_with_message(tmp_path, capsys):
    assert show_to(str(tmp_path / "nope.jsonl"), io.StringIO(), False) == 1
    assert capsys.readouterr().err.startswith("aarm-sandbox: cannot read journal")


# --------------------------------------------------------------------------------------
# show on a terminal

@pytest.mark.parametrize("text,width", [
    ("/ws/" + "a" * 95, 10), ("word " * 30, 12), ("\u65e5\u672c" * 20, 7), ("short", 40),
    ("a b", 1),
])
def test_fold_keeps_every_character_within_the_width(text, width):
    from rich.cells import cell_len
    lines = journal_show.fold(text, width)
    assert "".join(lines) == text
    assert all(cell_len(line) <= max(width, 2) for line in lines)


def test_show_tty_table_styles_decisions_but_never_passes_agent_escapes(tmp_path):
    out = run_show(full_journal(tmp_path), tty=True, width=200)
    assert "\x1b[1;31m" in out          # denied rows: bold red (rich's own codes)
    assert "\x1b[33m" in out            # held rows: yellow
    assert "\x1b[32m" in out            # allowed: green
    assert "\\x1b[31mred" in out        # the agent's escape, shown as text
    assert "\x1b]0;pwned" not in out and "\u202e" not in out and "\x07" not in out
    assert "[bold]not markup[/bold]" in out


def test_show_tty_folds_long_values_instead_of_cutting_them(tmp_path):
    j = JournalBuilder()
    j.start()
    long_target = "/ws/" + "\u03a9" * 600
    j.receipt("file.write", long_target, "deny", reason="R" + "\u03a8" * 300)
    j.end()
    out = run_show(j.write(tmp_path / "long.jsonl"), tty=True, width=80)
    assert out.count("\u03a9") == 600 and out.count("\u03a8") == 300
    assert "\u2026" not in out


def test_show_tty_states_seal_and_verification(tmp_path):
    out = run_show(full_journal(tmp_path, sealed=False), tty=True)
    assert "NOT sealed (truncated or crashed)" in out
    assert "not verified; run: aarm-sandbox journal verify" in out


# --------------------------------------------------------------------------------------
# show --json

def test_show_json_prints_records_as_stored_with_sorted_keys(tmp_path):
    path = full_journal(tmp_path)
    out = run_show(path, as_json=True)
    stored = [line for line in open(path, "rb").read().split(b"\n") if line]
    assert out.encode().split(b"\n")[:-1] == stored
    for line in out.split("\n")[:-1]:
        rec = json.loads(line)
        assert list(rec) == sorted(rec)


def test_show_json_reports_damaged_lines_on_stderr_only(tmp_path, capsys):
    j = JournalBuilder()
    j.start()
    j.raw(b"garbage")
    path = j.write(tmp_path / "j.jsonl", torn_tail=b'{"type":')
    out = run_show(path, as_json=True)
    assert len(out.splitlines()) == 1
    err = capsys.readouterr().err
    assert ":2: unreadable line" in err and ":3: torn last line" in err


def test_show_json_only_denied_prints_notable_records(tmp_path):
    out = run_show(full_journal(tmp_path), as_json=True, only_denied=True)
    recs = [json.loads(line) for line in out.splitlines()]
    assert [r.get("seq") for r in recs] == [3, 4, 5, 8, 10, 11, None]
    assert recs[-1]["type"] == "intent" and recs[-1]["notif"] == 5002


# --------------------------------------------------------------------------------------
# tail



def test_tail_follows_appends_and_waits_for_a_torn_line_to_complete(tmp_path):
    j = JournalBuilder()
    j.start()
    path = j.write(tmp_path / "live.jsonl")
    out, stop = io.StringIO(), threading.Event()
    result: list[int] = []
    follower = threading.Thread(target=lambda: result.append(
        tail_to(path, out, False, poll=0.01, stop=stop)))
    follower.start()
    assert wait_for(lambda: "session start" in out.getvalue())
    j.receipt("file.delete", "/ws/victim", "deny")
    line = j.lines[-1] + b"\n"
    with open(path, "ab") as f:
        f.write(line[:20])
        f.flush()
        time.sleep(0.1)                                  # ten polls with half a line
        assert "/ws/victim" not in out.getvalue() and "torn" not in out.getvalue()
        f.write(line[20:])
    assert wait_for(lambda: "/ws/victim" in out.getvalue())
    stop.set()
    follower.join(5)
    assert result == [0]
    assert out.getvalue().count("/ws/victim") == 1
    assert "NOT sealed" in out.getvalue()


def test_tail_prints_records_appended_just_before_stop(tmp_path):
    j = JournalBuilder()
    j.start()
    path = j.write(tmp_path / "live.jsonl")
    out, stop = io.StringIO(), threading.Event()
    follower = threading.Thread(target=tail_to, args=(path, out, False),
                                kwargs={"poll": 0.5, "stop": stop})
    follower.start()
    assert wait_for(lambda: "session start" in out.getvalue())
    j.end()
    j.write(tmp_path / "live.jsonl")
    stop.set()
    follower.join(5)
    assert "session end" in out.getvalue() and "-- sealed" in out.getvalue()


def test_tail_stops_with_status_1_when_the_file_shrinks(tmp_path, capsys):
    j = JournalBuilder()
    j.start()
    j.receipt("file.write", "/ws/f")
    path = j.write(tmp_path / "live.jsonl")
    out, stop, result = io.StringIO(), threading.Event(), []
    follower = threading.Thread(target=lambda: result.append(
        tail_to(path, out, False, poll=0.01, stop=stop)))
    follower.start()
    assert wait_for(lambda: "/ws/f" in out.getvalue())
    with open(path, "r+b") as f:
        f.truncate(10)
    follower.join(5)
    stop.set()
    assert result == [1]
    assert "shrank while being followed" in capsys.readouterr().err


def test_tail_without_follow_reports_a_torn_last_line(tmp_path):
    j = JournalBuilder()
    j.start()
    path = j.write(tmp_path / "t.jsonl", torn_tail=b'{"v":1,"type":"receipt"')
    out = io.StringIO()
    assert tail_to(path, out, False, follow=False) == 0
    assert "torn last line (write interrupted)" in out.getvalue()


def test_tail_json_prints_each_record_as_stored(tmp_path):
    path = full_journal(tmp_path)
    out = io.StringIO()
    assert tail_to(path, out, False, follow=False, as_json=True) == 0
    assert out.getvalue().count("\n") == len([l for l in open(path, "rb") if l.strip()])


def test_tail_tty_lines_are_styled_and_escaped(tmp_path):
    out = io.StringIO()
    assert tail_to(full_journal(tmp_path), out, True, follow=False, width=100) == 0
    text = out.getvalue()
    assert "\x1b[1;31m" in text and "\\x1b[31mred" in text and "\u202e" not in text


def test_tail_ctrl_c_ends_with_status_zero(tmp_path, monkeypatch):
    j = JournalBuilder()
    j.start()
    path = j.write(tmp_path / "t.jsonl")

    def interrupted(_seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(journal_show.time, "sleep", interrupted)
    out = io.StringIO()
    assert tail_to(path, out, False) == 0
    assert "session start" in out.getvalue() and "NOT sealed" in out.getvalue()


def test_tail_missing_file_fails_with_message(tmp_path, capsys):
    assert tail_to(str(tmp_path / "none"), io.StringIO(), False, follow=False) == 1
    assert "aarm-sandbox: cannot read journal" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# export: OCSF

def ocsf(path: str) -> list[dict]:
    out = io.StringIO()
    assert export(path, "ocsf", out) == 0
    text = out.getvalue()
    assert "\u2028" not in text                        # escaped: safe for line readers
    return [json.loads(line) for line in text.split("\n")[:-1]]


def by_seq(events: list[dict]) -> dict:
    return {e["metadata"].get("sequence"): e for e in events}


def test_ocsf_deny_of_a_file_is_a_blocked_file_system_activity(tmp_path):
    events = by_seq(ocsf(full_journal(tmp_path)))
    deny = events[3]
    assert (deny["class_uid"], deny["category_uid"], deny["activity_id"], deny["type_uid"]) == \
        (1001, 1, 3, 100103)
    assert deny["disposition_id"] == 2 and deny["action_id"] == 2
    assert deny["status_id"] == 2 and deny["status"] == "Failure"
    assert deny["severity_id"] == 3
    assert deny["file"]["path"] == ESC_TARGET
    assert deny["time"] == ts_to_ms(ts(3))
    assert deny["metadata"]["uid"] == f"{SESSION}:3"
    assert deny["metadata"]["version"] == "1.1.0"
    assert deny["metadata"]["product"]["name"] == "aarm-sandbox"
    assert deny["metadata"]["product"]["vendor_name"] == "aarm-sandbox"
    assert deny["metadata"]["log_name"] == "s.jsonl"
    assert "\x1b" not in deny["message"] and "\\x1b[31m" in deny["message"]


def test_ocsf_executed_allow_is_success_with_actor_and_time(tmp_path):
    delete = by_seq(ocsf(full_journal(tmp_path)))[2]
    assert (delete["class_uid"], delete["activity_id"], delete["type_uid"]) == (1001, 4, 100104)
    assert delete["status_id"] == 1 and delete["disposition_id"] == 1 and delete["action_id"] == 1
    assert delete["actor"]["process"] == {"pid": 42, "tid": 42, "file": {
        "path": "/usr/bin/tool", "name": "tool", "type_id": 1}}
    assert delete["actor"]["user"] == {"name": "alice", "uid": "1000"}
    assert delete["actor"]["session"] == {"uid": SESSION}
    assert delete["time"] == calendar.timegm((2026, 11, 26, 13, 5, 2, 0, 0, 0)) * 1000


def test_ocsf_held_decisions_rename_exec_and_network_map_to_their_classes(tmp_path):
    events = by_seq(ocsf(full_journal(tmp_path)))
    assert events[4]["disposition_id"] == 2 and "held" in events[4]["disposition"]
    rename = events[5]
    assert rename["activity_id"] == 5 and rename["file_result"]["path"] == "/ws/dst\u200bzw"
    execd = events[7]
    assert (execd["class_uid"], execd["activity_id"], execd["type_uid"]) == (1007, 1, 100701)
    assert execd["process"]["file"]["path"] == "/usr/bin/rm"
    assert execd["process"]["cmd_line"].startswith("rm -rf 'my file'")
    net = events[8]
    assert (net["class_uid"], net["category_uid"], net["type_uid"]) == (4001, 4, 400101)
    assert net["dst_endpoint"] == {"ip": "10.0.0.5", "port": 443}
    assert net["disposition_id"] == 2


def test_ocsf_undecodable_path_is_escaped_text_with_b64_kept_unmapped(tmp_path):
    create = by_seq(ocsf(full_journal(tmp_path)))[6]
    assert create["file"]["path"] == "/ws/bad-\\xff\\xfe-name"
    assert base64.b64decode(create["unmapped"]["action"]["target"]["b64"]) == RAW_BYTES


def test_ocsf_keeps_the_whole_original_record_unmapped(tmp_path):
    path = full_journal(tmp_path)
    stored = {r["seq"]: r for r in map(json.loads, open(path)) if "seq" in r}
    for event in ocsf(path):
        seq = event["metadata"].get("sequence")
        if seq is not None:
            assert event["unmapped"] == stored[seq]


def test_ocsf_session_boundaries_errors_enforcement_and_orphan_intents(tmp_path):
    events = ocsf(full_journal(tmp_path))
    seqs = by_seq(events)
    assert (seqs[1]["class_uid"], seqs[1]["type_uid"]) == (6002, 600203)
    assert (seqs[13]["class_uid"], seqs[13]["type_uid"]) == (6002, 600204)
    assert seqs[10]["status_id"] == 2 and seqs[10]["status_code"] == "EPERM"
    assert (seqs[11]["class_uid"], seqs[11]["activity_id"], seqs[11]["severity_id"]) == (1007, 2, 4)
    assert 12 not in seqs                                # checkpoints are not events
    orphan = events[-1]
    assert orphan["unmapped"]["type"] == "intent" and orphan["unmapped"]["notif"] == 5002
    assert orphan["type_uid"] == 100104 and orphan["file"]["path"] == "/ws/lost-\\xff.txt"
    assert "unrecorded" in orphan["message"]
    assert len([e for e in events if e["unmapped"].get("type") == "intent"]) == 1


def test_ocsf_observe_would_deny_is_detected_not_allowed(tmp_path):
    event = by_seq(ocsf(observe_journal(tmp_path)))[2]
    assert event["disposition_id"] == 15 and event["action_id"] == 1 and event["severity_id"] == 2


def test_ocsf_export_skips_damaged_lines_with_warnings(tmp_path, capsys):
    j = JournalBuilder()
    j.start()
    j.raw(b"{broken")
    j.chained("receipt", action="x", decision=1, outcome=[])
    j.receipt("file.write", "/ws/f", "deny")
    events = ocsf(j.write(tmp_path / "d.jsonl", torn_tail=b"{"))
    assert [e["metadata"]["sequence"] for e in events] == [1, 2, 3]
    err = capsys.readouterr().err
    assert "line 2: not a journal record" in err and "torn last line" in err


# --------------------------------------------------------------------------------------
# export: OTLP/JSON

def otlp(path: str) -> dict:
    out = io.StringIO()
    assert export(path, "otlp-json", out) == 0
    text = out.getvalue()
    assert text.count("\n") == 1                        # one document
    return json.loads(text)


def attributes(record: dict) -> dict:
    return {a["key"]: next(iter(a["value"].values())) for a in record["attributes"]}


def test_otlp_is_one_export_logs_request_with_resource_and_scope(tmp_path):
    doc = otlp(full_journal(tmp_path))
    (resource_logs,) = doc["resourceLogs"]
    resource = attributes(resource_logs["resource"])
    assert resource["service.name"] == "aarm-sandbox"
    assert resource["aarm.session.id"] == SESSION and resource["host.name"] == "devbox"
    (scope_logs,) = resource_logs["scopeLogs"]
    assert scope_logs["scope"] == {"name": "aarm-sandbox.journal", "version": "1"}
    assert len(scope_logs["logRecords"]) == 13          # 13 chained - 1 checkpoint + 1 orphan


def test_otlp_records_carry_exact_times_severity_and_attributes(tmp_path):
    records = otlp(full_journal(tmp_path))["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
    by = {attributes(r).get("aarm.seq"): r for r in records}
    allow, deny, err = by["2"], by["3"], by["10"]
    assert allow["timeUnixNano"] == str(ts_to_ns(ts(2))) == allow["observedTimeUnixNano"]
    assert (allow["severityNumber"], allow["severityText"]) == (9, "INFO")
    assert (deny["severityNumber"], deny["severityText"]) == (13, "WARN")
    assert by["4"]["severityNumber"] == 13
    assert (err["severityNumber"], err["severityText"]) == (17, "ERROR")
    a = attributes(deny)
    assert a["aarm.action.type"] == "file.write" and a["aarm.action.target"] == ESC_TARGET
    assert a["aarm.decision.result"] == "deny" and a["aarm.decision.rule"] == "no-escapes"
    assert a["aarm.receipt_id"] == f"{SESSION}:3" and a["process.pid"] == "42"
    assert a["process.executable.path"] == "/usr/bin/tool"
    assert "\x1b" not in deny["body"]["stringValue"]
    assert "\\x1b[31m" in deny["body"]["stringValue"]


def test_otlp_int_values_are_strings_and_bytes_keep_b64(tmp_path):
    records = otlp(full_journal(tmp_path))["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
    for record in records:
        for attr in record["attributes"]:
            if "intValue" in attr["value"]:
                assert isinstance(attr["value"]["intValue"], str)
    create = next(r for r in records if attributes(r).get("aarm.seq") == "6")
    a = attributes(create)
    assert a["aarm.action.target"] == "/ws/bad-\\xff\\xfe-name"
    assert base64.b64decode(a["aarm.action.target.b64"]) == RAW_BYTES


def test_otlp_flags_orphan_intent_and_skips_checkpoints(tmp_path):
    records = otlp(full_journal(tmp_path))["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
    kinds = [attributes(r)["aarm.record.type"] for r in records]
    assert "checkpoint" not in kinds and kinds.count("intent") == 1
    orphan = records[-1]
    assert orphan["severityNumber"] == 13 and "unrecorded" in orphan["body"]["stringValue"]


def test_otlp_survives_an_empty_or_garbage_file(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "junk.jsonl").write_bytes(b"\x00\x01junk\n[]\n")
    for name in ("empty.jsonl", "junk.jsonl"):
        doc = otlp(str(tmp_path / name))
        assert doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"] == []


# --------------------------------------------------------------------------------------
# export: errors

def test_export_unknown_format_returns_2(tmp_path, capsys):
    assert export(full_journal(tmp_path), "csv", io.StringIO()) == 2
    assert "aarm-sandbox: unknown export format" in capsys.readouterr().err


def test_export_unreadable_file_returns_1(tmp_path, capsys):
    assert export(str(tmp_path / "missing.jsonl"), "ocsf", io.StringIO()) == 1
    assert capsys.readouterr().err.startswith("aarm-sandbox: cannot read journal")


def test_only_an_error_record_that_performed_nothing_settles_an_intent():
    """An error record answering a notification the fast path wrote an intent for settles
    it when it says nothing was performed; one that does not say so (an internal error
    after the action may have happened) leaves the intent listed."""
    from aarm_sandbox.journal.render import PendingIntents
    from aarm_sandbox.journal.reader import Line
    for record, settles in (({"type": "error", "notif": "7", "performed": False}, True),
                            ({"type": "error", "notif": "7"}, False),
                            ({"type": "error", "notif": "7", "performed": True}, False),
                            ({"type": "receipt", "action": {"notif": "7"}}, True)):
        pending = PendingIntents()
        pending.add(Line(1, b"{}", {"type": "intent", "notif": 7}))
        pending.settle(record)
        assert (pending.drain() == []) is settles, record
