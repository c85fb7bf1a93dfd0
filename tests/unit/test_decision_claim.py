"""The decision thread's claim on the GIL (native/aarm_native.c, intercept/claim.py):
the receive functions drop it on entry and take it on return; a background thread that
yields waits, without the GIL, until it is dropped, and never longer than its timeout."""
from __future__ import annotations

import errno
import threading
import time

from aarm_sandbox._native import ffi, lib
from aarm_sandbox.intercept.claim import CLAIM


def test_a_receive_drops_the_claim_while_it_waits_and_takes_it_when_it_returns():
    lib.aarm_claim_clear()
    assert not CLAIM.claimed()
    n = ffi.new("struct aarm_notif *")
    assert lib.aarm_notif_recv(-1, n) == -errno.EBADF       # returned to Python: claimed
    assert CLAIM.claimed()
    lib.aarm_claim_clear()
    assert not CLAIM.claimed()


def test_a_yielding_thread_waits_for_the_claim_to_be_dropped_and_no_longer():
    lib.aarm_claim_set()
    done = threading.Event()
    waited: list[int] = []

    def background():
        waited.append(lib.aarm_yield_to_decisions(30 * 1_000_000_000))
        done.set()

    t = threading.Thread(target=background)
    t.start()
    try:
        assert not done.wait(0.3), "returned while the claim was held"
    finally:
        lib.aarm_claim_clear()                                  # wakes it
    assert done.wait(10) and waited == [1]
    t.join()
    assert lib.aarm_yield_to_decisions(30 * 1_000_000_000) == 0  # not claimed: at once
    lib.aarm_claim_set()
    try:
        t0 = time.monotonic()
        assert lib.aarm_yield_to_decisions(50_000_000) == 1       # held on: the timeout ends it
        assert time.monotonic() - t0 < 10
    finally:
        lib.aarm_claim_clear()


def test_the_claim_is_released_when_the_decision_loop_ends():
    """The loop's last receive returns to Python with the claim taken; the journal's last
    records and its seal must not each wait out a yield for it."""
    n = ffi.new("struct aarm_notif *")
    lib.aarm_notif_recv(-1, n)
    assert CLAIM.claimed()
    CLAIM.release()
    assert not CLAIM.claimed()
    t0 = time.monotonic()
    CLAIM.wait()
    assert time.monotonic() - t0 < 1.0
