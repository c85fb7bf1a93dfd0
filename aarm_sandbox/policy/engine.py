"""Evaluate an Action against the compiled profile and the session context.

Order (runtime-core version of the AARM order): every matching rule is collected and the
most restrictive wins (deny > defer > step_up > modify > allow; ties go to the earlier
rule); with no match the profile default for the action type applies. STEP_UP is held for
a human only when the session has an approver (terminal or control socket), DEFER only when
context can still arrive (the session's control socket); otherwise they deny with a reason
that says so. Observe mode turns every non-allow into an allow that records what would
have happened.
"""
from __future__ import annotations

import fnmatch
import time

from aarm_sandbox.actions.action import Action
from aarm_sandbox.context.session import SessionContext
from aarm_sandbox.policy.compiler import CompiledPolicy, CompiledRule, default_errno
from aarm_sandbox.policy.decision import RANK, Decision, Result

NO_APPROVER = "no approver available; run in a terminal or with --approver socket"


class PolicyEngine:
    def __init__(self, policy: CompiledPolicy, *, observe: bool = False,
                 hold_step_up: bool = False, hold_defer: bool = False):
        self.policy = policy
        self.observe = observe
        self.step_up_denies = policy.profile.settings.step_up == "deny"
        self.hold_step_up = hold_step_up and not self.step_up_denies
        self.hold_defer = hold_defer
        self._final: dict[tuple[int, str], Decision] = {}   # (rule index | -1, type) -> decision

    def decide(self, action: Action, ctx: SessionContext) -> Decision:
        t = action.type
        best: CompiledRule | None = None
        best_result = Result.ALLOW
        deferred = False
        rules = self.policy.rules_by_type[t]
        if len(rules) > 8:                     # small sets: the loop is cheaper than the index
            rules = self.policy.index_by_type[t].candidates(action.paths)
        for rule in rules:
            if rule.needs_paths and not _matches(rule, action, ctx):
                continue
            if rule.needs_context and not _context_holds(rule, action, ctx):
                continue
            if rule.count_over is not None:
                # Counted by the caller only once the action really happened (Supervisor._track).
                if action.counted is None:
                    action.counted = []
                action.counted.append(rule.id)
                if _count(rule, ctx) < rule.count_over:
                    continue
            result = rule.result
            missing = rule.requires_context and not rule.requires_context <= ctx.facts.keys()
            if missing:
                result = Result.DEFER          # the rule needs context the session lacks
            if best is None or RANK[result] < RANK[best_result]:
                best, best_result, deferred = rule, result, bool(missing)
        key = (best.index if best is not None else -1, t, deferred)
        d = self._final.get(key)
        if d is None:
            d = self._final[key] = self._finalise(best, t, deferred)
        return d

    def trace(self, action: Action, ctx: SessionContext) -> list[tuple[str, str, bool]]:
        """Every rule that applies to the action's type: (rule id, its decision, matched),
        in profile order: what `explain` prints. Not on the hot path."""
        out = []
        for rule in self.policy.rules_by_type[action.type]:
            matched = (not rule.needs_paths or _matches(rule, action, ctx)) and \
                (not rule.needs_context or _context_holds(rule, action, ctx))
            if matched and rule.count_over is not None and _count(rule, ctx) < rule.count_over:
                matched = False
            result = rule.result.value
            if rule.requires_context and not rule.requires_context <= ctx.facts.keys():
                result = f"defer (missing {', '.join(sorted(rule.requires_context))})"
            out.append((rule.id, result, matched))
        return out

    def _finalise(self, best: CompiledRule | None, t: str, deferred: bool = False) -> Decision:
        """The decision a (rule, action type) pair yields; computed once, then reused."""
        if deferred:
            keys = ", ".join(sorted(best.requires_context))
            decision = Decision(Result.DEFER, best.id, f"{best.reason}: waiting for context "
                                f"{keys} (aarm-sandbox context add SESSION KEY=VALUE, or run "
                                f"--context KEY=VALUE)", best.errno or default_errno(t),
                                hold=best.hold, waiting_for=tuple(sorted(best.requires_context)))
        elif best is None:
            result = self.policy.default_by_type[t]
            decision = Decision(result, "default", f"profile {self.policy.profile.id} default for {t}",
                                default_errno(t) if result is not Result.ALLOW else 0)
        else:
            decision = Decision(best.result, best.id, best.reason, best.errno or default_errno(t),
                                modify=best.modify, params=best.env_remove, hold=best.hold)
        r = decision.result
        if (r is Result.STEP_UP and not self.hold_step_up) or (r is Result.DEFER and not self.hold_defer):
            why = ("profile turns step_up into deny" if self.step_up_denies and r is Result.STEP_UP
                   else NO_APPROVER)
            decision = Decision(Result.DENY, decision.rule,
                                f"{decision.reason} ({decision.result.value}: {why})",
                                decision.errno, shadow=decision.result)
        if self.observe and decision.result is not Result.ALLOW:
            return Decision(Result.ALLOW, decision.rule, f"observe: would {decision.result.value}: "
                            f"{decision.reason}", 0, shadow=decision.result)
        return decision


