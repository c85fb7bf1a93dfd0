"""Every path condition of a profile's rules, matched in one native pass.

Why: the engine decides on every intercepted syscall, and testing each rule's path globs
with its own Python regex cost most of a decision (a profile of a few hundred rules has
dozens of globs that any path might match). Here the globs of all rules become one NFA
over code points (from `compiler.glob_tokens`, the same parse the Python regexes are made
from), which native/aarm_policy.c turns into a DFA lazily: one table lookup per character
of the path, whatever the number of rules. The answer is an
"accept set" id naming the set of conditions the whole path matches; the engine memoises
what that set means for its decision, so the matching is the only per-path work left.

A rule's path conditions become up to three patterns (one per distinct glob list: a path
set several rules use is one pattern):
  inside   its `paths` globs (the path must match one)
  exclude  its `except` globs (a path matching one does not count)
  outside  its `outside` globs (a path matching one does not count)

Without the native module (not built, or built before this matcher existed) there is no
PathMatcher and the engine evaluates the Python regexes as it always did.
"""
from __future__ import annotations

from collections.abc import Sequence

from aarm_sandbox.policy.compiler import (GLOB_ANY, GLOB_LITERAL, GLOB_ONE, GLOB_STAR, GLOB_TAIL,
                                          CompiledRule, glob_tokens)

# NFA node kinds: native/aarm_policy.h (AARM_PM_*).
OP_CHAR, OP_NOTSLASH, OP_ANY, OP_SPLIT, OP_MATCH = range(5)

NO_PATTERN = -1
DFA_BUDGET = 16 << 20       # bytes of DFA states before the cache is flushed


class _Nfa:
    """Thompson NFA of many globs, as the flat node table aarm_pm_new takes (4 ints a node:
    op, arg, next1, next2). Built back to front, so each piece's exit is known."""

    def __init__(self) -> None:
        self.flat: list[int] = []
        self.starts: list[int] = []
        self.npatterns = 0
        self._ids: dict[tuple, int] = {}

    def _node(self, op: int, arg: int = 0, next1: int = 0, next2: int = 0) -> int:
        flat = self.flat
        flat += (op, arg, next1, next2)
        return len(flat) // 4 - 1

    def _loop(self, op: int, then: int) -> int:
        """`op*` followed by `then`."""
        split = self._node(OP_SPLIT, 0, 0, then)
        self.flat[4 * split + 2] = self._node(op, 0, split)
        return split

    def pattern(self, key: tuple, token_lists) -> int:
        """The id of a pattern matching a text that matches any of the token lists; one id
        per key (a path set used by several rules is matched once)."""
        pid = self._ids.get(key)
        if pid is not None:
            return pid
        pid = self._ids[key] = self.npatterns
        self.npatterns += 1
        node, loop = self._node, self._loop
        match = node(OP_MATCH, pid)
        for tokens in token_lists:
            nxt = match
            for kind, text in reversed(tokens):
                if kind == GLOB_LITERAL:                # a chain of CHAR nodes, made at once
                    base, n = len(self.flat) // 4, len(text)
                    chain = [OP_CHAR] * (4 * n)
                    chain[1::4] = map(ord, text)
                    chain[2::4] = range(base + 1, base + n + 1)
                    chain[3::4] = [0] * n
                    chain[-2] = nxt
                    self.flat += chain
                    nxt = base
                elif kind == GLOB_ONE:
                    nxt = node(OP_NOTSLASH, 0, nxt)
                elif kind == GLOB_STAR:
                    nxt = loop(OP_NOTSLASH, nxt)
                elif kind == GLOB_ANY:
                    nxt = loop(OP_ANY, nxt)
                elif kind == GLOB_TAIL:             # nothing, or "/" then anything
                    nxt = node(OP_SPLIT, 0, node(OP_CHAR, ord("/"), loop(OP_ANY, nxt)), nxt)
                else:
                    raise ValueError(f"unknown glob token {kind!r}")
            self.starts.append(nxt)
        return pid

    def globs(self, globs: tuple[str, ...]) -> int:
        return self.pattern(("globs", globs), [glob_tokens(g) for g in globs])

