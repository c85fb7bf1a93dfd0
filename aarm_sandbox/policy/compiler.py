"""Compile a validated Profile into per-action-type rule lists with one regex per condition.

Per decision the engine does a dict lookup by action type and, for each candidate rule, at
most a few `re.match` calls on already-canonical paths: no pydantic, no fnmatch loops.
"""
from __future__ import annotations

import errno as errno_mod
import fnmatch
import os
import re

from aarm_sandbox.actions.action import ALL_TYPES
from aarm_sandbox.policy.decision import Hold, Result
from aarm_sandbox.records import FrozenRecord


class Placeholders(FrozenRecord):
    __slots__ = ("workspace", "tmpdir", "home")

    def __init__(self, workspace: str, tmpdir: str, home: str):
        setattr_ = object.__setattr__
        setattr_(self, "workspace", workspace)
        setattr_(self, "tmpdir", tmpdir)
        setattr_(self, "home", home)

    def expand(self, pattern: str) -> str:
        return (pattern.replace("{workspace}", self.workspace)
                .replace("{tmpdir}", self.tmpdir).replace("{home}", self.home))


# Tokens of a parsed glob (glob_tokens): what each piece matches.
GLOB_LITERAL = "lit"        # these characters (a run of one or more)
GLOB_ONE = "one"            # `?`: one character but "/"
GLOB_STAR = "star"          # `*`: any run of characters without "/"
GLOB_ANY = "any"            # `**`: any run of characters
GLOB_TAIL = "tail"          # a final "/**": nothing, or "/" and then anything

_GLOB_WILDCARD = re.compile(r"\*\*|\*|\?")


def glob_tokens(glob: str) -> list[tuple[str, str]]:
    """The one parse of a policy glob, shared by the Python regex (glob_to_regex) and the
    native path matcher (policy/matcher.py) so the two can never read a glob differently.
    `**` crosses directories, `*` and `?` stay within one component, a final "/**" also
    matches the directory itself; every other character is itself (`[` included)."""
    out: list[tuple[str, str]] = []
    pos = 0
    for m in _GLOB_WILDCARD.finditer(glob):
        if m.start() > pos:
            out.append((GLOB_LITERAL, glob[pos:m.start()]))
        wild = m.group()
        if wild == "**":
            if m.end() == len(glob) and out and out[-1][0] == GLOB_LITERAL and out[-1][1].endswith("/"):
                # "/**" matches the directory itself and everything below it.
                run = out.pop()[1][:-1]
                if run:
                    out.append((GLOB_LITERAL, run))
                out.append((GLOB_TAIL, ""))
            else:
                out.append((GLOB_ANY, ""))
        else:
            out.append((GLOB_STAR if wild == "*" else GLOB_ONE, ""))
        pos = m.end()
    if pos < len(glob):
        out.append((GLOB_LITERAL, glob[pos:]))
    return out


_REGEX_OF_TOKEN = {GLOB_ONE: "[^/]", GLOB_STAR: "[^/]*", GLOB_ANY: ".*", GLOB_TAIL: "(?:/.*)?"}


def glob_to_regex(glob: str) -> str:
    """`**` crosses directories, `*` and `?` stay within one component; byte-exact otherwise."""
    return "".join(re.escape(text) if kind == GLOB_LITERAL else _REGEX_OF_TOKEN[kind]
                   for kind, text in glob_tokens(glob))


class LazyRegex:
    """Compiled on first match: startup should not pay for rules a session never meets."""
    __slots__ = ("source", "_re")

    def __init__(self, source: str):
        self.source = source
        self._re = None

    def match(self, s: str):
        r = self._re
        if r is None:
            r = self._re = re.compile(self.source, re.S)
        return r.match(s)


def literal_prefix(glob: str) -> str:
    """The text before the first wildcard of `glob`."""
    for i, c in enumerate(glob):
        if c in "*?[":
            return glob[:i]
    return glob


def match_prefix(glob: str) -> str:
    """The text every path `glob` matches starts with: its literal prefix, except that a
    final "/**" also matches the directory itself ("D/**" matches D: prefix "D")."""
    return literal_prefix(glob[:-3] if glob.endswith("/**") else glob)


