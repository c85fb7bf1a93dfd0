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
from dataclasses import dataclass, field


@dataclass
class SessionContext:
    session_id: str
    started: float = field(default_factory=time.time)
    intent: str | None = None
    created_paths: set[str] = field(default_factory=set)
    removed_paths: set[str] = field(default_factory=set)   # pre-existing, deleted/moved away
    moved_into_tmp: list[str] = field(default_factory=list)
    rule_counts: Counter = field(default_factory=Counter)
    action_counts: Counter = field(default_factory=Counter)
    decision_counts: Counter = field(default_factory=Counter)
    data_classes: set[str] = field(default_factory=set)
    sensitive: re.Pattern | None = None
    # the first sensitive path the session read (None: untainted); from then on no egress
    tainted: str | None = None
    # files written while tainted (and, with --context-store, by earlier tainted sessions)
    tainted_files: set[str] = field(default_factory=set)
    written_paths: set[str] = field(default_factory=set)
    # executed matches of windowed count rules (monotonic times), and programs run
    rule_times: dict = field(default_factory=dict)
    programs_seen: set[str] = field(default_factory=set)
    # declared context (run --context KEY=VALUE: a ticket, a change window), the agent's
    # or operator's claim, recorded in session.start
    facts: dict = field(default_factory=dict)
    class_labels: object = None          # callable(paths) -> [class], the profile's labels
    # bytes of brokered TCP connections as the kernel counted them (net.accounting)
    egress_bytes: Counter = field(default_factory=Counter)
    # the last decided actions (type, target, result, executed): what an approver is shown
    recent: deque = field(default_factory=lambda: deque(maxlen=256))

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
        if (self.sensitive is not None and any(self.sensitive.match(p) for p in paths)) or \
                (self.tainted_files and any(p in self.tainted_files for p in paths)):
            out = sorted(set(out) | {"sensitive"})
        return out

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
