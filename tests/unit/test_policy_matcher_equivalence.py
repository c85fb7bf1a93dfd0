"""The native path matcher decides exactly as the regex engine it replaced.

`ReferenceEngine` is the engine before the matcher, kept verbatim (its decide, _matches
and _under_any), except that it tests every rule of the type: the old RuleIndex
pre-filter was meant to change no decision (tests/unit/test_policy.py checks that), and
it did change one, see test_a_dir_star_star_rule_matches_the_directory_itself_in_large_
profiles_too (now fixed in compiler.RuleIndex). Randomized profiles (globs with **, *, ?, regex metacharacters, spaces,
non-ASCII and surrogate-escaped characters; outside/except/existed_at_start/count_over/
session conditions) and actions are decided by both, and the decisions, the counted
rules and `trace` must be equal. Targeted tests pin the corner cases the matcher had to
get right.
"""
from __future__ import annotations

import random
import re
import time
from collections import deque

import pytest

from aarm_sandbox.actions.action import Action
from aarm_sandbox.context.session import SessionContext
from aarm_sandbox.policy import matcher as matcher_mod
from aarm_sandbox.policy.compiler import CompiledPolicy, CompiledRule, Placeholders, glob_to_regex
from aarm_sandbox.policy.decision import RANK, Result
from aarm_sandbox.policy.engine import PolicyEngine, _context_holds, _count
from aarm_sandbox.policy.loader import load_profile
from aarm_sandbox.policy.matcher import PathMatcher, build_path_matcher
from aarm_sandbox.policy.schema import Profile

try:
    from aarm_sandbox._native import lib as _lib
    HAVE_MATCHER = hasattr(_lib, "aarm_pm_new")
except ImportError:          # pragma: no cover - the native module is part of the build
    HAVE_MATCHER = False

needs_matcher = pytest.mark.skipif(not HAVE_MATCHER, reason="native module without aarm_pm_*")

# Placeholders with characters a regex or a glob would misread.
WS, TMP, HOME = "/w s/wörk[1]+", "/tmp/t$(x)", "/home/u.é"
FILE_TYPES = ["file.write", "file.create", "file.delete", "file.rename", "file.chmod", "file.link"]
TYPES = FILE_TYPES + ["process.exec", "net.connect"]


# ---- the engine before the path matcher, verbatim ----

class ReferenceEngine(PolicyEngine):
    def __init__(self, policy, **kw):
        super().__init__(policy, path_matcher=False, **kw)

    def decide(self, action: Action, ctx: SessionContext):
        t = action.type
        best: CompiledRule | None = None
        best_result = Result.ALLOW
        deferred = False
        rules = self.policy.rules_by_type[t]      # (the old engine: the index's candidates)
        for rule in rules:
            if rule.needs_paths and not _ref_matches(rule, action, ctx):
                continue
            if rule.needs_context and not _context_holds(rule, action, ctx):
                continue
            if rule.count_over is not None:
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

    def trace(self, action: Action, ctx: SessionContext):
        out = []
        for rule in self.policy.rules_by_type[action.type]:
            matched = (not rule.needs_paths or _ref_matches(rule, action, ctx)) and \
                (not rule.needs_context or _context_holds(rule, action, ctx))
            if matched and rule.count_over is not None and _count(rule, ctx) < rule.count_over:
                matched = False
            result = rule.result.value
            if rule.requires_context and not rule.requires_context <= ctx.facts.keys():
                result = f"defer (missing {', '.join(sorted(rule.requires_context))})"
            out.append((rule.id, result, matched))
        return out


def _ref_matches(rule, action, ctx) -> bool:
    paths = action.paths
    if not paths:
        return False
    pre = rule.inside_prefixes
    if pre is not None and not any(p.startswith(pre) for p in paths):
        return False
    cover = rule.outside_cover
    if cover and all(p.startswith(cover) and _ref_under_any(p, cover) for p in paths):
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


def _ref_under_any(path, dirs):
    for d in dirs:
        if path.startswith(d) and (len(path) == len(d) or path[len(d)] == "/"):
            return True
    return False


# ---- random profiles, paths and sessions ----

