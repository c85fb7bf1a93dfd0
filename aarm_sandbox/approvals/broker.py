"""Held actions (STEP_UP, DEFER) and their answers.

A held action is only an entry in a table: the calling thread stays blocked in its
syscall (the notification is simply not answered yet), no supervisor thread waits for it,
and the decision loop goes on with everything else. One timer thread expires deadlines and
drops requests whose caller died. Answers arrive from any thread (the terminal prompt, the
control socket, `context add`); whichever takes a request out of the table first answers
it, so every request is answered exactly once.

Fail closed: an expired request is denied, never allowed; a request the session cannot
afford to ask (rate limit, too many pending, too many deferrals) is denied; a request
still pending when the session ends is denied.
"""
from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections import deque

from aarm_sandbox.journal.writer import rfc3339
from aarm_sandbox.policy.decision import Decision, Result
from aarm_sandbox.procfs import descends_from

TYPE_CHECKING = False      # (typing itself costs the startup path ~4 ms)
if TYPE_CHECKING:
    from aarm_sandbox.approvals.request import Pending

# The request views (approvals.request: secrets, canonical hashing) and the terminal-safe
# escaping (journal.render: calendar, shlex, unicodedata) are imported by the first held
# action: every session starts a broker, few sessions ever hold anything.

GONE_CHECK_SECONDS = 0.5
# A denied (or expired) request asked again by the same process within this window is
# denied without asking: a shell's PATH search or a retry loop must not ask a human the
# same question over and over.
REPEAT_SECONDS = 10.0
EVENTS_KEPT = 10000
CONTEXT_KEY = r"[A-Za-z0-9_.-]{1,64}"      # (compiled by re's cache at the first use)


class Verdict:
    """How a held request ended. `answer`: approve, deny, timeout, gone, grant (an
    approval given earlier for the session), context (released by new context),
    repeat (the same process asked the same thing just after a refusal), rate-limit,
    limit, deferrals, ended. (A plain class: this module is on `run`'s startup path.)"""

    def __init__(self, approve: bool, answer: str, by: dict | None = None,
                 reason: str | None = None, scope: str | None = None,
                 decision: Decision | None = None):
        self.approve = approve
        self.answer = answer
        self.by = by
        self.reason = reason
        self.scope = scope
        self.decision = decision          # context: the decision now in force


