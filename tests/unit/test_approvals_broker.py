"""The approvals broker's own bookkeeping, without a sandbox."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from aarm_sandbox.approvals.broker import ApprovalBroker


def _broker() -> tuple[ApprovalBroker, list]:
    journaled: list = []
    sup = SimpleNamespace(journal=SimpleNamespace(append=journaled.append))
    settings = SimpleNamespace(approval_timeout=60, approval_rate=100, max_pending=10,
                               max_deferrals=10)
    return ApprovalBroker(sup, "S1", settings, timeout=None, approver="none",
                          status=lambda: {}), journaled


def _pending(rid: str):
    return SimpleNamespace(id=rid, kind="defer", hash="h", view={"freeze": False},
                           frozen=False, journaled=False, deadline=time.monotonic() + 60)


def test_no_request_is_held_when_the_deadline_timer_cannot_start(monkeypatch):
    """A held request whose deadline nobody keeps could wait forever: when the timer thread
    cannot start, the request is refused at once (fail closed) and nothing stays held; once
    threads can start again, requests are held with their deadline."""
    b, journaled = _broker()

    def no_threads():
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(b._timer, "start", no_threads)
    verdict = b._publish(_pending("r-1"), count=True)
    assert verdict is not None and not verdict.approve and "can't start new thread" in verdict.reason
    assert not b._pending and not b._timer_started and not b._asked
    assert journaled and journaled[0]["request"] == "r-1"      # the request itself is on record
    monkeypatch.undo()
    assert b._publish(_pending("r-2"), count=True) is None
    assert list(b._pending) == ["r-2"] and b._timer_started
    assert isinstance(b._timer, threading.Thread) and b._timer.is_alive()
    with b._lock:
        b._closed = True
        b._wake.notify_all()