# Pieces of names: regex metacharacters, a space, non-ASCII (Latin-1, BMP, astral), the
# surrogates os.fsdecode makes of undecodable bytes, a newline.
WORDS = ["a", "b", "ab", "x.y", "(", ")", "+", "$", "^", "|", "\\", "{", "}", " ", "é", "日本",
         "\U0001F600", "\udcff", "\udc80", "[x]", ".", "-", "\n", "%", "İ", "ß", "a.b",
         ".git", "hooks", "src", "x"]
GLOB_WILDS = ["*", "?", "**", "*.ab", "a*", "?b", "*é*", "**.x", "[x]*"]


def rand_segment(rng: random.Random, wild: float) -> str:
    if rng.random() < wild:
        return rng.choice(GLOB_WILDS)
    return "".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))


def rand_glob(rng: random.Random) -> str:
    head = rng.choice(["/", "{workspace}/", "{tmpdir}/", "{home}/", "**/", "", "/a/"])
    segs = [rand_segment(rng, 0.35) for _ in range(rng.randint(0, 3))]
    g = head + "/".join(segs)
    r = rng.random()
    if r < 0.3:
        g = g.rstrip("/") + "/**"
    elif r < 0.35:
        g += "**"
    elif r < 0.4:
        g = g + "/" if not g.endswith("/") else g
    return g or "/"


def instantiate(rng: random.Random, glob: str) -> str:
    """A path the glob should match (often), built by filling its wildcards."""
    out, i = [], 0
    while i < len(glob):
        if glob.startswith("/**", i) and i + 3 == len(glob):
            out.append(rng.choice(["", "/", "/z", "/z/y", "/" + rand_segment(rng, 0)]))
            i += 3
        elif glob.startswith("**", i):
            out.append(rng.choice(["", "q", "q/r", "/", "a/b/c", rand_segment(rng, 0) + "/x"]))
            i += 2
        elif glob[i] == "*":
            out.append(rng.choice(["", "k", "kk", "é", "\udcff", rand_segment(rng, 0).replace("/", "")]))
            i += 1
        elif glob[i] == "?":
            out.append(rng.choice(["k", "/", "é", "\U0001F600", "\n", "\udc80"]))
            i += 1
        else:
            out.append(glob[i])
            i += 1
    p = "".join(out)
    r = rng.random()
    if r < 0.1 and p:
        p = p[:-1]
    elif r < 0.2:
        p += rng.choice(["/", "x", "/x", "é"])
    return p


def rand_paths_pool(rng: random.Random, globs: list[str], ph: Placeholders) -> list[str]:
    pool = [ph.expand(instantiate(rng, g)) for g in globs for _ in range(3)]
    pool += [ph.expand(g[:-3]) for g in globs if g.endswith("/**")]     # the directory itself
    pool += ["/" + "/".join(rand_segment(rng, 0) for _ in range(rng.randint(1, 4))) for _ in range(20)]
    pool += [WS, WS + "/f", TMP + "/x", HOME + "/.ssh/id", "/etc/passwd", "", "/", "//",
             "/a/" + "x" * 300]
    return pool


def rand_rule(rng: random.Random, i: int, globs: list[str], set_names: list[str]) -> dict:
    def some_globs(k: int) -> list[str]:
        picked = [rng.choice(globs) for _ in range(k)]
        if set_names and rng.random() < 0.3:
            picked.append(rng.choice(set_names))
        return picked

    kind = rng.random()
    decision = rng.choice(["allow", "deny", "step_up", "defer", "deny", "step_up"])
    rule: dict = {"id": f"r{i}", "decision": decision,
                  "actions": rng.choice([["file.*"], [rng.choice(FILE_TYPES)], FILE_TYPES[:3],
                                         ["process.exec"], ["file.*", "process.exec"],
                                         ["net.connect"], ["*"]])}
    if kind < 0.55:
        rule["paths"] = some_globs(rng.randint(1, 3))
    elif kind < 0.7:
        rule["outside"] = some_globs(rng.randint(1, 3))
    elif kind < 0.8:
        rule["paths"] = some_globs(1)
        rule["outside"] = some_globs(rng.randint(1, 2))
    if rng.random() < 0.25:
        rule["except"] = some_globs(rng.randint(1, 2))
    if rng.random() < 0.15:
        rule["existed_at_start"] = rng.random() < 0.5
    if rng.random() < 0.12:
        rule["count_over"] = rng.randint(0, 3)
        if rng.random() < 0.3:
            rule["within_seconds"] = 3600.0
    if rng.random() < 0.08:
        rule["session_has"] = ["pii"]
    if rng.random() < 0.08:
        rule["touches"] = ["pii"]
    if rng.random() < 0.06:
        rule["programs"] = ["/usr/bin/py*"]
    if rng.random() < 0.06:
        rule["requires_context"] = [rng.choice(["ticket", "window"])]
    if rng.random() < 0.05:
        rule["first_time"] = rng.random() < 0.5
    if rng.random() < 0.04 and rule["actions"] == ["file.delete"]:
        rule["decision"], rule["modify"] = "modify", "quarantine"
    return rule


