"""Units of a count_over rule that the native fast path may spend without asking Python.

A rule such as `default`'s mass-delete ("more than 100 deletions in the workspace: step_up")
depends on the session's count, so every delete it could match used to go to the Python
pipeline (~100 µs each on ext4, against ~10 µs in C). The C loop now keeps such a rule
itself by spending units of a budget that this ledger maintains with one invariant:

    budget + units spent but not yet counted + counted (in the window) <= count_over

so the loop only ever performs a delete while the count is provably below the limit, and
the limit is enforced by Python exactly as before once the budget is used up. Units come
back when a spent one does not count after all: the path did not really match the rule (C
matches conservatively), the operation failed, the session created the file itself (what
`Supervisor._track` never counts), or, for windowed rules, the count left the window.
"""
from __future__ import annotations

import threading
import time
from collections import deque

from aarm_sandbox._native import lib
from aarm_sandbox.actions import action as A
from aarm_sandbox.policy.engine import _matches

# The fast-path kinds that may keep a count rule (the C loop refuses a budget elsewhere:
# an open decides between write and create only when it is performed).
BUDGET_KINDS = {lib.AARM_FAST_DELETE: A.FILE_DELETE}


def budgetable(rule) -> bool:
    """A count rule whose match depends on the action's paths only (no context, no
    existed-at-start, no outside set): what the C loop can test conservatively."""
    return (rule.count_over is not None and bool(rule.inside_globs) and not rule.outside_globs
            and rule.existed_at_start is None and not rule.needs_context
            and not rule.requires_context)


def budget_rules(policy) -> dict:
    """kind -> the one count rule the fast path keeps for that kind's action type (none
    where there are several count rules, or one that is not budgetable: Python keeps
    those)."""
    out = {}
    for kind, type_ in BUDGET_KINDS.items():
        counted = [r for r in policy.rules_by_type.get(type_, ()) if r.count_over is not None]
        if len(counted) == 1 and budgetable(counted[0]):
            out[kind] = counted[0]
    return out


class CountLedger:
    """Budget bookkeeping for one rule; every method is thread-safe (the drainer, the
    decision loop and approval threads all report)."""

    def __init__(self, rule, kind: int, ctx):
        self.rule = rule
        self.kind = kind
        self._fast = None
        held = (len(ctx.rule_times.get(rule.id, ())) if rule.within_seconds is not None
                else ctx.rule_counts[rule.id])
        self._unattached = rule.count_over - held   # the budget while no C loop holds it
        self._lock = threading.Lock()

    def attach(self, fast) -> None:
        """Hand the budget to a fast path (which starts at 0)."""
        with self._lock:
            fast.budget_add(self.kind, max(self._unattached, 0))
            self._unattached = min(self._unattached, 0)
            self._fast = fast

    def take(self) -> None:
        """A decision on an action the rule matched: it holds a unit until settled."""
        with self._lock:
            self._add(-1)

    def settle(self, ctx, held: bool, counts: bool) -> None:
        """An action the rule matched is over (performed, failed or refused): it counts,
        and its unit stays spent (one is taken now if it held none), or it does not, and
        the unit it held comes back."""
        with self._lock:
            if counts:
                if not held:
                    self._add(-1)
                rid = self.rule.id
                ctx.rule_counts[rid] += 1
                ctx.rule_times.setdefault(rid, deque()).append(time.monotonic())
            elif held:
                self._add(1)

    def matches(self, path: str) -> bool:
        """The rule's own path test (C's counted globs over-approximate it)."""
        return _matches(self.rule, _Paths((path,)), None)

    def _add(self, delta: int) -> None:
        if self._fast is None:
            self._unattached += delta
        else:
            self._fast.budget_add(self.kind, delta)

    def expire(self, ctx) -> None:
        """Windowed rules: counts that left the window give their units back."""
        window = self.rule.within_seconds
        if window is None:
            return
        with self._lock:
            times = ctx.rule_times.get(self.rule.id)
            horizon = time.monotonic() - window
            freed = 0
            while times and times[0] < horizon:
                times.popleft()
                freed += 1
            if freed:
                self._add(freed)


class _Paths:
    __slots__ = ("paths",)

    def __init__(self, paths: tuple[str, ...]):
        self.paths = paths