class RuleIndex:
    """The rules of one action type that could match a path, found in O(path depth): a
    rule's `paths` globs are indexed by their literal directory prefix (the path's
    ancestors are looked up), exact path, other literal prefix, or literal suffix; rules
    without `paths`, or with a glob that has no literal part, are always candidates.
    Candidates keep profile order (ties go to the earlier rule). A glob "D/**" also
    matches D itself, which has no ancestor "D/": D is indexed as an exact path too."""
    __slots__ = ("by_dir", "by_exact", "by_prefix", "by_suffix", "always", "suffixes", "prefixes")

    def __init__(self, entries: list[tuple[CompiledRule, list[str]]]):
        by_dir: dict[str, set] = {}
        by_exact: dict[str, set] = {}
        by_prefix: dict[str, set] = {}
        by_suffix: dict[str, set] = {}
        always: set = set()
        for rule, globs in entries:
            if not globs:
                always.add(rule)
                continue
            for g in globs:
                pre = literal_prefix(g)
                if pre == g:
                    by_exact.setdefault(g, set()).add(rule)
                elif "/" in pre:
                    by_dir.setdefault(pre[:pre.rfind("/") + 1], set()).add(rule)
                    if g.endswith("/**") and pre == g[:-2]:
                        by_exact.setdefault(g[:-3], set()).add(rule)
                elif pre:
                    by_prefix.setdefault(pre, set()).add(rule)
                elif _literal_suffix(g):
                    by_suffix.setdefault(_literal_suffix(g), set()).add(rule)
                else:
                    always.add(rule)
        self.by_dir, self.by_exact = by_dir, by_exact
        self.by_prefix, self.by_suffix = by_prefix, by_suffix
        self.prefixes, self.suffixes = tuple(by_prefix), tuple(by_suffix)
        self.always = frozenset(always)

    def candidates(self, paths: tuple[str, ...]) -> list:
        found = set(self.always)
        by_dir, by_exact = self.by_dir, self.by_exact
        for path in paths:
            hit = by_exact.get(path)
            if hit:
                found |= hit
            if self.suffixes and path.endswith(self.suffixes):
                for suf, rules in self.by_suffix.items():
                    if path.endswith(suf):
                        found |= rules
            if self.prefixes and path.startswith(self.prefixes):
                for pre, rules in self.by_prefix.items():
                    if path.startswith(pre):
                        found |= rules
            i = path.find("/")
            while i >= 0:
                hit = by_dir.get(path[:i + 1])
                if hit:
                    found |= hit
                i = path.find("/", i + 1)
        return sorted(found, key=_rule_index)


class _RuleIndexes(dict):
    """Action type -> RuleIndex of its rules, each made on first lookup."""

    def __init__(self, rules_by_type: dict[str, tuple[CompiledRule, ...]]):
        super().__init__()
        self._rules_by_type = rules_by_type

    def __missing__(self, t: str) -> RuleIndex:
        index = self[t] = RuleIndex([(c, list(c.inside_globs)) for c in self._rules_by_type[t]])
        return index


def _rule_index(rule) -> int:
    return rule.index


def _literal_suffix(glob: str) -> str:
    for i in range(len(glob) - 1, -1, -1):
        if glob[i] in "*?[]":
            return glob[i + 1:]
    return glob


