"""Which directories the launcher turns into views (native/aarm_native.c make_view).

A mount mask hides a credential file that exists at launch. One the host creates during
the session (`docker login`, git's credential store) or replaces by rename (npm, most
editors) was visible to the sandbox. So every directory holding a masked path becomes a
view: what it held at launch, bound entry by entry, without the masked names; whatever
the host adds to it later stays out of the sandbox's sight (a file it replaces keeps
showing its launch-time content).
"""
from __future__ import annotations

import os

MAX_ENTRIES = 4096          # as VIEW_MAX_ENTRIES in C: one bind mount each


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def plan_views(masked: list[str], writable: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(dir, name) pairs for LaunchPlan.view_hide, parents before children, and warnings
    for the directories left to plain masks: a view's root is read-only, so no view is
    made of the workspace, the session temp dir or anything inside them (`writable`),
    of '/', or of a directory too large to bind entry by entry."""
    pairs: dict[str, list[str]] = {}
    warnings: list[str] = []
    writable = [os.path.realpath(w) for w in writable]
    for path in masked:
        parent, name = os.path.split(os.path.normpath(path))
        if not name or parent in ("", "/") or not os.path.isdir(parent):
            continue
        # (where the mount really lands: a home reached through a symlink, or a credential
        # directory that is a symlink into the workspace, must not make it read-only)
        if any(_inside(os.path.realpath(parent), w) for w in writable):
            if parent not in pairs:
                warnings.append(f"{parent} is inside the writable workspace: credentials the "
                                f"host creates there during the session are not hidden")
            pairs.setdefault(parent, [])
            continue
        pairs.setdefault(parent, []).append(name)
    out: list[tuple[str, str]] = []
    for parent in sorted(pairs, key=lambda d: (d.count("/"), d)):
        names = pairs[parent]
        if not names:
            continue
        try:
            too_many = len(os.listdir(parent)) > MAX_ENTRIES
        except OSError:
            continue                    # unreadable here: the launcher leaves it alone too
        if too_many:
            warnings.append(f"{parent} holds more than {MAX_ENTRIES} entries: credentials the "
                            f"host creates there during the session are not hidden")
            continue
        out.extend((parent, n) for n in names)
    return out, warnings