def _context_holds(rule: CompiledRule, action: Action, ctx: SessionContext) -> bool:
    """Composition conditions: what the session already did decides."""
    if rule.session_has and not rule.session_has <= ctx.data_classes:
        return False
    if rule.leaves_sandbox is not None and \
            (action.detail.get("egress") == "broker") != rule.leaves_sandbox:
        return False
    if rule.first_time is not None and (action.target not in ctx.programs_seen) != rule.first_time:
        return False
    if rule.programs and not any(fnmatch.fnmatchcase(action.exe or "", g) for g in rule.programs):
        return False
    if rule.argv is not None and not fnmatch.fnmatchcase(
            " ".join(action.detail.get("argv") or ()), rule.argv):
        return False
    if rule.touches and not set(rule.touches) & set(ctx.policy_classes(action.paths)):
        return False
    if rule.destinations is not None and not _names(rule.destinations, action):
        return False
    if rule.outside_destinations is not None and (action.dest is None or
                                                  _names(rule.outside_destinations, action)):
        return False
    return True


def _names(dests, action: Action) -> bool:
    """The destination set names this connection's destination (address, port, protocol,
    or a name the session's DNS stub resolved to that address)."""
    if action.dest is None:
        return False
    ip, port, proto, names = action.dest
    if proto not in ("tcp", "udp"):
        return False
    return dests.decide(ip, port, proto, names).spec is not None


def _count(rule: CompiledRule, ctx: SessionContext) -> int:
    if rule.within_seconds is None:
        return ctx.rule_counts[rule.id]
    times = ctx.rule_times.get(rule.id)
    if not times:
        return 0
    horizon = time.monotonic() - rule.within_seconds
    while times and times[0] < horizon:
        times.popleft()
    return len(times)


def _matches(rule: CompiledRule, action: Action, ctx: SessionContext) -> bool:
    paths = action.paths
    if not paths:
        return False
    pre = rule.inside_prefixes
    if pre is not None and not any(p.startswith(pre) for p in paths):
        return False
    cover = rule.outside_cover
    if cover and all(p.startswith(cover) and _under_any(p, cover) for p in paths):
        return False
    if rule.exclude is not None:
        paths = tuple(p for p in paths if not rule.exclude.match(p))
        if not paths:
            return False
    if rule.inside is not None:
        paths = tuple(p for p in paths if rule.inside.match(p))
        if not paths:
            return False
    if rule.outside is not None:
        paths = tuple(p for p in paths if not rule.outside.match(p))
        if not paths:
            return False
    if rule.existed_at_start is not None:
        return any(ctx.existed_at_start(p) == rule.existed_at_start for p in paths)
    return True


def _under_any(path: str, dirs: tuple[str, ...]) -> bool:
    """path equals one of `dirs` or lies below it (not merely shares a string prefix)."""
    for d in dirs:
        if path.startswith(d) and (len(path) == len(d) or path[len(d)] == "/"):
            return True
    return False
