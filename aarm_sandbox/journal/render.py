"""Safe display of journal values, and the one row model every reader shares.

Everything in a receipt that the agent chose (paths, argv, executable names, the intent it
claimed, even reasons that quote an exception) can carry terminal escapes, bidi overrides,
zero-width characters or bytes that are not text. A reviewer reading the journal must see
those characters, not have their terminal obey them, so every value goes through `escape`
before it is shown, and `show`, `tail` and `export` describe records through the same
`Row` so they never disagree about what a record means.
"""
from __future__ import annotations

import calendar
import re
import shlex
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from aarm_sandbox.journal.reader import Line, as_text

# --------------------------------------------------------------------------------------
# escaping

_PLAIN_ASCII = re.compile(r"[\x20-\x5b\x5d-\x7e]*")     # printable ASCII except backslash
_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\t": "\\t"}
# Categories that are invisible or reorder/hide text: format (bidi, zero-width, tags),
# surrogates, line/paragraph separators, private use and unassigned code points.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp", "Co", "Cn"})
# Letters and symbols that render as blank space (used to hide text in plain sight).
_BLANK_LOOKALIKES = frozenset({0x115F, 0x1160, 0x3164, 0xFFA0, 0x2800})
_escaped_chars: dict[str, str] = {}


def _escape_char(char: str) -> str:
    code = ord(char)
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    if 0xDC80 <= code <= 0xDCFF:               # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x20 or 0x7F <= code <= 0x9F:    # C0, DEL, C1 (ESC starts ANSI sequences)
        return f"\\x{code:02x}"
    category = unicodedata.category(char)
    if (category in _HIDDEN_CATEGORIES or code in _BLANK_LOOKALIKES
            or (category == "Zs" and char != " ")):
        return f"\\u{{{code:04X}}}"
    return char


def escape_text(text: str) -> str:
    """`text` with every character that could be interpreted, hidden or confused shown as
    an escape; a backslash is doubled so an escape in the output is never ambiguous."""
    if _PLAIN_ASCII.fullmatch(text):
        return text
    out = []
    for char in text:
        shown = _escaped_chars.get(char)
        if shown is None:
            shown = _escaped_chars[char] = _escape_char(char)
        out.append(shown)
    return "".join(out)


def escape(value) -> str:
    """Any journal value as safe display text: a string, raw bytes carried as
    {"b64": ...} (undecodable bytes shown as \\xNN), or anything a tampered file put there."""
    if value is None:
        return ""
    if isinstance(value, str):
        return escape_text(value)
    if isinstance(value, dict) and set(value) == {"b64"}:
        try:
            return escape_text(as_text(value))
        except (ValueError, TypeError):
            return "<invalid b64: " + escape_text(str(value["b64"])) + ">"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return escape_text(_compact_json(value))


def escape_argv(argv) -> str:
    """A command line shown so that argument boundaries survive (shell quoting)."""
    if not isinstance(argv, list):
        return escape(argv)
    return " ".join(shlex.quote(escape(arg)) for arg in argv)


def _compact_json(value) -> str:
    import orjson
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        return repr(value)


def is_bytes_value(value) -> bool:
    """True for a kernel string that was not UTF-8 and travels as {"b64": ...}."""
    return isinstance(value, dict) and set(value) == {"b64"}


# --------------------------------------------------------------------------------------
# timestamps

_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
                      r"(?:([Zz])|([+-])(\d{2}):(\d{2}))")


def ts_to_ns(ts) -> int | None:
    """An RFC 3339 `ts` as integer nanoseconds since the epoch (no float anywhere, so the
    microseconds survive exactly); None when it is not a valid timestamp."""
    if not isinstance(ts, str):
        return None
    m = _RFC3339.fullmatch(ts)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    try:
        datetime(year, month, day, hour, minute, second)   # rejects month 13, Feb 30, ...
    except ValueError:
        return None
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if m.group(9):
        offset = int(m.group(10)) * 3600 + int(m.group(11)) * 60
        seconds -= offset if m.group(9) == "+" else -offset
    fraction = int((m.group(7) or "").ljust(9, "0"))
    return seconds * 1_000_000_000 + fraction


def ts_to_ms(ts) -> int | None:
    ns = ts_to_ns(ts)
    return None if ns is None else ns // 1_000_000


# --------------------------------------------------------------------------------------
# the row model

