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
TYPE_CHECKING = False      # (typing costs ~3.5 ms of every run's startup)

from aarm_sandbox.actions.action import Action
from aarm_sandbox.context.session import SessionContext
from aarm_sandbox.policy.compiler import CompiledPolicy, CompiledRule, default_errno
from aarm_sandbox.policy.decision import RANK, Decision, Result

if TYPE_CHECKING:
    from aarm_sandbox.policy.matcher import PathMatcher

NO_APPROVER = "no approver available; run in a terminal or with --approver socket"


_MEMO_LIMIT = 4096          # plans per action type kept before the memo starts over
_NO_PATHS = -2              # memo key: no path condition can apply (no path, or no path rule)


class _Plan:
    """What is left of a decision once the paths' matches are known: the best rule among
    those that match whatever the session holds (`best`, its rank), and, in profile order,
    the rules whose match still depends on the session (existed_at_start, context,
    counts, required context) with, for existed_at_start, the positions of the paths
    that passed their path conditions."""
    __slots__ = ("best", "rank", "dynamic")

    def __init__(self, best: CompiledRule | None, rank: int,
                 dynamic: tuple[tuple[CompiledRule, tuple[int, ...] | None], ...]):
        self.best, self.rank, self.dynamic = best, rank, dynamic


class _TypeState:
    """One action type's rules, the path matcher when they have path conditions, and the
    engine's memo of what each accept-set id (or tuple of ids, for several paths)
    decides for this type."""
    __slots__ = ("type", "rules", "conditions", "matcher", "match", "handle", "slow", "plans",
                 "decided", "by_inside", "unindexed")

    def __init__(self, type_: str, rules: tuple[CompiledRule, ...], matcher: PathMatcher | None,
                 slow: bool):
        self.type, self.rules, self.matcher, self.slow = type_, rules, matcher, slow
        self.match = matcher.match if matcher is not None else None
        self.handle = matcher.handle if matcher is not None else None
        self.conditions = tuple(matcher.conditions[r.index] for r in rules) \
            if matcher is not None else (None,) * len(rules)
        # A plan looks only at the rules a path can have matched: those whose inside
        # pattern it matched, and those without one (no path condition, or only outside/
        # except/existed_at_start). Positions in `rules`.
        self.by_inside: dict[int, list[int]] = {}
        unindexed = []
        for pos, cond in enumerate(self.conditions):
            if cond is None or cond[0] < 0:
                unindexed.append(pos)
            else:
                self.by_inside.setdefault(cond[0], []).append(pos)
        self.unindexed = tuple(unindexed)
        self.plans: dict[object, _Plan] = {}
        self.decided: dict[object, Decision] = {}     # keys whose plan needs no session


class _DecisionSetting:
    """An engine setting that memoised decisions depend on: setting it forgets them."""

    def __init__(self, attr: str):
        self.attr = attr

    def __get__(self, engine, _owner=None):
        return self if engine is None else getattr(engine, self.attr)

    def __set__(self, engine, value) -> None:
        setattr(engine, self.attr, value)
        engine._forget_decisions()