class CompiledRule(FrozenRecord):
    """One profile rule, compiled: what the engine tests per action (a plain record, see
    aarm_sandbox.records: a frozen dataclass pulled `dataclasses` and `inspect` into every
    run's startup, ~11 ms)."""
    __slots__ = ("id", "result", "reason", "errno", "inside", "outside", "exclude",
                 "existed_at_start", "count_over", "index", "inside_prefixes",
                 "outside_cover", "needs_paths", "modify", "session_has", "leaves_sandbox",
                 "within_seconds", "first_time", "needs_context", "requires_context",
                 "env_remove", "append_args", "programs", "argv", "touches", "destinations",
                 "outside_destinations", "hold", "inside_globs", "outside_globs",
                 "exclude_globs")

    def __init__(self, id: str, result: Result, reason: str, errno: int,
                 inside: LazyRegex | None, outside: LazyRegex | None,
                 exclude: LazyRegex | None, existed_at_start: bool | None,
                 count_over: int | None, index: int, *,
                 inside_prefixes: tuple[str, ...] | None = None,
                 outside_cover: tuple[str, ...] = (),
                 needs_paths: bool = True,
                 modify: str | None = None,
                 session_has: frozenset = frozenset(),
                 leaves_sandbox: bool | None = None,
                 within_seconds: float | None = None,
                 first_time: bool | None = None,
                 needs_context: bool = False,
                 requires_context: frozenset = frozenset(),
                 env_remove: tuple = (),
                 append_args: tuple = (),
                 programs: tuple = (),
                 argv: str | None = None,
                 touches: tuple = (),
                 destinations: object = None,
                 outside_destinations: object = None,
                 hold: object = None,
                 inside_globs: tuple[str, ...] = (),
                 outside_globs: tuple[str, ...] = (),
                 exclude_globs: tuple[str, ...] = ()):
        setattr_ = object.__setattr__
        setattr_(self, "id", id)
        setattr_(self, "result", result)
        setattr_(self, "reason", reason)
        setattr_(self, "errno", errno)
        setattr_(self, "inside", inside)
        setattr_(self, "outside", outside)
        setattr_(self, "exclude", exclude)
        setattr_(self, "existed_at_start", existed_at_start)
        setattr_(self, "count_over", count_over)
        setattr_(self, "index", index)
        setattr_(self, "inside_prefixes", inside_prefixes)  # literal prefixes: a cheap pre-test
        setattr_(self, "outside_cover", outside_cover)  # dirs whose whole subtree is "inside"
        setattr_(self, "needs_paths", needs_paths)
        setattr_(self, "modify", modify)  # the MODIFY transform
        setattr_(self, "session_has", session_has)  # composition: data classes already held
        setattr_(self, "leaves_sandbox", leaves_sandbox)
        setattr_(self, "within_seconds", within_seconds)
        setattr_(self, "first_time", first_time)
        setattr_(self, "needs_context", needs_context)
        setattr_(self, "requires_context", requires_context)  # context keys; missing -> DEFER
        setattr_(self, "env_remove", env_remove)  # modify scrub_env: name globs
        setattr_(self, "append_args", append_args)  # modify append_args: argv tail
        setattr_(self, "programs", programs)  # globs on the acting exe
        setattr_(self, "argv", argv)  # glob on the joined argv (exec)
        setattr_(self, "touches", touches)  # data classes of touched paths
        setattr_(self, "destinations", destinations)  # net.Destinations naming matches
        setattr_(self, "outside_destinations", outside_destinations)  # none may name it
        setattr_(self, "hold", hold)  # decision.Hold: how step_up/defer wait
        setattr_(self, "inside_globs", inside_globs)  # the expanded globs behind inside/outside/
        setattr_(self, "outside_globs", outside_globs)  # exclude (the native path matcher compiles
        setattr_(self, "exclude_globs", exclude_globs)  # them itself)


def _types_matching(globs: tuple[str, ...]) -> list[str]:
    """The action types (ALL_TYPES order) that any of the globs matches."""
    hit: set[str] = set()
    for g in globs:
        if any(ch in g for ch in "*?["):
            hit.update(fnmatch.filter(ALL_TYPES, g))
        elif g in _ALL_TYPES_SET:
            hit.add(g)
    return [t for t in ALL_TYPES if t in hit]


_ALL_TYPES_SET = frozenset(ALL_TYPES)


def default_errno(action_type: str) -> int:
    return errno_mod.EACCES if action_type.startswith("file.") else errno_mod.EPERM