# Tones: what a reader must notice, independent of how a terminal colours it.
ALLOWED, DENIED, HELD, WOULD_DENY, WOULD_HOLD = "allowed", "denied", "held", "would-deny", "would-hold"
ERROR, WARNING, SESSION, QUIET = "error", "warning", "session", "quiet"

HELD_RESULTS = frozenset({"step_up", "defer", "modify"})
CHAINED_TYPES = frozenset({"session.start", "receipt", "error", "enforcement", "checkpoint",
                           "session.error", "session.end", "net.close", "approval.request",
                           "context.add"})
UNRECORDED = "intent without receipt (may have happened unrecorded)"
TORN = "torn last line (write interrupted)"
UNREADABLE_SHOWN_BYTES = 200      # of a line that is not a record (said so when cut)


@dataclass(slots=True)
class Row:
    """One line of the timeline, every text field already escaped."""
    lineno: int
    kind: str            # record type, "intent", "unreadable"
    seq: str
    ts: str
    decision: str        # the label a reader scans for: "allow", "DENY", "allow (would deny)"
    tone: str
    action: str = ""
    target: str = ""
    detail: str = ""     # argv, rename destination, link source, intent, ...
    why: str = ""        # rule and reason, error text
    who: str = ""        # pid and executable
    notable: bool = False   # kept by --denied: not a plain allow
    record: dict | None = None

    @property
    def time_of_day(self) -> str:
        """The clock part of `ts` (the date is on the session.start row)."""
        return self.ts[11:-1] if len(self.ts) == 27 and self.ts.endswith("Z") else self.ts


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def decision_label(result, would) -> tuple[str, str]:
    """(label, tone) for a decision; observe mode's "would" is never hidden behind allow."""
    result_text = escape(result) if result is not None else "?"
    if would is not None and would != result:
        tone = WOULD_DENY if would == "deny" else WOULD_HOLD if would in HELD_RESULTS else ALLOWED
        return f"{result_text} (would {escape(would).upper()})", tone
    if result == "allow":
        return "allow", ALLOWED
    if result == "deny":
        return "DENY", DENIED
    if result in ("step_up", "defer"):
        return f"{result_text.upper()} (held)", HELD
    if result == "modify":
        return "MODIFY", HELD
    return result_text.upper(), WARNING


def _who(pid, exe, label: str = "pid") -> str:
    parts = []
    if pid is not None:
        parts.append(f"{label} {escape(pid)}")
    if exe is not None:
        parts.append(escape(exe))
    return " ".join(parts)


def _action_detail(action: dict) -> str:
    parts = []
    if "destination" in action:
        parts.append("-> " + escape(action["destination"]))
    if "source" in action:
        parts.append("from " + escape(action["source"]))
    if "content" in action:
        parts.append("content " + escape(action["content"]))
    if "argv" in action:
        parts.append("argv: " + escape_argv(action["argv"]))
    return "  ".join(parts)


def _required_dict(rec: dict, key: str) -> dict:
    value = rec.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"{key} is not an object")
    return value


def _receipt_row(line: Line, rec: dict) -> Row:
    action, decision = _required_dict(rec, "action"), _required_dict(rec, "decision")
    outcome = _dict(rec.get("outcome"))
    result, would = decision.get("result"), decision.get("would")
    label, tone = decision_label(result, would)
    if result == "allow" and outcome.get("errno"):
        label += (f", failed {escape(outcome['errno'])}" if outcome.get("executed") is False else
                  f", performed, then failed {escape(outcome['errno'])}")
    approval = decision.get("approval")
    detail = _action_detail(action)
    if isinstance(approval, dict):
        label, tone = _approval_label(result, approval, outcome)
        by = _dict(approval.get("by"))
        who = f"by {escape(by.get('user') or by.get('uid'))} via {escape(by.get('channel'))}" if by else ""
        detail = " ".join(x for x in (f"request {escape(approval.get('request'))}", who, detail) if x)
    if rec.get("data_classes"):
        detail = (detail + "  " if detail else "") + "data: " + escape(rec["data_classes"])
    rule, reason = escape(decision.get("rule")), escape(decision.get("reason"))
    return Row(line.lineno, "receipt", escape(rec.get("seq")), escape(rec.get("ts")), label, tone,
               escape(action.get("type")), escape(action.get("target")), detail,
               f"[{rule}] {reason}" if rule else reason, _who(action.get("pid"), action.get("exe")),
               notable=tone != ALLOWED or result != "allow", record=rec)