def rand_profile(rng: random.Random, n_rules: int) -> tuple[Profile, list[str]]:
    globs = [rand_glob(rng) for _ in range(rng.randint(3, 14))]
    sets = {"s1": [rng.choice(globs) for _ in range(2)], "s2": ["{workspace}", "{workspace}/**"]}
    rules = [rand_rule(rng, i, globs, list(sets)) for i in range(n_rules)]
    data = {"id": "rand", "path_sets": sets, "rules": rules,
            "data_classes": {"pii": [rng.choice(globs)]},
            "defaults": rng.choice([{"*": "allow"}, {"*": "deny", "file.*": "allow"},
                                    {"*": "allow", "file.delete": "step_up"}])}
    if rng.random() < 0.2:
        data["settings"] = {"step_up": "deny"}
    return Profile.model_validate(data), globs


def rand_context(rng: random.Random, pool: list[str], policy: CompiledPolicy) -> SessionContext:
    ctx = SessionContext(session_id="eq")
    ctx.class_labels = policy.classes_of
    for p in rng.sample(pool, min(len(pool), 8)):
        (ctx.created_paths if rng.random() < 0.5 else ctx.removed_paths).add(p)
    for r in policy.profile.rules:
        if rng.random() < 0.5:
            ctx.rule_counts[r.id] = rng.randint(0, 5)
        if rng.random() < 0.3:
            ctx.rule_times[r.id] = deque([time.monotonic()] * rng.randint(0, 4))
    if rng.random() < 0.5:
        ctx.data_classes.add("pii")
    if rng.random() < 0.5:
        ctx.facts["ticket"] = "T-1"
    if rng.random() < 0.3:
        ctx.programs_seen.add("/usr/bin/git")
    return ctx


def rand_action(rng: random.Random, pool: list[str]) -> dict:
    t = rng.choice(TYPES)
    n = rng.choices([0, 1, 2, 3], weights=[1, 10, 3, 1])[0]
    paths = tuple(rng.choice(pool) for _ in range(n))
    return {"type": t, "target": paths[0] if paths else rng.choice(["/usr/bin/git", "10.0.0.1:443"]),
            "syscall": "t", "pid": 1, "tid": 1, "paths": paths,
            "exe": rng.choice(["", "/usr/bin/python3", None, "/bin/sh"]),
            "detail": {"argv": ["git", "push"]} if t == "process.exec" else {}}


def _both(engine: PolicyEngine, ref: ReferenceEngine, spec: dict, ctx: SessionContext, where: str):
    a_new, a_ref = Action(**spec), Action(**spec)
    want = ref.decide(a_ref, ctx)
    got = engine.decide(a_new, ctx)
    assert got == want, (where, spec)
    assert a_new.counted == a_ref.counted, (where, spec)
    again = Action(**spec)
    assert engine.decide(again, ctx) == want, ("memo", where, spec)
    assert engine.trace(Action(**spec), ctx) == ref.trace(Action(**spec), ctx), (where, spec)