class ApprovalBroker:
    def __init__(self, supervisor, session_id: str, settings, *, timeout: float | None,
                 approver: str, status: dict, sandbox_check=None):
        self.sup = supervisor
        self.session_id = session_id
        self.timeout = timeout if timeout is not None else settings.approval_timeout
        self.rate = settings.approval_rate
        self.max_pending = settings.max_pending
        self.max_deferrals = settings.max_deferrals
        self.approver = approver                 # "terminal" | "socket" | "none"
        self._status = status
        self._sandbox_check = sandbox_check
        self.prompt = None                       # TerminalApprover, set by `run`
        self.freezer = None                      # enforce.freeze.TreeFreezer, set by `run`
        self._lock = threading.Lock()
        self._pending: dict[str, Pending] = {}
        self._grants: dict[str, dict] = {}       # shape -> the approval given for the session
        self._refused: dict[str, tuple] = {}     # shape -> (pid, until, request) just denied
        self._asked: deque[float] = deque()      # when requests were raised (rate limit)
        self._wake = threading.Condition(self._lock)
        self._events: deque[dict] = deque(maxlen=EVENTS_KEPT)
        self._event_seq = 0
        self._events_cond = threading.Condition()
        self._closed = False
        # Started with the first request in the table (it only has pending requests to
        # expire or check): a session that holds nothing never starts it.
        self._timer = threading.Thread(target=self._tick, name="aarm-approvals", daemon=True)
        self._timer_started = False

    # ------------------------------------------------------------------ from the supervisor
    def hold(self, n, action, decision: Decision, effect) -> None:
        """Keep the notification pending until an answer, a deadline or new context."""
        kind = decision.result.value
        now = time.monotonic()
        timeout = decision.hold.timeout or self.timeout
        p = self._new_pending(kind, n, action, decision, effect, now, timeout)
        grant = self._grants.get(p.shape) if kind == "step_up" else None
        refused = self._refused.get(p.shape)
        if grant is not None:
            verdict = Verdict(True, "grant", by=grant["by"], scope="session",
                              reason=f"approved for the session with {grant['request']}")
        elif refused is not None and refused[0] == action.pid and now < refused[1]:
            verdict = Verdict(False, "repeat", reason=f"the same action by the same process "
                              f"was refused moments ago ({refused[2]}); not asked again")
        else:
            verdict = self._publish(p, count=True)
        if verdict is not None:
            self._finish(p, verdict)
            return
        self._announce(p)

    def _publish(self, p: Pending, count: bool) -> Verdict | None:
        """Journal the request and freeze the tree *before* the request can be answered
        (an answer that came first would leave the tree frozen), then put it in the table,
        unless a limit says no (the verdict)."""
        self._journal_request(p)
        if p.view["freeze"] and not p.frozen:
            p.frozen = True
            self.freezer.freeze()
        now = time.monotonic()
        with self._lock:
            while self._asked and self._asked[0] < now - 60:
                self._asked.popleft()
            if self._closed:
                return Verdict(False, "ended", reason="the session is ending")
            if len(self._pending) >= self.max_pending:
                return Verdict(False, "limit", reason=f"more than {self.max_pending} actions "
                               "held at once; denied without asking")
            if count and len(self._asked) >= self.rate:
                return Verdict(False, "rate-limit", reason=f"more than {self.rate} approval "
                               "requests in a minute; denied without asking (fatigue control)")
            if not self._timer_started:
                # Deadlines need the timer thread: a request held without one could wait
                # forever (a DEFER must time out to deny). No thread, no hold.
                try:
                    self._timer.start()
                except RuntimeError as e:
                    return Verdict(False, "error", reason=f"cannot keep the deadlines of held "
                                   f"requests ({e}); denied without asking")
                self._timer_started = True
            if count:
                self._asked.append(now)
            self._pending[p.id] = p
            self._wake.notify()
        return None

    def _journal_request(self, p: Pending) -> None:
        if not p.journaled:
            p.journaled = True
            self.sup.journal.append({"type": "approval.request", "request": p.id,
                                     "kind": p.kind, "action_hash": p.hash, "view": p.view})

    def _new_pending(self, kind, n, action, decision, effect, now, timeout) -> Pending:
        from aarm_sandbox.approvals.request import (Pending, build_view, new_request_id,
                                                    shape_of, view_hash)
        rid = new_request_id()
        ctx = self.sup.ctx
        freeze = bool(decision.hold.freeze) and self.freezer is not None
        wall = time.time()
        view = build_view(rid, self.session_id, kind, action, decision, effect=effect,
                          data_classes=ctx.classes_of(action.paths), history=ctx.recent,
                          intent=ctx.intent, requested=wall, expires=wall + timeout, freeze=freeze)
        return Pending(rid, kind, n, action, decision, effect, view, view_hash(view),
                       shape_of(view), now, now + timeout)

    def _announce(self, p: Pending) -> None:
        """Tell the approvers (the request is in the table already)."""
        from aarm_sandbox.journal.render import escape
        self._event("request", p.id, summary=self._summary(p))
        if p.kind == "step_up" and self.prompt is not None:
            self.prompt.submit(p.id)
        elif p.kind == "step_up":
            print(f"aarm-sandbox: held {escape(p.action.type)} {escape(p.action.target)} "
                  f"[{escape(p.decision.rule)}]: approve with `aarm-sandbox approvals approve "
                  f"{p.id}` or deny with `aarm-sandbox approvals deny {p.id}` (denied in "
                  f"{p.deadline - p.created:.0f} s)", file=sys.stderr)
        else:
            keys = " ".join(f"{k}=..." for k in p.decision.waiting_for)
            print(f"aarm-sandbox: deferred {escape(p.action.type)} {escape(p.action.target)} "
                  f"[{escape(p.decision.rule)}]: waiting for `aarm-sandbox context add "
                  f"{self.session_id} {keys}` (denied in {p.deadline - p.created:.0f} s)",
                  file=sys.stderr)

    # ------------------------------------------------------------------ answers
    def answer(self, request_id: str, action_hash: str, approve: bool, approver: dict,
               reason: str | None = None, scope: str = "once") -> tuple[int, dict]:
        if scope not in ("once", "session") or (scope == "session" and not approve):
            return 400, {"error": "scope must be 'once' or 'session' (session: approvals only)"}
        with self._lock:
            p = self._pending.get(request_id)
            if p is None:
                return 404, {"error": f"no pending request {request_id} in session "
                             f"{self.session_id} (answered, expired, or never existed; an "
                             "answer is single-use)"}
            if action_hash != p.hash:
                return 409, {"error": "the action hash does not match the request: the answer "
                             "was for a different view; fetch the request again"}
            why = _not_permitted(p.decision.hold.approvers, approver)
            if why:
                return 403, {"error": why}
            del self._pending[request_id]
            others = []
            if approve and scope == "session":
                self._grants[p.shape] = {"request": p.id, "by": approver}
                others = [q for q in self._pending.values() if q.shape == p.shape and q.kind == "step_up"]
                for q in others:
                    del self._pending[q.id]
        answer = "approve" if approve else "deny"
        if not approve:
            self._refuse(p)
        self._finish(p, Verdict(approve, answer, by=approver, reason=reason, scope=scope))
        for q in others:
            self._finish(q, Verdict(True, "grant", by=approver, scope="session",
                                    reason=f"approved for the session with {p.id}"))
        return 200, {"ok": True, "request": p.id, "answer": answer, "scope": scope,
                     "also_approved": [q.id for q in others]}

    def add_context(self, key: str, value: str, by: dict) -> tuple[int, dict]:
        """New context (a ticket id, a change window) may release deferred actions: each is
        decided again; it may now be allowed, denied, need a human, or wait for more."""
        if not re.fullmatch(CONTEXT_KEY, key or "") or not isinstance(value, str) or len(value) > 4096:
            return 400, {"error": "expected KEY=VALUE with KEY of letters, digits, _ . - "
                         "(at most 64) and VALUE at most 4096 characters"}
        ctx = self.sup.ctx
        ctx.facts[key] = value
        self.sup.journal.append({"type": "context.add", "key": key, "value": value, "by": by})
        self._event("context", None, key=key)
        with self._lock:
            ready = [p for p in self._pending.values()
                     if p.kind == "defer" and set(p.decision.waiting_for) <= ctx.facts.keys()]
            for p in ready:
                del self._pending[p.id]
        released, escalated, waiting = [], [], []
        for p in ready:
            try:
                d = self.sup.redecide(p.action)
            except Exception as e:  # noqa: BLE001 - fail closed
                d = Decision(Result.DENY, "policy-error", f"policy evaluation failed: {e!r}",
                             p.decision.errno)
            if d.result is Result.DEFER:
                if p.deferrals + 1 >= self.max_deferrals:
                    self._finish(p, Verdict(False, "deferrals", by=by, reason=f"deferred "
                                 f"{p.deferrals + 1} times; capped at {self.max_deferrals}"))
                    continue
                self._requeue(p, "defer", d, deferrals=p.deferrals + 1)
                waiting.append(p.id)
            elif d.result is Result.STEP_UP:
                if self._escalate(p, d):
                    escalated.append(p.id)
            else:
                released.append(p.id)
                self._finish(p, Verdict(d.result is not Result.DENY, "context", by=by,
                                        reason=f"context {key} added", decision=d))
        return 200, {"ok": True, "released": released, "escalated": escalated,
                     "still_waiting": waiting}

    def _escalate(self, p: Pending, d: Decision) -> bool:
        """A deferred action now needs a human; without one it is denied."""
        if not self.sup.engine.hold_step_up:
            self._finish(p, Verdict(False, "deny", reason=f"{d.reason} (needs approval; no "
                                    "approver available)", decision=d))
            return False
        self._requeue(p, "step_up", d, deferrals=p.deferrals)
        return True

    def _requeue(self, p: Pending, kind: str, d: Decision, deferrals: int) -> None:
        timeout = d.hold.timeout or self.timeout
        q = self._new_pending(kind, p.n, p.action, d, p.effect, time.monotonic(), timeout)
        q.deferrals, q.frozen = deferrals, p.frozen
        q.view["previous_request"] = p.id
        from aarm_sandbox.approvals.request import view_hash
        q.hash = view_hash(q.view)
        self._event("superseded", p.id, by_request=q.id)
        verdict = self._publish(q, count=False)
        if verdict is not None:
            self._finish(q, verdict)
            return
        self._announce(q)

    def _finish(self, p: Pending, verdict: Verdict) -> None:
        self._journal_request(p)            # (every receipt's request is in the journal)
        approval = {"request": p.id, "kind": p.kind, "action_hash": p.hash,
                    "answer": verdict.answer, "by": verdict.by, "at": rfc3339(),
                    "waited_ms": int((time.monotonic() - p.created) * 1000)}
        if verdict.reason:
            approval["reason"] = verdict.reason
        if verdict.scope:
            approval["scope"] = verdict.scope
        try:
            self.sup.release_held(p, verdict, approval)
        finally:
            if p.frozen:
                p.frozen = False
                self.freezer.thaw()
            self._event("answered", p.id, answer=verdict.answer, by=verdict.by,
                        executed=verdict.approve)

    # ------------------------------------------------------------------ time
    def _tick(self) -> None:
        """Deadlines and dead callers. Never dies on an error: a request nobody expires
        would wait until the session ends."""
        while not self._closed:
            try:
                self._tick_loop()
            except Exception as e:  # noqa: BLE001
                print(f"aarm-sandbox: internal error in the approval timer: {e!r}", file=sys.stderr)
                time.sleep(GONE_CHECK_SECONDS)

    def _tick_loop(self) -> None:
        last_check = time.monotonic()
        while True:
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                nxt = min((p.deadline for p in self._pending.values()), default=now + 3600)
                wait = max(0.0, min(nxt - now, GONE_CHECK_SECONDS))
                if wait > 0:
                    self._wake.wait(wait)
                now = time.monotonic()
                due = [p for p in self._pending.values() if p.deadline <= now]
                for p in due:
                    del self._pending[p.id]
                gone = []
                if now - last_check >= GONE_CHECK_SECONDS:
                    last_check = now
                    still = self.sup.backend.still_pending
                    gone = [p for p in self._pending.values() if not still(p.n)]
                    for p in gone:
                        del self._pending[p.id]
            for p in due:
                self._expire(p)
            for p in gone:
                self._finish(p, Verdict(False, "gone", reason="the calling process went away "
                                        "before an answer"))

    def _expire(self, p: Pending) -> None:
        if p.kind == "defer" and p.decision.hold.on_deadline == "step_up":
            d = p.decision
            self._escalate(p, Decision(Result.STEP_UP, d.rule, f"{d.reason} (deadline reached; "
                                       "escalated to a human)", d.errno, hold=d.hold))
            return
        self._refuse(p)
        self._finish(p, Verdict(False, "timeout", reason=f"no answer within "
                                f"{p.deadline - p.created:.0f} s"))

    def _refuse(self, p: Pending) -> None:
        if len(self._refused) > 4096:
            self._refused.clear()
        self._refused[p.shape] = (p.action.pid, time.monotonic() + REPEAT_SECONDS, p.id)

    def close(self) -> None:
        """The session ends: whatever still waits is denied."""
        with self._lock:
            self._closed = True
            rest = list(self._pending.values())
            self._pending.clear()
            self._wake.notify()
        for p in rest:
            self._finish(p, Verdict(False, "ended", reason="the session ended before an answer"))
        with self._events_cond:
            self._events_cond.notify_all()

    # ------------------------------------------------------------------ read side
    def is_pending(self, request_id: str) -> bool:
        return request_id in self._pending

    def get(self, request_id: str) -> dict | None:
        p = self._pending.get(request_id)
        if p is None:
            return None
        return {"request": p.id, "action_hash": p.hash, "view": p.view}

    def list_requests(self) -> list[dict]:
        with self._lock:
            items = sorted(self._pending.values(), key=lambda p: p.created)
        return [self._summary(p) for p in items]

    def _summary(self, p: Pending) -> dict:
        v = p.view
        out = {"request": p.id, "session": self.session_id, "kind": p.kind,
               "type": v["action"]["type"], "target": v["action"]["target"],
               "rule": v["rule"]["id"], "requested_at": v["requested_at"],
               "expires_at": v["expires_at"]}
        if "waiting_for" in v:
            out["waiting_for"] = v["waiting_for"]
        return out

    def status(self) -> dict:
        return {**self._status, "session": self.session_id, "pending": len(self._pending),
                "approver": self.approver}

    def is_sandbox_process(self, pid: int) -> bool:
        """Fail closed: when it cannot be told, the caller counts as inside."""
        if self._sandbox_check is None:
            return False
        try:
            return bool(self._sandbox_check(pid))
        except Exception:  # noqa: BLE001
            return True

    def _event(self, kind: str, request_id: str | None, **fields) -> None:
        with self._events_cond:
            self._event_seq += 1
            ev = {"seq": self._event_seq, "event": kind, "session": self.session_id,
                  "ts": rfc3339()}
            if request_id is not None:
                ev["request"] = request_id
            ev.update(fields)
            self._events.append(ev)
            self._events_cond.notify_all()

    def events_after(self, after: int, timeout: float) -> tuple[int, list[dict]]:
        deadline = time.monotonic() + max(0.0, timeout)
        with self._events_cond:
            while self._event_seq <= after and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._events_cond.wait(left)
            return self._event_seq, [e for e in self._events if e["seq"] > after]