_APPROVAL_WORDS = {"approve": "approved", "grant": "approved (for the session)",
                   "deny": "denied", "timeout": "timed out", "context": "context arrived",
                   "gone": "caller gone", "rate-limit": "rate-limited", "limit": "over the limit",
                   "deferrals": "too many deferrals", "ended": "session ended",
                   "repeat": "refused moments ago"}


def _approval_label(result, approval: dict, outcome: dict) -> tuple[str, str]:
    """A held action's final state: what was answered and whether it ran."""
    answer = approval.get("answer")
    word = _APPROVAL_WORDS.get(answer, escape(answer))
    executed = outcome.get("executed") is True
    if executed:
        return f"{escape(result).upper()} {word}", ALLOWED
    if answer in ("approve", "grant", "context"):
        return f"{escape(result).upper()} {word}, not executed", DENIED
    return f"{escape(result).upper()} {word}, denied", DENIED


def _session_start_row(line: Line, rec: dict) -> Row:
    profile = _dict(rec.get("profile"))
    why = f"profile {escape(profile.get('id'))}@{escape(profile.get('version'))}"
    if rec.get("observe"):
        why += " (observe mode: nothing denied, would-decisions recorded)"
    detail = f"intent: {escape(rec['intent'])}" if rec.get("intent") is not None else ""
    return Row(line.lineno, "session.start", escape(rec.get("seq")), escape(rec.get("ts")),
               "session start", SESSION, "", "command: " + escape_argv(rec.get("command")),
               detail, why, f"workspace {escape(rec.get('workspace'))}", record=rec)


def describe_exit(status) -> str:
    if isinstance(status, int) and not isinstance(status, bool) and status > 128:
        return f"exit {status} (signal {status - 128})"
    return f"exit {escape(status)}"


def _counts(value) -> str:
    if not isinstance(value, dict):
        return escape(value)
    return ", ".join(f"{escape(k)} {escape(v)}" for k, v in sorted(value.items()))


def _session_end_row(line: Line, rec: dict) -> Row:
    why = f"decisions: {_counts(rec.get('decisions'))}"
    detail = f"actions: {_counts(rec.get('actions'))}" if rec.get("actions") else ""
    return Row(line.lineno, "session.end", escape(rec.get("seq")), escape(rec.get("ts")),
               "session end (seal)", SESSION, "", describe_exit(rec.get("exit_status")), detail,
               why, record=rec)


def _error_row(line: Line, rec: dict) -> Row:
    syscall = escape(rec["syscall"]) if "syscall" in rec else f"syscall nr {escape(rec.get('nr'))}"
    return Row(line.lineno, "error", escape(rec.get("seq")), escape(rec.get("ts")), "ERROR", ERROR,
               syscall, "", "", f"{escape(rec.get('errno'))}: {escape(rec.get('reason'))}",
               _who(rec.get("tid"), None, "tid"), notable=True, record=rec)


def _enforcement_row(line: Line, rec: dict) -> Row:
    return Row(line.lineno, "enforcement", escape(rec.get("seq")), escape(rec.get("ts")),
               "ENFORCED", DENIED, escape(rec.get("action", "")), escape(rec.get("target", "")), "",
               escape(rec.get("reason")), _who(rec.get("tid"), None, "tid"),
               notable=True, record=rec)


def _net_close_row(line: Line, rec: dict) -> Row:
    """A brokered connection ended: the kernel's byte counts for it."""
    counts = (f"sent {escape(rec.get('bytes_sent'))} B, received {escape(rec.get('bytes_received'))} B"
              if rec.get("measured", True) else "closed before it could be measured")
    return Row(line.lineno, "net.close", escape(rec.get("seq")), escape(rec.get("ts")),
               "connection", QUIET, "net.close", escape(rec.get("target", "")), "",
               f"{counts} ({escape(rec.get('state'))})", "", record=rec)


def _approval_request_row(line: Line, rec: dict) -> Row:
    """An action held for a human (step_up) or for context (defer), as the approver saw it."""
    view = _required_dict(rec, "view")
    action, rule = _dict(view.get("action")), _dict(view.get("rule"))
    kind = rec.get("kind")
    waiting = (" waiting for " + ", ".join(escape(k) for k in view.get("waiting_for") or [])
               if kind == "defer" else "")
    return Row(line.lineno, "approval.request", escape(rec.get("seq")), escape(rec.get("ts")),
               f"{escape(kind).upper()} asked", HELD, escape(action.get("type")),
               escape(action.get("target")), f"request {escape(rec.get('request'))}{waiting}",
               f"[{escape(rule.get('id'))}] {escape(rule.get('reason'))}",
               _who(action.get("pid"), action.get("program")), notable=True, record=rec)