class PathMatcher:
    """The path conditions of a profile's rules, matched in one pass.

    `conditions[rule.index]` holds the rule's pattern ids (inside, exclude, outside;
    NO_PATTERN where the rule has none), or None for a rule without path
    conditions. `match(handle, text, length, width)` is the native call (the engine calls
    it directly: one Python call less per decision); `accepted(id)` the set of pattern ids
    an answer names."""
    __slots__ = ("conditions", "handle", "match", "npatterns", "_accepted", "_ffi", "_lib")

    def __init__(self, rules: Sequence[CompiledRule], budget: int = DFA_BUDGET):
        from aarm_sandbox._native import ffi, lib     # ImportError/AttributeError: no matcher
        nfa = _Nfa()
        conditions: dict[int, tuple[int, int, int, int] | None] = {}
        for rule in rules:
            if not rule.needs_paths:
                conditions[rule.index] = None
                continue
            inside = exclude = outside = NO_PATTERN
            if rule.inside is not None:
                inside = nfa.globs(rule.inside_globs)
            if rule.exclude is not None:
                exclude = nfa.globs(rule.exclude_globs)
            if rule.outside is not None:
                outside = nfa.globs(rule.outside_globs)
            conditions[rule.index] = (inside, exclude, outside)
        if not nfa.flat:                               # path rules without globs (existed_at_start)
            nfa.pattern(("none",), [])
        handle = lib.aarm_pm_new(ffi.new("int32_t[]", nfa.flat), len(nfa.flat) // 4,
                                 ffi.new("uint32_t[]", nfa.starts), len(nfa.starts),
                                 nfa.npatterns, budget)
        if handle == ffi.NULL:
            raise MemoryError("aarm_pm_new failed")
        self.handle = ffi.gc(handle, lib.aarm_pm_free)
        self.match = lib.aarm_pm_match
        self.conditions = conditions
        self.npatterns = nfa.npatterns
        self._accepted: dict[int, frozenset[int]] = {}
        self._ffi, self._lib = ffi, lib

    def accept_id(self, path: str) -> int:
        """The accept-set id of one path (-1: the matcher cannot answer; decide without it)."""
        if path.isascii():
            return self.match(self.handle, path.encode(), len(path), 1)
        return self.match(self.handle, path.encode("utf-32-le", "surrogatepass"), len(path), 4)

    def accepted(self, accept_id: int) -> frozenset[int]:
        """The pattern ids an accept-set id names."""
        got = self._accepted.get(accept_id)
        if got is None:
            # a buffer of its own: the call releases the GIL, another thread may be here too
            buf = self._ffi.new("uint32_t[]", max(1, self.npatterns))
            n = self._lib.aarm_pm_accept_set(self.handle, accept_id, buf, self.npatterns)
            if n < 0 or n > self.npatterns:
                raise ValueError(f"unknown accept set {accept_id}")
            got = self._accepted[accept_id] = frozenset(buf[0:n])
        return got

    def stats(self) -> dict[str, int]:
        """DFA states now cached, cache flushes, accept sets, bytes of DFA: for tests and tuning."""
        out = self._ffi.new("uint64_t[4]")
        self._lib.aarm_pm_stats(self.handle, out)
        return {"states": out[0], "flushes": out[1], "accept_sets": out[2], "bytes": out[3]}


def build_path_matcher(rules: Sequence[CompiledRule], budget: int | None = None) -> PathMatcher | None:
    """The matcher for these rules, or None when the native module cannot provide one (the
    engine then evaluates the rules' Python regexes, as before)."""
    try:
        return PathMatcher(rules, DFA_BUDGET if budget is None else budget)
    except (ImportError, AttributeError, MemoryError):
        return None
