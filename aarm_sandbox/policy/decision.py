"""The five AARM decisions and the verdict record the engine returns."""
from __future__ import annotations

from enum import Enum

from aarm_sandbox.records import FrozenRecord


class Result(str, Enum):
    ALLOW = "allow"
    DENY = "deny"
    MODIFY = "modify"
    STEP_UP = "step_up"
    DEFER = "defer"


# Most restrictive first: when several rules match, the earliest here wins, so adding an
# allow rule can never weaken a deny (order-independent composition).
PRECEDENCE = (Result.DENY, Result.DEFER, Result.STEP_UP, Result.MODIFY, Result.ALLOW)
RANK = {r: i for i, r in enumerate(PRECEDENCE)}


class Hold(FrozenRecord):
    """How a STEP_UP or DEFER waits: its own timeout (None: the session's), who may answer,
    whether the whole tree freezes meanwhile, and what a DEFER's deadline does."""
    __slots__ = ("timeout", "approvers", "freeze", "on_deadline")

    def __init__(self, timeout: float | None = None, approvers: tuple = (), freeze: bool = False,
                 on_deadline: str = "deny"):
        setattr_ = object.__setattr__
        setattr_(self, "timeout", timeout)
        setattr_(self, "approvers", approvers)
        setattr_(self, "freeze", freeze)
        setattr_(self, "on_deadline", on_deadline)      # "deny" | "step_up"


NO_HOLD = Hold()


class Decision(FrozenRecord):
    __slots__ = ("result", "rule", "reason", "errno", "shadow", "modify", "params", "hold",
                 "waiting_for")

    def __init__(self, result: Result, rule: str, reason: str, errno: int = 0,
                 shadow: Result | None = None, modify: str | None = None, params: tuple = (),
                 hold: Hold = NO_HOLD, waiting_for: tuple = ()):
        setattr_ = object.__setattr__
        setattr_(self, "result", result)
        setattr_(self, "rule", rule)
        setattr_(self, "reason", reason)
        setattr_(self, "errno", errno)              # for DENY: the errno the target sees
        setattr_(self, "shadow", shadow)            # observe mode: what the profile would have decided
        setattr_(self, "modify", modify)            # MODIFY: the transform to apply (e.g. "quarantine")
        setattr_(self, "params", params)            # the transform's parameters (scrub_env: name globs)
        setattr_(self, "hold", hold)                # STEP_UP/DEFER: how the action waits
        setattr_(self, "waiting_for", waiting_for)  # DEFER: the context keys it waits for

    @property
    def allowed(self) -> bool:
        return self.result is Result.ALLOW

    def noted(self, note: str) -> "Decision":
        """The same decision, its reason followed by `note` in parentheses."""
        return Decision(self.result, self.rule, f"{self.reason} ({note})", self.errno,
                        self.shadow, self.modify, self.params, self.hold, self.waiting_for)


# What a decision on something else the same call also does (the entries a directory rename
# moves, the interpreter an exec loads) can impose: a refusal or a hold, never a transform
# meant for that other thing.
BLOCKING = frozenset({Result.DENY, Result.DEFER, Result.STEP_UP})


def stricter(primary: Decision, other: Decision | None) -> Decision:
    """`other` when it blocks (BLOCKING) and ranks before `primary`, else `primary`."""
    if other is not None and other.result in BLOCKING and RANK[other.result] < RANK[primary.result]:
        return other
    return primary
