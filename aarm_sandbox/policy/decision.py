"""The five AARM decisions and the verdict record the engine returns."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


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


@dataclass(frozen=True, slots=True)
class Hold:
    """How a STEP_UP or DEFER waits: its own timeout (None: the session's), who may answer,
    whether the whole tree freezes meanwhile, and what a DEFER's deadline does."""
    timeout: float | None = None
    approvers: tuple = ()
    freeze: bool = False
    on_deadline: str = "deny"          # "deny" | "step_up"


NO_HOLD = Hold()


@dataclass(frozen=True, slots=True)
class Decision:
    result: Result
    rule: str
    reason: str
    errno: int = 0          # for DENY: the errno the target sees
    shadow: Result | None = None   # observe mode: what the profile would have decided
    modify: str | None = None      # MODIFY: the transform to apply (e.g. "quarantine")
    params: tuple = ()             # the transform's parameters (scrub_env: name globs)
    hold: Hold = NO_HOLD           # STEP_UP/DEFER: how the action waits
    waiting_for: tuple = ()        # DEFER: the context keys it waits for

    @property
    def allowed(self) -> bool:
        return self.result is Result.ALLOW