def _differential(seed: int, profiles: int, actions: int) -> int:
    """Decide random actions with the new engine (matcher, and without it: the regexes
    behind the fixed RuleIndex) and the reference; returns how many were compared."""
    rng = random.Random(seed)
    ph = Placeholders(WS, TMP, HOME)
    checked = 0
    for k in range(profiles):
        profile, globs = rand_profile(rng, rng.randint(1, 30))
        policy = CompiledPolicy(profile, ph)
        flags = {"observe": rng.random() < 0.15, "hold_step_up": rng.random() < 0.5,
                 "hold_defer": rng.random() < 0.5}
        engine = PolicyEngine(policy, **flags)
        regexes = PolicyEngine(policy, path_matcher=False, **flags)
        ref = ReferenceEngine(policy, **flags)
        pool = rand_paths_pool(rng, globs + [g for r in profile.rules for g in r.paths], ph)
        ctx = rand_context(rng, pool, policy)
        for _ in range(actions):
            spec = rand_action(rng, pool)
            _both(engine, ref, spec, ctx, f"seed {seed} profile {k}")
            _both(regexes, ref, spec, ctx, f"regexes: seed {seed} profile {k}")
            checked += 1
    return checked


@needs_matcher
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_native_matcher_decides_like_the_reference_engine(seed):
    assert _differential(seed, profiles=40, actions=60) == 2400


def test_without_the_matcher_the_engine_decides_like_the_reference(monkeypatch):
    """No native matcher (module not built, or built before it): the regex path, same answers."""
    monkeypatch.setattr(matcher_mod, "build_path_matcher", lambda rules: None)
    assert _differential(11, profiles=15, actions=40) == 600


@needs_matcher
def test_a_starved_dfa_flushes_or_falls_back_and_still_decides_alike(monkeypatch):
    """A DFA budget too small for a path: the cache is flushed, then the matcher gives up
    (-1) and the regexes decide; never 'no match'."""
    monkeypatch.setattr(matcher_mod, "DFA_BUDGET", 3000)
    assert _differential(21, profiles=15, actions=40) == 600


# ---- the matcher itself against Python's regex, pattern by pattern ----

def _regex_of(globs) -> re.Pattern:
    return re.compile("(?:" + "|".join(glob_to_regex(g) for g in globs) + r")\Z", re.S)


@needs_matcher
def test_each_pattern_matches_exactly_where_its_python_regex_does():
    rng = random.Random(7)
    checked = 0
    for _ in range(60):
        globs = [rand_glob(rng) for _ in range(rng.randint(1, 12))]
        groups = [rng.sample(globs, rng.randint(1, min(3, len(globs)))) for _ in range(rng.randint(1, 6))]
        rules = [CompiledRule(id=f"r{i}", result=Result.DENY, reason="", errno=0, inside=_regex_of(g),
                              outside=None, exclude=None, existed_at_start=None, count_over=None,
                              index=i, inside_prefixes=("",) * len(g), inside_globs=tuple(g))
                 for i, g in enumerate(groups)]
        m = PathMatcher(rules)
        pool = [instantiate(rng, g) for g in globs for _ in range(6)] + \
               [g[:-3] for g in globs if g.endswith("/**")]
        for p in pool:
            got = m.accepted(m.accept_id(p))
            for rule in rules:
                assert (m.conditions[rule.index][0] in got) == bool(rule.inside.match(p)), (rule.inside_globs, p)
                checked += 1
    assert checked > 3000


@needs_matcher
@pytest.mark.parametrize("glob,path,ok", [
    ("/a/**", "/a", True), ("/a/**", "/a/b/c", True), ("/a/**", "/ab", False),
    ("/a/*", "/a/b", True), ("/a/*", "/a/b/c", False), ("/a/?", "/a/b", True),
    ("/a/?", "/a/\U0001F600", True), ("/a/?", "/a/\udcff", True), ("/a/?", "/a/é", True),
    ("/a/?", "/a/\n", True), ("/a/*", "/a/x\ny", True), ("/a.b", "/aXb", False),
    ("/a[x]", "/a[x]", True), ("/a[x]", "/ax", False), ("/a(b|c)", "/ab", False),
    ("/a(b|c)", "/a(b|c)", True), ("/\\d", "/\\d", True), ("/\\d", "/1", False),
    ("/\udcff*", "/\udcffé", True), ("/é*", "/\udcc3\udca9", False),
    ("**/*.sample", "/w/.git/hooks/pre-commit.sample", True), ("pipe:*", "pipe:[123]", True),
    ("/x/**/y", "/x/y", False), ("/x/**/y", "/x//y", True), ("/**", "", True), ("/**", "/", True),
    ("", "", True), ("", "/", False), ("/a\x00b", "/a\x00b", True),
])
def test_glob_corner_cases(glob, path, ok):
    assert bool(_regex_of([glob]).match(path)) is ok            # the reference itself
    rule = CompiledRule(id="r", result=Result.DENY, reason="", errno=0, inside=_regex_of([glob]),
                        outside=None, exclude=None, existed_at_start=None, count_over=None, index=0,
                        inside_prefixes=("",), inside_globs=(glob,))
    m = PathMatcher([rule])
    assert (m.conditions[0][0] in m.accepted(m.accept_id(path))) is ok