def _context_add_row(line: Line, rec: dict) -> Row:
    by = _dict(rec.get("by"))
    return Row(line.lineno, "context.add", escape(rec.get("seq")), escape(rec.get("ts")),
               "context", SESSION, "context.add", f"{escape(rec.get('key'))}={escape(rec.get('value'))}",
               "", f"added by {escape(by.get('user'))} via {escape(by.get('channel'))}", "",
               record=rec)


def _checkpoint_row(line: Line, rec: dict) -> Row:
    return Row(line.lineno, "checkpoint", escape(rec.get("seq")), escape(rec.get("ts")),
               "checkpoint", QUIET, "", f"records {escape(rec.get('from_seq'))}-{escape(rec.get('to_seq'))}",
               record=rec)


def _session_error_row(line: Line, rec: dict) -> Row:
    known = {"v", "type", "seq", "ts", "session_id", "prev_hash", "hash", "sig"}
    why = escape(rec.get("reason")) if "reason" in rec else escape(
        {k: v for k, v in rec.items() if k not in known})
    return Row(line.lineno, "session.error", escape(rec.get("seq")), escape(rec.get("ts")),
               "SESSION ERROR", ERROR, "", "supervisor failed; sandbox stopped", "", why,
               notable=True, record=rec)


def intent_row(line: Line, rec: dict) -> Row:
    """The row for an intent line whose receipt never came."""
    who = ", ".join(filter(None, [_who(rec.get("tid"), None, "tid"), f"line {line.lineno}"]))
    return Row(line.lineno, "intent", "", "", "NO RECEIPT", WARNING, escape(rec.get("action")),
               escape(rec.get("target")), f"syscall {escape(rec.get('syscall'))}", UNRECORDED,
               who, notable=True, record=rec)


def unreadable_row(line: Line, why: str | None = None) -> Row:
    """A line that is not a journal record: shown, with as much of it as is reasonable."""
    shown = escape(line.raw[:UNREADABLE_SHOWN_BYTES].decode("utf-8", "surrogateescape"))
    if len(line.raw) > UNREADABLE_SHOWN_BYTES:
        shown += f"... (+{len(line.raw) - UNREADABLE_SHOWN_BYTES} bytes not shown)"
    reason = TORN if line.torn else why or f"unreadable line {line.lineno}: not a journal record"
    return Row(line.lineno, "unreadable", "", "", "UNREADABLE", ERROR, "", shown, "", reason,
               f"line {line.lineno}", notable=True)


_ROW_BUILDERS = {"receipt": _receipt_row, "session.start": _session_start_row,
                 "session.end": _session_end_row, "error": _error_row,
                 "enforcement": _enforcement_row, "checkpoint": _checkpoint_row,
                 "session.error": _session_error_row, "net.close": _net_close_row,
                 "approval.request": _approval_request_row, "context.add": _context_add_row}


def row_of(line: Line) -> Row:
    """The row for one chained record (intent lines go through `Timeline`). A malformed
    record becomes an "unreadable" row instead of an exception: the file may be tampered."""
    rec = line.record
    if rec is None or line.torn:
        return unreadable_row(line)
    builder = _ROW_BUILDERS.get(rec.get("type"))
    if builder is None:
        return unreadable_row(line, f"line {line.lineno}: unknown record type {escape(rec.get('type'))}")
    try:
        return builder(line, rec)
    except Exception:  # noqa: BLE001 - a malformed field must not hide the rest of the file
        return unreadable_row(line, f"line {line.lineno}: malformed {escape(rec.get('type'))} record")


# --------------------------------------------------------------------------------------
# the timeline: intents paired with receipts, counts, the seal

