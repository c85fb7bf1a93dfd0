"""`aarm-sandbox approvals ...` and `aarm-sandbox context add`: a human answering the
actions running sessions hold, through each session's control socket.

An approval always carries the action hash of the view this command just showed (or the
one a script reviewed earlier, `--hash`), so what is approved is exactly what was seen:
if the request changed in between, the session refuses it. Everything a session sends
back is escaped before it reaches the terminal; errors are one line on stderr.
"""
from __future__ import annotations

import json
import re
import sys
import threading
import time
from argparse import Namespace
from pathlib import Path

from aarm_sandbox.approvals.client import (ControlClient, ControlError, find_request,
                                           session_sockets, socket_path)
from aarm_sandbox.journal.render import escape

EXIT_USAGE = 125
CONTEXT_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
WATCH_WAIT = 20.0          # long-poll wait per request to one session
WATCH_RESCAN = 2.0         # how often `watch` looks for sessions that started


def _fail(message: str, code: int = 1) -> int:
    print(f"aarm-sandbox: {escape(message)}", file=sys.stderr)
    return code


def _render_summary(summary: dict) -> str:
    try:
        from aarm_sandbox.approvals.view import render_summary
    except ImportError:
        return " ".join(escape(summary.get(k)) for k in
                        ("request", "session", "kind", "type", "target", "rule", "expires_at"))
    return render_summary(summary)


def _render_request(view: dict, action_hash: str) -> str:
    try:
        from aarm_sandbox.approvals.view import render_request
    except ImportError:
        # ensure_ascii JSON is printable ASCII but for DEL: safe as it is
        text = json.dumps(view, indent=2, sort_keys=True).replace("\x7f", "\\u007f")
        return f"{text}\naction hash: {escape(action_hash)}"
    return render_request(view, action_hash)


def _print_json(value) -> None:
    print(json.dumps(value, sort_keys=True), flush=True)


def _sessions(only: str | None) -> dict[str, Path]:
    if only is None:
        return session_sockets()
    return {only: socket_path(only)}


# ------------------------------------------------------------------ approvals
def approvals_cmd(args: Namespace) -> int:
    try:
        if args.acmd == "list":
            return _list(args.session, args.json)
        if args.acmd == "show":
            return _show(args.request, args.json)
        if args.acmd in ("approve", "deny"):
            return _answer(args, approve=args.acmd == "approve")
        if args.acmd == "watch":
            return _watch(args.session, args.json)
    except ControlError as e:
        return _fail(str(e))
    return 2


def _list(only: str | None, as_json: bool) -> int:
    requests: list[dict] = []
    code = 0
    for sid, path in _sessions(only).items():
        try:
            status, body = ControlClient(path).request("GET", "/v1/requests")
        except ControlError:
            if only is not None:
                raise
            continue                                   # a dead session's leftover socket
        if status != 200:
            code = _fail(f"session {sid}: {body.get('error', status)}")
            continue
        requests.extend(r for r in body.get("requests", []) if isinstance(r, dict))
    if as_json:
        _print_json({"requests": requests})
    elif not requests:
        print("no pending requests")
    else:
        for summary in requests:
            print(_render_summary(summary))
    return code


def _show(request_id: str, as_json: bool) -> int:
    _client, found = find_request(request_id)
    if as_json:
        _print_json({"request": found.get("request"), "action_hash": found.get("action_hash"),
                     "view": found.get("view")})
    else:
        print(_render_request(found.get("view") or {}, str(found.get("action_hash"))))
    return 0


def _answer(args: Namespace, approve: bool) -> int:
    client, found = find_request(args.request)
    current = str(found.get("action_hash", ""))
    if args.hash is not None and args.hash.strip().lower() != current.lower():
        return _fail(f"the request changed since you looked at it (it now has action hash "
                     f"{current}); nothing was {'approved' if approve else 'denied'}")
    print(_render_request(found.get("view") or {}, current), flush=True)
    body: dict = {"action_hash": current}
    if args.reason is not None:
        body["reason"] = args.reason
    if args.label is not None:
        body["approver"] = args.label
    if approve:
        body["scope"] = "session" if args.session_scope else "once"
    verb = "approve" if approve else "deny"
    status, reply = client.request("POST", ControlClient.request_route(args.request, verb), body)
    if status != 200:
        return _fail(f"{verb} {args.request}: {reply.get('error', f'HTTP {status}')}")
    scope = f" (scope {escape(reply.get('scope'))})" if approve else ""
    print(f"{escape(reply.get('answer', verb))} {escape(reply.get('request', args.request))}"
          f"{scope} in session {escape(client.session)}")
    return 0


