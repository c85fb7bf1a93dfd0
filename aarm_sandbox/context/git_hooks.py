"""Where host git looks for the hooks of the repositories a workspace holds at the start.

`.git/hooks` is only git's default: `core.hooksPath` (husky sets `.husky`) moves every
hook of a repository into a directory of the work tree, where a path rule on `.git/hooks`
never looks. The profile's `git_hooks` set is extended with those directories, read once
before the sandbox starts (the sandbox cannot change what was configured before it).

Read: the workspace's own repository and those of its direct subdirectories (a `.git`
directory, or a `.git` file naming the git dir), their `config` file's `[core] hooksPath`
(the last one wins, as in git). Not read: included config files, the user's and the
system's config (outside the workspace, the sandbox cannot write there; a hooksPath they
set inside the workspace is not protected).
"""
from __future__ import annotations

import os
import re

_SECTION = re.compile(r"^\s*\[\s*([A-Za-z0-9.-]+)(?:\s+\"[^\"]*\")?\s*\]")
_KEY = re.compile(r"^\s*hookspath\s*=\s*(.*?)\s*$", re.IGNORECASE)
MAX_REPOS = 200


def hooks_paths(workspace: str, home: str) -> list[str]:
    """Absolute hooks directories inside `workspace` that pre-existing repositories use."""
    out: list[str] = []
    for worktree in _worktrees(workspace):
        gitdir = _gitdir(worktree)
        if gitdir is None:
            continue
        value = _core_hooks_path(os.path.join(gitdir, "config"))
        if not value:
            continue
        if value.startswith("~/"):
            path = os.path.join(home, value[2:])
        else:
            path = os.path.join(worktree, value)
        path = os.path.normpath(path)
        if (path == workspace or path.startswith(workspace.rstrip("/") + "/")) and path not in out:
            out.append(path)
    return out


def _worktrees(workspace: str) -> list[str]:
    found = [workspace]
    try:
        with os.scandir(workspace) as it:
            for e in it:
                if len(found) > MAX_REPOS:
                    break
                if e.is_dir(follow_symlinks=False) and e.name != ".git":
                    found.append(e.path)
    except OSError:
        pass
    return found


def _gitdir(worktree: str) -> str | None:
    dot_git = os.path.join(worktree, ".git")
    if os.path.isdir(dot_git):
        return dot_git
    try:
        with open(dot_git, encoding="utf-8", errors="replace") as f:
            line = f.readline().strip()
    except OSError:
        return None
    if not line.startswith("gitdir:"):
        return None
    target = line[len("gitdir:"):].strip()
    return os.path.normpath(os.path.join(worktree, target))


def _core_hooks_path(config: str) -> str | None:
    try:
        with open(config, encoding="utf-8", errors="replace") as f:
            lines = f.read(1 << 20).splitlines()
    except OSError:
        return None
    section, value = "", None
    for line in lines:
        stripped = line.split("#", 1)[0].split(";", 1)[0] if '"' not in line else line
        m = _SECTION.match(stripped)
        if m:
            section = m.group(1).lower()
            rest = stripped[m.end():]
            if not rest.strip():
                continue
            stripped = rest
        if section == "core":
            k = _KEY.match(stripped)
            if k:
                v = k.group(1)
                if len(v) >= 2 and v[0] == v[-1] == '"':
                    v = v[1:-1]
                value = v
    return value