def notif_key(value):
    """A hashable key for a `notif` value (an integer in intent lines, a decimal string in
    receipts), whatever a tampered file put there."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) else escape(value)


def settled_notif(record: dict) -> object:
    """The notif whose intent line a chained record settles, or None."""
    if record.get("type") == "receipt":
        return _dict(record.get("action")).get("notif")
    if record.get("type") == "error" and record.get("performed") is False:
        return record.get("notif")
    return None


class PendingIntents:
    """Intent lines wait here until a receipt names the same `notif`; what is left at the
    end are the actions that may have happened unrecorded."""

    def __init__(self) -> None:
        self._waiting: dict[object, Line] = {}

    def add(self, line: Line) -> None:
        self._waiting[notif_key(line.record.get("notif"))] = line

    def settle(self, record: dict) -> None:
        """A receipt names its notif in its action; an error record that answered a
        notification with an intent line (nothing happened) at its top level."""
        notif = settled_notif(record)
        if notif is not None:
            self._waiting.pop(notif_key(notif), None)

    def drain(self) -> list[Line]:
        lines = sorted(self._waiting.values(), key=lambda line: line.lineno)
        self._waiting.clear()
        return lines


@dataclass(slots=True)
class Summary:
    records: int = 0
    decisions: dict | None = None
    errors: int = 0
    enforcements: int = 0
    checkpoints: int = 0
    unreadable: int = 0
    unrecorded: int = 0
    sealed: bool = False
    torn: bool = False


class Timeline:
    """Turns journal lines, in file order, into rows ready to print. Rows come out as soon
    as they are known, so the same code serves a whole file and `tail -f`; only intent
    lines are held back until their receipt arrives or the session ends."""

    def __init__(self) -> None:
        self.intents = PendingIntents()
        self.summary = Summary(decisions={})

    def feed(self, line: Line) -> list[Row]:
        rec = line.record
        if rec is not None and not line.torn and rec.get("type") == "intent":
            self.intents.add(line)
            return []
        row = row_of(line)
        self._count(row)
        if row.kind in ("receipt", "error") and rec is not None:
            self.intents.settle(rec)
        if row.kind == "session.end":       # nothing follows the seal: leftovers are final
            return [row, *self.finish()]
        return [row]

    def finish(self) -> list[Row]:
        """Rows for the intents still waiting (their receipts never came)."""
        rows = [intent_row(line, line.record) for line in self.intents.drain()]
        self.summary.unrecorded += len(rows)
        return rows

    def _count(self, row: Row) -> None:
        summary = self.summary
        if row.kind == "unreadable":
            summary.unreadable += 1
            summary.torn = summary.torn or row.why == TORN
            summary.sealed = False
            return
        summary.records += 1
        summary.sealed = row.kind == "session.end"
        if row.kind == "receipt":
            result = escape(_dict(row.record.get("decision")).get("result")) or "?"
            summary.decisions[result] = summary.decisions.get(result, 0) + 1
        elif row.kind in ("error", "session.error"):
            summary.errors += 1
        elif row.kind == "enforcement":
            summary.enforcements += 1
        elif row.kind == "checkpoint":
            summary.checkpoints += 1


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def summary_lines(summary: Summary, path: str) -> list[str]:
    """The closing lines every timeline ends with: counts, the seal, and the reminder that
    reading a journal is not verifying it."""
    counts = ", ".join(f"{n} {result}" for result, n in sorted(summary.decisions.items())) or "no decisions"
    first = f"{_plural(summary.records, 'record')} ({counts}); {_plural(summary.errors, 'error')}"
    if summary.enforcements:
        first += f"; {_plural(summary.enforcements, 'enforcement')}"
    first += f"; {_plural(summary.checkpoints, 'checkpoint')}"
    if summary.unrecorded:
        first += f"; {_plural(summary.unrecorded, 'intent')} without receipt"
    if summary.unreadable:
        first += f"; {_plural(summary.unreadable, 'unreadable line')}"
    seal = "sealed" if summary.sealed else "NOT sealed (truncated or crashed)"
    return [first, seal,
            f"not verified; run: aarm-sandbox journal verify {shlex.quote(escape(path))}"]


def one_line(row: Row) -> str:
    """A row as one line of plain text (no colour): the same facts the table shows."""
    parts = [row.decision, row.action, row.target, row.detail, row.why]
    text = "  ".join(part for part in parts if part)
    return f"{text}  ({row.who})" if row.who else text


def plain_line(row: Row) -> str:
    """The non-terminal timeline format: sequence and full timestamp first, for grep."""
    rest = "  ".join(part for part in (row.target, row.detail, row.why) if part)
    text = f"{row.seq or '-':>6}  {row.ts or '-':<27}  {row.decision:<18}  {row.action or '-':<13}  {rest}"
    return f"{text}  ({row.who})" if row.who else text
