"""What the session has done so far, shared by its whole process tree.

The runtime core keeps what its own rules need (paths the session created, per-rule match
counts, data classes touched); the policy-engine issue grows this into the full AARM
context (reads, destinations, windows, taint).
"""
from __future__ import annotations

import os
import re
import time
from collections import Counter, deque


# action types whose last path is written / created (string literals: this module stays
# light on run's startup path; actions.action names the same)
TAINTABLE_TYPES = frozenset({"file.write", "file.create", "file.truncate"})
CREATE_TYPES = frozenset({"file.create", "file.mkdir", "file.symlink", "file.mknod", "file.link"})
_RENAME_EXCHANGE = 2


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class SessionContext:
    """(A plain class, not a dataclass: `run` defines it before the sandbox starts, where
    each dataclass definition costs ~0.5 ms.)"""

    def __init__(self, session_id: str, started: float | None = None, intent: str | None = None,
                 created_paths: set[str] | None = None, removed_paths: set[str] | None = None,
                 moved_into_tmp: list[str] | None = None, rule_counts: Counter | None = None,
                 action_counts: Counter | None = None, decision_counts: Counter | None = None,
                 data_classes: set[str] | None = None, sensitive: re.Pattern | None = None,
                 tainted: str | None = None, tainted_files: set[str] | None = None,
                 written_paths: set[str] | None = None, rule_times: dict | None = None,
                 programs_seen: set[str] | None = None, facts: dict | None = None,
                 class_labels: object = None, egress_bytes: Counter | None = None,
                 recent: deque | None = None):
        self.session_id = session_id
        self.started = time.time() if started is None else started
        self.intent = intent
        self.created_paths = set() if created_paths is None else created_paths
        # pre-existing, deleted/moved away
        self.removed_paths = set() if removed_paths is None else removed_paths
        self.moved_into_tmp = [] if moved_into_tmp is None else moved_into_tmp
        self.rule_counts = Counter() if rule_counts is None else rule_counts
        self.action_counts = Counter() if action_counts is None else action_counts
        self.decision_counts = Counter() if decision_counts is None else decision_counts
        self.data_classes = set() if data_classes is None else data_classes
        self.sensitive = sensitive
        # the first sensitive path the session read (None: untainted); from then on no egress
        self.tainted = tainted
        # files written while tainted (and, with --context-store, by earlier tainted sessions)
        self.tainted_files = set() if tainted_files is None else tainted_files
        self.written_paths = set() if written_paths is None else written_paths
        # executed matches of windowed count rules (monotonic times), and programs run
        self.rule_times = {} if rule_times is None else rule_times
        self.programs_seen = set() if programs_seen is None else programs_seen
        # declared context (run --context KEY=VALUE: a ticket, a change window), the agent's
        # or operator's claim, recorded in session.start
        self.facts = {} if facts is None else facts
        self.class_labels = class_labels    # callable(paths) -> [class], the profile's labels
        # bytes of brokered TCP connections as the kernel counted them (net.accounting)
        self.egress_bytes = Counter() if egress_bytes is None else egress_bytes
        # the last decided actions (type, target, result, executed): what an approver is shown
        self.recent = deque(maxlen=256) if recent is None else recent
        # (dst, src) of renames and links of what may be sensitive: see original_paths
        self.aliases: list[tuple[str, str]] = []
        # literal prefixes of the --sensitive globs (set by `run`)
        self.sensitive_prefixes: tuple[str, ...] = ()

    def existed_at_start(self, path: str) -> bool:
        """The path was there before the session: this session did not create it, and it
        either exists now or this session removed it (so delete-then-recreate and
        rename-away-then-replace are still seen as touching the original)."""
        if path in self.created_paths:
            return False
        if path in self.removed_paths:
            return True
        try:
            os.lstat(path)
        except OSError:
            return False
        return True

    def record_removed(self, path: str) -> None:
        if path in self.created_paths:
            self.created_paths.discard(path)
        else:
            self.removed_paths.add(path)

    def classes_of(self, paths: tuple[str, ...]) -> list[str]:
        out = self.policy_classes(paths)
        if self.aliases:
            paths = tuple(q for p in paths for q in self.original_paths(p))
        if (self.sensitive is not None and any(self.sensitive.match(p) for p in paths)) or \
                (self.tainted_files and any(p in self.tainted_files for p in paths)):
            out = sorted(set(out) | {"sensitive"})
        return out

    def original_paths(self, path: str) -> list[str]:
        """path, and the names what is there had before the renames and links the session
        made of sensitive data (most recent first): a glob matches where the data came
        from. At most 16 steps back."""
        out = [path]
        p = path
        for _ in range(16):
            for dst, src in reversed(self.aliases):
                if p == dst or p.startswith(dst + "/"):
                    p = src + p[len(dst):]
                    if p in out:
                        return out
                    out.append(p)
                    break
            else:
                break
        return out

    def executed(self, action, tmpdir: str | None = None, ledger_rule: str | None = None) -> bool:
        """What the session knows once an action happened (the supervisor's record of it,
        and explain's): its count toward count rules - deleting the session's own files
        (build output, lock files) is no deletion of anyone's data; ledger_rule is counted
        by its ledger instead - what it wrote or created, removed, moved or linked, the
        program it ran. True when sensitive data now also has a name no glob matches."""
        from aarm_sandbox.actions import action as A
        t, paths = action.type, action.paths
        counted = getattr(action, "counted", None)
        if counted and not (t == A.FILE_DELETE and paths and paths[0] in self.created_paths):
            now = time.monotonic()
            for rid in counted:
                if rid != ledger_rule:
                    self.rule_counts[rid] += 1
                    self.rule_times.setdefault(rid, deque()).append(now)
        if t in TAINTABLE_TYPES and paths:
            self.note_written(paths[-1])
        if t == A.PROCESS_EXEC:
            self.programs_seen.add(action.target)
        elif t in CREATE_TYPES and paths:
            self.record_created(paths[-1])
            if t == A.FILE_LINK and len(paths) == 2:
                return self.linked(paths[0], paths[1])
        elif t == A.FILE_DELETE and paths:
            self.record_removed(paths[0])
        elif t == A.FILE_RENAME and len(paths) == 2:
            src, dst = paths
            exchange = bool(action.flags & _RENAME_EXCHANGE)
            if not exchange:                # (an exchange removes nothing)
                created = src in self.created_paths
                self.record_removed(src)
                if created:
                    self.record_created(dst)
                else:
                    # what it holds existed before the session: deleting it later is still
                    # a deletion (rename-then-delete must not slip under mass-delete)
                    self.created_paths.discard(dst)
            if tmpdir and _inside(dst, tmpdir) and not _inside(src, tmpdir):
                self.moved_into_tmp.append(src)
            return self.moved(src, dst, os.path.isdir(dst), exchange)
        return False

    def moved(self, src: str, dst: str, directory: bool, exchange: bool = False) -> bool:
        """A rename moves data: what was known of src (and, for a directory, of everything
        below it) is known of dst - taint (this session's or an earlier one's), files this
        session wrote or created (which carry its taint at the end), and what a --sensitive
        glob matched there, which no glob matches at the new place (an alias: classes_of
        looks through it). An exchange moves both ways. True when a new alias was made."""
        pairs = [(src, dst), (dst, src)] if exchange else [(src, dst)]
        if not exchange:
            for paths in (self.tainted_files, self.written_paths):
                if src in paths:
                    paths.discard(src)
                    paths.add(dst)
            if directory:
                prefix, new = src.rstrip("/") + "/", dst.rstrip("/") + "/"
                for paths in (self.tainted_files, self.written_paths, self.created_paths):
                    below = [f for f in paths if f.startswith(prefix)]
                    for f in below:
                        paths.discard(f)
                        paths.add(new + f[len(prefix):])
        else:
            for paths in (self.tainted_files, self.written_paths):
                a, b = src in paths, dst in paths
                if a != b:
                    paths.symmetric_difference_update({src, dst})
        made = False
        for a, b in pairs:
            if self._may_hold_sensitive(a, directory or exchange):
                self.aliases.append((b.rstrip("/") or "/", a.rstrip("/") or "/"))
                made = True
        return made

    def linked(self, src: str, dst: str) -> bool:
        """A hard link: dst is the data src names."""
        if self._may_hold_sensitive(src, False):
            self.aliases.append((dst, src))
            return True
        if src in self.tainted_files:
            self.tainted_files.add(dst)
        return False

    def _may_hold_sensitive(self, path: str, directory: bool) -> bool:
        if self.sensitive is None and not self.aliases:
            return False
        names = self.original_paths(path)
        if self.sensitive is not None and any(self.sensitive.match(p) for p in names):
            return True
        if directory and any(self.sensitive_below(p) for p in names):
            return True
        # something moved below it earlier (its alias would not follow it otherwise)
        prefix = path.rstrip("/") + "/"
        return any(dst.startswith(prefix) for dst, _src in self.aliases)

    def sensitive_below(self, directory: str) -> bool:
        """Whether a --sensitive glob may match something inside directory: the directory
        part of its literal prefix reaches into it, or lies above it ("/ws/sec*/key" may
        match below /ws/secrets). Generous: the glob itself decides through the alias."""
        d = directory.rstrip("/") + "/"
        for lit in self.sensitive_prefixes:
            lit_dir = lit[:lit.rfind("/") + 1]
            if lit_dir.startswith(d) or d.startswith(lit_dir):
                return True
        return False

    def policy_classes(self, paths: tuple[str, ...]) -> list[str]:
        """The profile's data-class labels of these paths (set by `run`)."""
        f = self.class_labels
        return f(paths) if f is not None and paths else []

    def note_written(self, path: str) -> None:
        """Data flows through files: what a tainted session writes carries the taint (staged
        exfiltration: write /tmp/report.csv now, send it later, maybe from a later session)."""
        self.written_paths.add(path)
        if self.tainted is not None:
            self.tainted_files.add(path)

    def files_carrying_taint(self) -> set[str]:
        """At the end of a tainted session, every file it created or wrote: a file opened
        for writing before the sensitive read may have received the data after it."""
        if self.tainted is None:
            return set(self.tainted_files)
        return self.tainted_files | self.created_paths | self.written_paths

    def record_created(self, path: str) -> None:
        self.created_paths.add(path)