class PolicyEngine:
    def __init__(self, policy: CompiledPolicy, *, observe: bool = False,
                 hold_step_up: bool = False, hold_defer: bool = False, path_matcher: bool = True):
        self.policy = policy
        self._observe = observe
        self.step_up_denies = policy.profile.settings.step_up == "deny"
        self._hold_step_up = hold_step_up and not self.step_up_denies
        self._hold_defer = hold_defer
        self._final: dict[tuple[int, str, bool], Decision] = {}   # (rule index | -1, type, deferred)
        self._use_matcher = path_matcher
        self._types: dict[str, _TypeState] = {}

    # The finished decisions depend on these: changing one forgets them.
    observe = _DecisionSetting("_observe")
    hold_step_up = _DecisionSetting("_hold_step_up")
    hold_defer = _DecisionSetting("_hold_defer")

    def _forget_decisions(self) -> None:
        self._final.clear()
        for st in self._types.values():
            st.decided.clear()

    def decide(self, action: Action, ctx: SessionContext) -> Decision:
        """The decision for one action: its paths are matched against every path condition
        of the type's rules in one native pass; the accept-set id that comes back keys a
        memo of what the match decides (the session-dependent rules, if any, are then
        evaluated for this action alone)."""
        st = self._types.get(action.type)
        if st is None:
            st = self._type_state(action.type)
        paths = action.paths
        match = st.match
        if match is not None and len(paths) == 1:
            p = paths[0]
            if p.isascii():
                key = match(st.handle, p.encode(), len(p), 1)
            else:
                key = match(st.handle, p.encode("utf-32-le", "surrogatepass"), len(p), 4)
        elif st.slow:
            return self._decide_slow(action, ctx)
        elif match is None or not paths:
            key = _NO_PATHS
        else:
            key = _many_paths_key(st.matcher, paths)
        d = st.decided.get(key)
        if d is not None:
            return d
        if key == -1:                               # the matcher could not answer
            return self._decide_slow(action, ctx)
        plan = st.plans.get(key)
        if plan is None:
            plan = self._plan(st, key)
            if len(st.plans) >= _MEMO_LIMIT:
                st.plans.clear()
                st.decided.clear()
            st.plans[key] = plan
            if not plan.dynamic:
                d = st.decided[key] = self._final_decision(plan.best, st.type, False)
                return d
        return self._run_plan(plan, action, ctx)

    def _type_state(self, t: str) -> _TypeState:
        rules = self.policy.rules_by_type[t]
        matcher = None
        slow = False
        if any(r.needs_paths for r in rules):
            matcher = path_matcher_for(self.policy) if self._use_matcher else None
            slow = matcher is None
        st = self._types[t] = _TypeState(t, rules, matcher, slow)
        return st

    def _plan(self, st: _TypeState, key: object) -> _Plan:
        """Sort the type's rules by what the matched paths leave open."""
        if key == _NO_PATHS:
            accepted: list[frozenset[int]] = []
        elif isinstance(key, tuple):
            accepted = [st.matcher.accepted(k) for k in key]
        else:
            accepted = [st.matcher.accepted(key)]
        candidates = set(st.unindexed)
        by_inside = st.by_inside
        for a in accepted:
            for pid in a:
                hit = by_inside.get(pid)
                if hit:
                    candidates.update(hit)
        rules, conditions = st.rules, st.conditions
        best: CompiledRule | None = None
        best_rank = len(RANK)
        dynamic: list[tuple[CompiledRule, tuple[int, ...] | None]] = []
        for pos in sorted(candidates):                 # profile order
            rule = rules[pos]
            survivors = None
            if rule.needs_paths:
                if not accepted:
                    continue
                inside, exclude, outside = conditions[pos]
                survivors = tuple(i for i, a in enumerate(accepted)
                                  if (inside < 0 or inside in a) and (exclude < 0 or exclude not in a)
                                  and (outside < 0 or outside not in a))
                if not survivors:
                    continue
                if rule.existed_at_start is None:
                    survivors = None
            if survivors is not None or rule.needs_context or rule.count_over is not None or \
                    rule.requires_context:
                dynamic.append((rule, survivors))
                continue
            rank = RANK[rule.result]
            if rank < best_rank:
                best, best_rank = rule, rank
        return _Plan(best, best_rank, tuple(dynamic))

    def _run_plan(self, plan: _Plan, action: Action, ctx: SessionContext) -> Decision:
        """The session-dependent rules of a plan, in profile order (as _decide_slow would
        evaluate them: same side effects on action.counted and the count windows)."""
        best, best_rank, deferred = plan.best, plan.rank, False
        paths = action.paths
        for rule, survivors in plan.dynamic:
            if survivors is not None:
                want = rule.existed_at_start
                if not any(ctx.existed_at_start(paths[i]) == want for i in survivors):
                    continue
            result, missing = _session_result(rule, action, ctx)
            if result is None:
                continue
            rank = RANK[result]
            # profile order decides ties: an earlier rule keeps its place
            if best is None or rank < best_rank or (rank == best_rank and rule.index < best.index):
                best, best_rank, deferred = rule, rank, missing
        return self._final_decision(best, action.type, deferred)

    def _final_decision(self, best: CompiledRule | None, t: str, deferred: bool) -> Decision:
        key = (best.index if best is not None else -1, t, deferred)
        d = self._final.get(key)
        if d is None:
            d = self._final[key] = self._finalise(best, t, deferred)
        return d

    def _decide_slow(self, action: Action, ctx: SessionContext) -> Decision:
        """Every candidate rule tested with its Python regexes: the engine before the path
        matcher, kept for what the matcher cannot take (no native module, a path too long
        for its DFA budget)."""
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
            result, missing = _session_result(rule, action, ctx)
            if result is None:
                continue
            if best is None or RANK[result] < RANK[best_result]:
                best, best_result, deferred = rule, result, missing
        return self._final_decision(best, t, deferred)

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
                                modify=best.modify,
                                params=(best.append_args if best.modify == "append_args"
                                        else best.env_remove), hold=best.hold)
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


def path_matcher_for(policy: CompiledPolicy) -> PathMatcher | None:
    """The policy's path matcher (None: decide with the regexes), built on the first
    decision that has paths to match (startup pays nothing) and shared by every engine on
    the policy."""
    if getattr(policy, "path_matcher_built", False):
        return policy.path_matcher
    from aarm_sandbox.policy import matcher as matcher_mod    # (off the import path of startup)
    rules = {r.index: r for rs in policy.rules_by_type.values() for r in rs}
    matcher = matcher_mod.build_path_matcher([rules[i] for i in sorted(rules)])
    policy.path_matcher, policy.path_matcher_built = matcher, True
    return matcher


def _many_paths_key(matcher: PathMatcher, paths) -> tuple[int, ...] | int:
    """The memo key of an action with several paths: their accept-set ids, or -1 when the
    matcher cannot answer for one of them."""
    ids = []
    for p in paths:
        k = matcher.accept_id(p)
        if k < 0:
            return -1
        ids.append(k)
    return tuple(ids)


def _session_result(rule: CompiledRule, action: Action,
                    ctx: SessionContext) -> tuple[Result | None, bool]:
    """What a rule whose path conditions hold yields given the session: (None, False) when
    its context or count conditions do not hold; (DEFER, True) when it needs context the
    session lacks. A counted rule is noted on the action (Supervisor._track counts it once
    the action really happened)."""
    if rule.needs_context and not _context_holds(rule, action, ctx):
        return None, False
    if rule.count_over is not None:
        if action.counted is None:
            action.counted = []
        action.counted.append(rule.id)
        if _count(rule, ctx) < rule.count_over:
            return None, False
    if rule.requires_context and not rule.requires_context <= ctx.facts.keys():
        return Result.DEFER, True
    return rule.result, False


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