class CompiledPolicy:
    def __init__(self, profile, ph: Placeholders):
        self.profile = profile
        self.placeholders = ph
        self.sets = {name: [ph.expand(p) for p in pats] for name, pats in profile.path_sets.items()}
        self.rules_by_type: dict[str, tuple[CompiledRule, ...]] = {}
        compiled = [self._compile_rule(i, r) for i, r in enumerate(profile.rules)]
        by_type: dict[str, list[CompiledRule]] = {t: [] for t in ALL_TYPES}
        for c, r in zip(compiled, profile.rules):
            # the types a rule's action globs name, once per rule (not a fnmatch per type
            # and rule: 1,365 of them cost 4 ms of every run's startup)
            for t in _types_matching(tuple(r.actions)):
                by_type[t].append(c)
        for t in ALL_TYPES:
            self.rules_by_type[t] = tuple(by_type[t])      # profile order (rules appended in it)
        self.default_by_type: dict[str, Result] = {}
        for t in ALL_TYPES:
            # most specific glob wins: exact name, then longest pattern
            keys = sorted((k for k in profile.defaults if fnmatch.fnmatchcase(t, k)),
                          key=lambda k: (k != t, -len(k)))
            self.default_by_type[t] = Result(profile.defaults[keys[0]]) if keys else Result.DENY
        # Data-class labels: class -> matcher over paths.
        self.class_matchers = {name: self._regex(list(globs))
                               for name, globs in (getattr(profile, "data_classes", None) or {}).items()}
        # Per type, an index from paths to the rules that could match them (a profile of
        # hundreds of rules costs a few dict lookups per action, not a loop over all).
        # Built per type on first use: only decisions the native path matcher cannot take
        # (engine._decide_slow) need it.
        self.index_by_type: dict[str, RuleIndex] = _RuleIndexes(self.rules_by_type)
        # The native matcher of every rule's path conditions (policy.matcher), built on the
        # first decision that has paths to match (engine.path_matcher_for).
        self.path_matcher = None
        self.path_matcher_built = False
        self.has_exec_restrictions = any(
            c.result is not Result.ALLOW for c in self.rules_by_type["process.exec"]
        ) or self.default_by_type["process.exec"] is not Result.ALLOW

    def destination_specs(self, names_or_specs) -> list[str]:
        sets = getattr(self.profile, "destination_sets", None) or {}
        out: list[str] = []
        for item in names_or_specs or ():
            out.extend(sets[item] if item in sets else [item])
        return out

    def _dest_matcher(self, names_or_specs):
        if not names_or_specs:
            return None
        from aarm_sandbox.net.destinations import Destinations
        return Destinations(self.destination_specs(names_or_specs), origin="profile")

    def classes_of(self, paths) -> list[str]:
        """The profile's data classes these paths belong to."""
        return sorted(name for name, rx in self.class_matchers.items()
                      if rx is not None and any(rx.match(p) for p in paths))

    def expand_patterns(self, names_or_globs: list[str]) -> list[str]:
        out: list[str] = []
        for item in names_or_globs:
            if item in self.sets:
                out.extend(self.sets[item])
            else:
                out.append(self.placeholders.expand(item))
        return out

    def set_paths(self, names: list[str]) -> list[str]:
        """Concrete (glob-free) paths of the named sets, for kernel-level masks."""
        return [os.path.normpath(p) for p in self.expand_patterns(names) if not any(c in p for c in "*?[")]

    def _regex(self, items: list[str]) -> "LazyRegex | None":
        pats = self.expand_patterns(items)
        if not pats:
            return None
        return LazyRegex("(?:" + "|".join(glob_to_regex(p) for p in pats) + r")\Z")

    def _compile_rule(self, index: int, r) -> CompiledRule:
        err = getattr(errno_mod, r.errno) if r.errno else 0
        inside_pats = self.expand_patterns(r.paths)
        outside_pats = self.expand_patterns(r.outside)
        exclude_pats = self.expand_patterns(r.except_paths)
        return CompiledRule(
            id=r.id, result=Result(r.decision), reason=r.reason or r.id, errno=err,
            inside=self._regex(r.paths), outside=self._regex(r.outside),
            exclude=self._regex(r.except_paths), existed_at_start=r.existed_at_start,
            count_over=r.count_over, index=index,
            inside_globs=tuple(inside_pats), outside_globs=tuple(outside_pats),
            exclude_globs=tuple(exclude_pats),
            inside_prefixes=tuple(match_prefix(p) for p in inside_pats) if inside_pats else None,
            outside_cover=tuple(p[:-3] for p in outside_pats
                                if p.endswith("/**") and not any(c in p[:-3] for c in "*?[")),
            needs_paths=bool(r.paths or r.outside or r.existed_at_start is not None),
            modify=getattr(r, "modify", None),
            session_has=frozenset(getattr(r, "session_has", None) or ()),
            leaves_sandbox=getattr(r, "leaves_sandbox", None),
            within_seconds=getattr(r, "within_seconds", None),
            first_time=getattr(r, "first_time", None),
            requires_context=frozenset(getattr(r, "requires_context", None) or ()),
            env_remove=tuple(getattr(r, "env_remove", None) or ()),
            append_args=tuple(getattr(r, "append_args", None) or ()),
            programs=tuple(getattr(r, "programs", None) or ()),
            argv=getattr(r, "argv", None),
            touches=tuple(getattr(r, "touches", None) or ()),
            destinations=self._dest_matcher(getattr(r, "destinations", None)),
            outside_destinations=self._dest_matcher(getattr(r, "outside_destinations", None)),
            hold=Hold(timeout=getattr(r, "timeout", None),
                      approvers=tuple(getattr(r, "approvers", None) or ()),
                      freeze=bool(getattr(r, "freeze", False)),
                      on_deadline=getattr(r, "on_deadline", "deny")),
            needs_context=bool(getattr(r, "session_has", None) or
                               getattr(r, "leaves_sandbox", None) is not None or
                               getattr(r, "first_time", None) is not None or
                               getattr(r, "programs", None) or getattr(r, "argv", None) or
                               getattr(r, "touches", None) or getattr(r, "destinations", None) or
                               getattr(r, "outside_destinations", None)))
