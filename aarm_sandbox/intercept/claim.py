"""The decision thread's claim on the GIL.

The decision thread receives notifications in C (GIL released) and handles some in Python.
Every C call it makes releases the GIL, and getting it back from a background thread that
holds it (the journal writer encoding and hashing, the fast path's drainer) takes up to a
whole switch interval each time: with journaling on, a Python-path decision cost ~25 µs
more at the median and 8x more at p99. So the receive functions in C (aarm_notif_recv,
aarm_fast_next) take a claim when they hand a notification to Python and drop it when the
decision thread is back in C; background threads check it between records and wait,
without the GIL, while it is held (at most YIELD_NS at a time: the journal is never
starved).
"""
from __future__ import annotations

from aarm_sandbox._native import lib

YIELD_NS = 2_000_000


class DecisionClaim:
    __slots__ = ("_flag",)

    def __init__(self):
        self._flag = lib.aarm_claim_ptr()

    def claimed(self) -> bool:
        """The decision thread is in Python (a plain load: no GIL release)."""
        return self._flag[0] != 0

    def wait(self) -> None:
        """Let the decision thread finish its Python part (GIL released meanwhile)."""
        if self._flag[0]:
            lib.aarm_yield_to_decisions(YIELD_NS)

    def release(self) -> None:
        """The decision loop has ended: nothing to yield to any more (the journal's last
        records and its seal must not wait on a claim nobody will drop)."""
        lib.aarm_claim_clear()


CLAIM = DecisionClaim()
