"""What the session has done so far, shared by its whole process tree.

The runtime core keeps what its own rules need (paths the session created, per-rule match
counts, data classes touched); the policy-engine issue grows this into the full AARM
context (reads, destinations, windows, taint).
"""
from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class SessionContext:
    session_id: str
    started: float = field(default_factory=time.time)
    intent: str | None = None
    created_paths: set[str] = field(default_factory=set)
    rule_counts: Counter = field(default_factory=Counter)
    action_counts: Counter = field(default_factory=Counter)
    decision_counts: Counter = field(default_factory=Counter)
    data_classes: set[str] = field(default_factory=set)
    sensitive: re.Pattern | None = None

    def existed_at_start(self, path: str) -> bool:
        """The path exists now and this session did not create it."""
        if path in self.created_paths:
            return False
        try:
            os.lstat(path)
        except OSError:
            return False
        return True

    def classes_of(self, paths: tuple[str, ...]) -> list[str]:
        if self.sensitive is not None and any(self.sensitive.match(p) for p in paths):
            return ["sensitive"]
        return []

    def record_created(self, path: str) -> None:
        self.created_paths.add(path)