# ---- targeted engine cases ----

def _policy(rules: list[dict], **extra) -> CompiledPolicy:
    data = {"id": "t", "rules": rules, **extra}
    return CompiledPolicy(Profile.model_validate(data), Placeholders(WS, TMP, HOME))


def _act(t: str, *paths: str) -> Action:
    return Action(t, paths[0] if paths else "", "t", 1, 1, paths=tuple(paths))


@needs_matcher
def test_dir_star_star_covers_the_directory_itself():
    """`/d/**` matches `/d` (its regex always did; the prefix pre-test was `/d/`, so a deny
    rule on `/d/**` let `mv /d elsewhere` carry the whole protected tree out). Now the
    pre-test is `/d`: the directory itself is covered, in both engines alike."""
    pol = _policy([{"id": "d", "actions": ["file.*"], "paths": ["/d/**"], "except": ["/d/x"],
                    "decision": "deny"}])
    e, ref, ctx = PolicyEngine(pol), ReferenceEngine(pol), SessionContext("s")
    for paths in [("/d",), ("/d/x",), ("/d", "/d/x"), ("/d/x", "/d"), ("/d/y",), ("/e", "/d/x")]:
        a = _act("file.rename", *paths)
        assert e.decide(a, ctx) == ref.decide(_act("file.rename", *paths), ctx), paths
    assert e.decide(_act("file.write", "/d"), ctx).rule == "d"
    assert e.decide(_act("file.rename", "/d", "/e"), ctx).rule == "d"
    assert e.decide(_act("file.rename", "/d", "/d/x"), ctx).rule == "d"
    assert e.decide(_act("file.write", "/dx"), ctx).rule == "default"


@needs_matcher
def test_existed_at_start_is_asked_of_the_surviving_paths_in_order():
    pol = _policy([{"id": "old", "actions": ["file.*"], "paths": ["/p/**"], "except": ["/p/skip"],
                    "existed_at_start": True, "decision": "deny"}])
    asked: list[str] = []

    class Ctx(SessionContext):
        def existed_at_start(self, path):
            asked.append(path)
            return path == "/p/b"

    e, ctx = PolicyEngine(pol), Ctx("s")
    assert e.decide(_act("file.rename", "/p/skip", "/p/a", "/q", "/p/b"), ctx).rule == "old"
    assert asked == ["/p/a", "/p/b"]
    asked.clear()
    assert e.decide(_act("file.rename", "/p/skip", "/p/a"), ctx).rule == "default"
    assert asked == ["/p/a"]


@needs_matcher
def test_an_error_inside_matching_propagates():
    """Fail closed: the supervisor turns an exception from decide into a deny."""
    pol = _policy([{"id": "old", "actions": ["file.*"], "paths": ["/p/**"],
                    "existed_at_start": True, "decision": "deny"}])

    class Ctx(SessionContext):
        def existed_at_start(self, path):
            raise OSError("boom")

    with pytest.raises(OSError):
        PolicyEngine(pol).decide(_act("file.write", "/p/a"), Ctx("s"))
    with pytest.raises((AttributeError, TypeError)):   # not a str path (the regexes: TypeError)
        PolicyEngine(pol).decide(_act("file.write", b"/p/a"), SessionContext("s"))


