"""What a human approver reads before answering a held action.

The text is built only from the request's view (the supervisor's own decode), and every
value the agent could have influenced goes through `escape`, so a path or argument cannot
move the cursor, conceal text, reorder it with bidi overrides or fake extra lines. Nothing
is ever cut: a hidden argument is hidden most easily past a "...", so long values run long,
and argv is shown twice (quoted command line and one element per line) so element
boundaries are visible even when an element contains spaces, quotes or newlines.
"""
from __future__ import annotations

import re

from aarm_sandbox.journal.reader import as_text
from aarm_sandbox.journal.render import escape, escape_argv, escape_text

LABEL_WIDTH = 12
_CLOCK = re.compile(r"T(\d{2}:\d{2}:\d{2})")


def has_hidden(value) -> bool:
    """True when showing `value` needed escapes beyond doubling backslashes: control,
    invisible or reordering characters, or bytes that are not UTF-8."""
    if isinstance(value, str):
        return escape_text(value) != value.replace("\\", "\\\\")
    if isinstance(value, dict) and set(value) == {"b64"}:
        try:
            return has_hidden(as_text(value))
        except (ValueError, TypeError):
            return True
    if isinstance(value, dict):
        return any(has_hidden(k) or has_hidden(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_hidden(v) for v in value)
    return False


class _Text:
    """Lines being built, remembering whether any shown value had to be escaped."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.hidden = False

    def e(self, value) -> str:
        self.hidden = self.hidden or has_hidden(value)
        return escape(value)

    def row(self, label: str, text: str = "") -> None:
        # never strip: trailing spaces are part of a value
        self.lines.append(label if not text else f"{label:<{LABEL_WIDTH}}{text}")


def _d(value) -> dict:
    return value if isinstance(value, dict) else {}


def _l(value) -> list:
    return value if isinstance(value, list) else [] if value is None else [value]


def _kind(t: _Text, view: dict) -> str:
    kind = view.get("kind")
    if kind == "step_up":
        return "STEP_UP: approval needed"
    if kind == "defer":
        keys = ", ".join(t.e(k) for k in _l(view.get("waiting_for")))
        return f"DEFER: waiting for context: {keys or '(nothing named)'}"
    return t.e(kind).upper()


def _params(t: _Text, params) -> str:
    if not isinstance(params, dict):
        return t.e(params)
    items = sorted(params.items(), key=lambda kv: str(kv[0]))
    return ", ".join(f"{t.e(k)}={t.e(v)}" for k, v in items)


def _destination(t: _Text, dest) -> tuple[str, str]:
    """("destination", text) for a network peer; a rename/link path is just a path."""
    if not isinstance(dest, dict):
        return "destination", t.e(dest)
    address = t.e(dest.get("address"))
    if ":" in address:
        address = f"[{address}]"
    text = f"{address}:{t.e(dest.get('port'))}/{t.e(dest.get('protocol'))}"
    names = _l(dest.get("names"))
    if names:
        text += " (resolved from " + ", ".join(t.e(n) for n in names) + ")"
    return "destination", text


def _action(t: _Text, a: dict) -> None:
    who = ", ".join(x for x in (t.e(a.get("syscall")),
                                f"pid {t.e(a['pid'])}" if a.get("pid") is not None else "",
                                f"tid {t.e(a['tid'])}" if a.get("tid") is not None else "") if x)
    t.row("action", t.e(a.get("type")) + (f"  ({who})" if who else ""))
    t.row("target", t.e(a.get("target")))
    obj = a.get("object")
    if isinstance(obj, dict):
        t.row("object", f"dev:ino {t.e(obj.get('dev'))}:{t.e(obj.get('ino'))}, "
                        f"{t.e(obj.get('file_type'))}")
    if "source" in a:
        t.row("source", t.e(a["source"]))
    if "destination" in a:
        t.row(*_destination(t, a["destination"]))
    paths = _l(a.get("paths"))
    if paths and paths != [a.get("target")]:
        for i, path in enumerate(paths):
            t.row("paths" if i == 0 else "", f"path[{i}] = {t.e(path)}")
    program = a.get("program")
    t.row("program", t.e(program) if program is not None else "(unknown)")
    if "argv" in a:
        argv = _l(a["argv"])
        t.hidden = t.hidden or has_hidden(argv)
        t.row("command", escape_argv(argv))
        for i, arg in enumerate(argv):
            t.row("", f"argv[{i}] = {t.e(arg)}")
    for i, meaning in enumerate(_l(a.get("semantic"))):
        m = _d(meaning)
        text = f"{t.e(m.get('type'))} {t.e(m.get('target'))}".strip()
        if m.get("params"):
            text += f"  ({_params(t, m['params'])})"
        t.row("meaning" if i == 0 else "", text)


def _history(t: _Text, history) -> None:
    entries = _l(history)
    if not entries:
        t.row("history", "no earlier related actions in this session")
        return
    t.row("history", "earlier related actions in this session:")
    for h in entries:
        h = _d(h)
        executed = "executed" if h.get("executed") else "not executed"
        t.row("", f"{t.e(h.get('type'))} {t.e(h.get('target'))} -> {t.e(h.get('result'))}, "
                  f"{executed}")


def render_request(view: dict, action_hash: str) -> str:
    """The full, plain-text description of one held action (no colours, no terminal
    control of any kind); the last line names the hash an answer is bound to."""
    t = _Text()
    view = _d(view)
    a = _d(view.get("action"))
    t.lines.append(f"request {t.e(view.get('request'))}  {_kind(t, view)}  "
                   f"(session {t.e(view.get('session'))})")
    _action(t, a)
    classes = _l(view.get("data_classes"))
    t.row("data", ", ".join(t.e(c) for c in classes) if classes else "(no data classes)")
    rule = _d(view.get("rule"))
    t.row("rule", f"[{t.e(rule.get('id'))}] {t.e(rule.get('reason'))}")
    _history(t, view.get("history"))
    intent = view.get("intent")
    text = _d(intent).get("text") if isinstance(intent, dict) else intent
    t.lines.append("intent (the agent's claim, not verified): "
                   + (t.e(text) if text is not None else "(none declared)"))
    t.row("requested", t.e(view.get("requested_at")))
    t.row("expires", t.e(view.get("expires_at")))
    if view.get("freeze"):
        t.lines.append("the session is frozen while this waits")
    if t.hidden:
        t.lines.append("note: some values contained control/invisible characters, shown escaped")
    t.lines.append(f"action hash: {escape(action_hash)}")
    return "\n".join(t.lines)


def render_summary(summary: dict) -> str:
    """One line per pending request, for lists."""
    s = _d(summary)
    kind = s.get("kind")
    label = "STEP_UP" if kind == "step_up" else "DEFER" if kind == "defer" else escape(kind).upper()
    rule = s.get("rule")
    rule = _d(rule).get("id") if isinstance(rule, dict) else rule
    parts = [escape(s.get("request")), label, escape(s.get("type")), escape(s.get("target")),
             f"[{escape(rule)}]"]
    if kind == "defer" or s.get("waiting_for"):
        parts.append("waiting for " + (", ".join(escape(k) for k in _l(s.get("waiting_for")))
                                       or "(nothing named)"))
    expires = s.get("expires_at")
    m = _CLOCK.search(expires) if isinstance(expires, str) else None
    parts.append("expires " + (m.group(1) if m else escape(expires)))
    return " ".join(parts)