def _not_permitted(approvers: tuple, who: dict) -> str | None:
    """None when `who` may answer under the rule's `approvers` (empty: anyone the
    session accepts), else why not."""
    if not approvers or "any" in approvers:
        return None
    channel = who.get("channel")
    for a in approvers:
        if a == channel:
            return None
        if a.startswith("user:") and who.get("user") == a[5:]:
            return None
        if a.startswith("uid:") and str(who.get("uid")) == a[4:]:
            return None
    return f"the rule accepts answers only from {', '.join(approvers)}"


def sandbox_membership(root_pid: int):
    """A check for "may this pid belong to the sandboxed tree": it lives in a pid namespace
    below ours (the sandbox's, or one nested in it), in another user namespace, or descends
    from the sandbox init. Approvers live where the supervisor does. Read from world-readable
    /proc files (status, uid_map, stat): the supervisor has dropped the capabilities that
    reading /proc/PID/ns of a privileged caller would need."""
    own_depth = _nspid_depth("self")
    own_map = _uid_map("self")

    def check(pid: int) -> bool:
        depth = _nspid_depth(str(pid))
        if depth is None or own_depth is None or depth > own_depth:
            return True
        if _uid_map(str(pid)) != own_map:
            return True
        return descends_from(pid, root_pid, unknown=True)
    return check


def _nspid_depth(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"NSpid:"):
                    return len(line.split()) - 1
    except OSError:
        return None
    return None


def _uid_map(pid: str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/uid_map", "rb") as f:
            return b" ".join(f.read().split())
    except OSError:
        return None