@needs_matcher
def test_counted_rules_are_reported_in_profile_order_every_time():
    pol = _policy([{"id": "c1", "actions": ["file.delete"], "paths": ["/w/**"], "count_over": 2,
                    "decision": "step_up"},
                   {"id": "all", "actions": ["file.delete"], "paths": ["/**"], "decision": "deny"},
                   {"id": "c2", "actions": ["file.delete"], "paths": ["**/*.x"], "count_over": 0,
                    "decision": "step_up"}])
    e, ctx = PolicyEngine(pol), SessionContext("s")
    for _ in range(3):
        a = _act("file.delete", "/w/f.x")
        assert e.decide(a, ctx).rule == "all"
        assert a.counted == ["c1", "c2"]


@needs_matcher
def test_hold_settings_changed_after_a_decision_take_effect():
    """run.py sets hold_step_up/hold_defer once the approver is known: decisions memoised
    before that are forgotten."""
    pol = _policy([{"id": "s", "actions": ["file.write"], "paths": ["/s/**"], "decision": "step_up"}])
    e, ctx = PolicyEngine(pol), SessionContext("s")
    assert e.decide(_act("file.write", "/s/a"), ctx).result is Result.DENY
    e.hold_step_up = True
    assert e.decide(_act("file.write", "/s/a"), ctx).result is Result.STEP_UP
    e.observe = True
    assert e.decide(_act("file.write", "/s/a"), ctx).result is Result.ALLOW


@needs_matcher
def test_a_dfa_budget_too_small_for_any_path_sends_every_path_to_the_regexes(monkeypatch):
    monkeypatch.setattr(matcher_mod, "DFA_BUDGET", 300)
    pol = _policy([{"id": "d", "actions": ["file.*"], "paths": ["**/*.secret"], "decision": "deny"}])
    e, ref, ctx = PolicyEngine(pol), ReferenceEngine(pol), SessionContext("s")
    calls = []
    slow = e._decide_slow
    monkeypatch.setattr(e, "_decide_slow", lambda a, c: calls.append(a) or slow(a, c))
    for p in ["/a/b.secret", "/a/b.secrex", "/a/é.secret"]:
        assert e.decide(_act("file.write", p), ctx) == ref.decide(_act("file.write", p), ctx)
    assert len(calls) == 3
    assert pol.path_matcher.stats()["flushes"] >= 3


@needs_matcher
def test_a_full_dfa_cache_is_flushed_and_the_walk_starts_again(monkeypatch):
    monkeypatch.setattr(matcher_mod, "DFA_BUDGET", 6000)
    rules = [{"id": f"r{i}", "actions": ["file.write"], "paths": [f"/d{i}/**", f"**/*.s{i}"],
              "decision": rng_decision} for i, rng_decision in
             zip(range(12), ["deny", "step_up", "allow"] * 4)]
    pol = _policy(rules)
    e, ref, ctx = PolicyEngine(pol), ReferenceEngine(pol), SessionContext("s")
    for i in range(12):
        for j in range(12):
            p = f"/d{i}/sub{j}/f.s{j}"
            assert e.decide(_act("file.write", p), ctx) == ref.decide(_act("file.write", p), ctx)
    stats = pol.path_matcher.stats()
    assert stats["flushes"] >= 1 and stats["bytes"] <= 6000


@needs_matcher
def test_many_distinct_accept_sets_restart_the_memo(monkeypatch):
    monkeypatch.setattr("aarm_sandbox.policy.engine._MEMO_LIMIT", 5)
    rules = [{"id": f"r{i}", "actions": ["file.write"], "paths": [f"/d{i}/**"], "decision": "deny"}
             for i in range(20)]
    pol = _policy(rules)
    e, ref, ctx = PolicyEngine(pol), ReferenceEngine(pol), SessionContext("s")
    for i in range(20):
        for p in (f"/d{i}/x", f"/d{i}x"):
            assert e.decide(_act("file.write", p), ctx) == ref.decide(_act("file.write", p), ctx)
    assert len(e._types["file.write"].plans) <= 5


@needs_matcher
def test_the_default_profile_matcher_is_cheap_to_build():
    """Built on the first decision with a path, in well under the 5 ms startup budget."""
    pol = CompiledPolicy(load_profile("default").profile, Placeholders(WS, TMP, HOME))
    rules = {r.index: r for rs in pol.rules_by_type.values() for r in rs}
    t0 = time.perf_counter()
    m = build_path_matcher(list(rules.values()))
    elapsed = time.perf_counter() - t0
    assert m is not None
    assert elapsed < 0.05, elapsed          # ~1 ms measured; generous for a loaded machine