# ------------------------------------------------------------------ watch
def _event_line(ev: dict) -> str:
    kind = ev.get("event")
    if kind == "request" and isinstance(ev.get("summary"), dict):
        return f"{escape(ev.get('ts'))} request {_render_summary(ev['summary'])}"
    skip = {"seq", "event", "ts", "session", "request"}
    extra = " ".join(f"{escape(k)}={escape(v)}" for k, v in ev.items() if k not in skip)
    parts = [escape(ev.get("ts")), escape(kind), escape(ev.get("session"))]
    if ev.get("request") is not None:
        parts.append(escape(ev.get("request")))
    return " ".join(p for p in parts + [extra] if p)


class _Watcher:
    """One thread per session, long-polling its events; output serialised by a lock."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.lock = threading.Lock()
        self.active: set[str] = set()
        self.refused: set[str] = set()

    def start(self, sid: str, path: Path) -> None:
        with self.lock:
            if sid in self.active or sid in self.refused:
                return
            self.active.add(sid)
        threading.Thread(target=self._follow, args=(sid, path), daemon=True,
                         name=f"watch-{sid}").start()

    def _emit(self, sid: str, ev: dict) -> None:
        with self.lock:
            if self.as_json:
                _print_json({"session": sid, **ev})
            else:
                print(_event_line({"session": sid, **ev}), flush=True)

    def _follow(self, sid: str, path: Path) -> None:
        client, after = ControlClient(path), 0
        try:
            while True:
                began = time.monotonic()
                try:
                    status, body = client.request("GET", f"/v1/events?after={after}&wait={WATCH_WAIT:g}",
                                                  timeout=WATCH_WAIT + 15)
                except ControlError:
                    return                                # the session ended
                if status != 200:
                    with self.lock:
                        self.refused.add(sid)
                    print(f"aarm-sandbox: session {escape(sid)}: "
                          f"{escape(body.get('error', status))}", file=sys.stderr, flush=True)
                    return
                events = [e for e in body.get("events", []) if isinstance(e, dict)]
                for ev in events:
                    self._emit(sid, ev)
                nxt = body.get("next")
                if isinstance(nxt, int) and nxt >= after:
                    after = nxt
                if not events and time.monotonic() - began < 1:
                    time.sleep(0.5)                       # never spin on a session that closes
        finally:
            with self.lock:
                self.active.discard(sid)

    def alive(self, sid: str) -> bool:
        with self.lock:
            return sid in self.active


def _watch(only: str | None, as_json: bool) -> int:
    watcher = _Watcher(as_json)
    if only is not None:
        path = socket_path(only)
        ControlClient(path).request("GET", "/v1/session")   # ControlError if not running
        watcher.start(only, path)
        while watcher.alive(only):
            time.sleep(0.5)
        if only in watcher.refused:
            return 1
        print(f"aarm-sandbox: session {escape(only)} ended", file=sys.stderr)
        return 0
    while True:
        for sid, path in session_sockets().items():
            watcher.start(sid, path)
        time.sleep(WATCH_RESCAN)


# ------------------------------------------------------------------ context
def context_cmd(args: Namespace) -> int:
    if args.ccmd != "add":
        return 2
    session = args.session
    if not session or "/" in session or session.startswith("."):
        return _fail(f"bad session id {session!r}", EXIT_USAGE)
    pairs: list[tuple[str, str]] = []
    for item in args.pairs:
        key, sep, value = item.partition("=")
        if not sep or not CONTEXT_KEY.fullmatch(key):
            return _fail(f"bad context {item!r}: expected KEY=VALUE with KEY matching "
                         f"{CONTEXT_KEY.pattern}", EXIT_USAGE)
        pairs.append((key, value))
    client = ControlClient(socket_path(session))
    try:
        for key, value in pairs:
            status, reply = client.request("POST", "/v1/context", {"key": key, "value": value})
            if status != 200:
                return _fail(f"context {key}: {reply.get('error', f'HTTP {status}')}")
            print(_context_line(key, reply))
    except ControlError as e:
        return _fail(str(e))
    return 0


def _context_line(key: str, reply: dict) -> str:
    parts = []
    for field, label in (("released", "released"), ("escalated", "escalated to a human"),
                         ("still_waiting", "still waiting")):
        ids = reply.get(field) or []
        if ids:
            parts.append(f"{label}: " + ", ".join(escape(i) for i in ids))
    return f"{escape(key)} set" + ("; " + "; ".join(parts) if parts else
                                   " (no request was waiting for it)")