def test_the_path_matcher_is_built_only_on_first_use():
    pol = CompiledPolicy(load_profile("default").profile, Placeholders(WS, TMP, HOME))
    assert not pol.path_matcher_built
    e = PolicyEngine(pol)
    e.decide(_act("dns.query"), SessionContext("s"))             # no path rule: nothing built
    assert not pol.path_matcher_built
    e.decide(_act("process.exec", "/bin/true"), SessionContext("s"))
    assert pol.path_matcher_built and (pol.path_matcher is not None) is HAVE_MATCHER


@needs_matcher
def test_a_dir_star_star_rule_matches_the_directory_itself_in_large_profiles_too():
    """Paths ["*.py", "/h/u/**"]: "/h/u" matches "/h/u/**" (a final /** matches the directory
    itself) and starts with the prefix of "*.py" (""), so the rule matches, as `trace` and
    the types with at most 8 rules always said. The old RuleIndex (types with more than 8
    rules) did not offer the rule for "/h/u" at all: a deny rule that did not deny."""
    filler = [{"id": f"f{i}", "actions": ["file.write"], "paths": [f"/f{i}/**"], "decision": "allow"}
              for i in range(9)]
    pol = _policy(filler + [{"id": "d", "actions": ["file.write"], "paths": ["*.py", "/h/u/**"],
                             "decision": "deny"}])
    ctx = SessionContext("s")
    assert "d" in [r.id for r in pol.index_by_type["file.write"].candidates(("/h/u",))]
    for native in (True, False):
        e = PolicyEngine(pol, path_matcher=native)
        assert e.decide(_act("file.write", "/h/u"), ctx).rule == "d"
        assert ("d", "deny", True) in e.trace(_act("file.write", "/h/u"), ctx)
        assert e.decide(_act("file.write", "/h/v"), ctx).rule == "default"


@needs_matcher
def test_threads_matching_at_once_get_their_own_answers():
    """The native calls release the GIL: the DFA is shared under a mutex (with flushes
    under a small budget), and every thread reads back the accept set it asked for (a
    shared result buffer once poisoned the accept-set cache)."""
    import threading
    rng = random.Random(5)
    globs = [rand_glob(rng) for _ in range(30)]
    groups = [rng.sample(globs, 3) for _ in range(20)]
    rules = [CompiledRule(id=f"r{i}", result=Result.DENY, reason="", errno=0, inside=_regex_of(g),
                          outside=None, exclude=None, existed_at_start=None, count_over=None, index=i,
                          inside_prefixes=("",) * 3, inside_globs=tuple(g)) for i, g in enumerate(groups)]
    paths = [instantiate(rng, rng.choice(globs)) for _ in range(300)]
    want = {p: frozenset(r.index for r in rules if r.inside.match(p)) for p in paths}
    wrong: list[str] = []
    for _ in range(15):
        m = PathMatcher(rules, 20000)           # fresh caches: every thread starts on misses
        start = threading.Barrier(4)

        def work(seed: int) -> None:
            order = random.Random(seed).sample(paths, len(paths))
            start.wait()
            for p in order:
                a = m.accept_id(p)
                if a >= 0 and frozenset(x.index for x in rules
                                        if m.conditions[x.index][0] in m.accepted(a)) != want[p]:
                    wrong.append(p)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert wrong == []


@needs_matcher
def test_path_rules_without_globs_still_get_a_matcher():
    """Only existed_at_start: a path condition with no glob (every path passes it)."""
    pol = _policy([{"id": "old", "actions": ["file.write"], "existed_at_start": True,
                    "decision": "deny"}])
    e, ctx = PolicyEngine(pol), SessionContext("s")
    assert e.decide(_act("file.write", "/"), ctx).rule == "old"            # "/" exists
    assert e.decide(_act("file.write", "/no/such/path"), ctx).rule == "default"
    assert pol.path_matcher is not None and pol.path_matcher.npatterns == 1
