"""A directory rename moves everything inside it: each moved entry is judged where it lands.

Path rules see names, and a rename of a directory changes the name of every entry below it
without any of them being created, written or renamed on its own. `mv evil repo/.git`, with
evil/hooks/pre-commit prepared where no rule looks, would put a hook where `git-hook` holds
every write, and host git runs it later; moving a directory that holds the governing
profile away and rebuilding it would change the profile of the next session. So a rename
whose source is a directory is also judged as the renames of everything it moves (source
entry -> where it lands), and the strictest of those decisions wins.

The walk is race-free against the sandbox: it runs on the directory pinned without following
symlinks, in the decision thread, before the answer, and every change the sandbox can make
to a tree (create, mkdir, rename, link, symlink, unlink) is itself a notification that the
same thread performs, so nothing can be added between the walk and the rename.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Callable

from aarm_sandbox.actions import action as A
from aarm_sandbox.policy.decision import BLOCKING, RANK, Decision, Result

ENTRY_LIMIT = 200_000         # a bigger tree is refused: too many entries to judge
RENAME_EXCHANGE = 2
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def judge_moved_tree(decide: Callable[[A.Action], Decision], action: A.Action,
                     src_fd: int, src_name: bytes, dst_fd: int, dst_name: bytes,
                     limit: int = ENTRY_LIMIT) -> Decision | None:
    """The strictest decision for the entries a rename moves, or None when every one of
    them lands where it may (or the source is not a directory: nothing moves with it).
    RENAME_EXCHANGE moves both trees, each to the other's place."""
    src, dst = action.paths[0], action.paths[1]
    moves = [(src_fd, src_name, src, dst)]
    if action.flags & RENAME_EXCHANGE:
        moves.append((dst_fd, dst_name, dst, src))
    worst: tuple[Decision, str, str] | None = None
    budget = [limit]
    for dir_fd, name, origin, target in moves:
        found = _walk(decide, action, dir_fd, name, origin, target, budget)
        if found is not None and (worst is None or RANK[found[0].result] < RANK[worst[0].result]):
            worst = found
            if found[0].result is Result.DENY:
                break
    if worst is None:
        return None
    d, origin, landing = worst
    return d.noted(f"the rename moves {origin} to {landing}")


def _walk(decide, action, parent_fd: int, name: bytes, origin: str, target: str,
          budget: list[int]) -> tuple[Decision, str, str] | None:
    try:
        top = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ELOOP, errno.ENOENT):
            return None                 # not a directory (or gone: the rename fails as natively)
        return _refusal(f"cannot open the directory {origin} to see what the rename moves: "
                        f"{e.strerror}", origin, target)
    worst: tuple[Decision, str, str] | None = None
    stack = [(top, "")]
    try:
        while stack:
            fd, rel = stack.pop()
            try:
                with os.scandir(fd) as it:
                    entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
                for entry, is_dir in entries:
                    budget[0] -= 1
                    if budget[0] < 0:
                        return _refusal(f"the directory holds more than {ENTRY_LIMIT} entries: "
                                        "too many to judge where each one lands", origin, target)
                    sub = f"{rel}/{entry}" if rel else entry
                    frm, to = f"{origin}/{sub}", f"{target}/{sub}"
                    moved = A.Action(A.FILE_RENAME, frm, action.syscall, action.pid, action.tid,
                                     0, (frm, to), {"destination": to, "moved_by": origin},
                                     notif=action.notif, exe=action.exe)
                    d = decide(moved)
                    if d.result in BLOCKING and \
                            (worst is None or RANK[d.result] < RANK[worst[0].result]):
                        worst = (d, frm, to)
                        if d.result is Result.DENY:
                            return worst
                    if is_dir:
                        stack.append((os.open(entry, _DIR_FLAGS, dir_fd=fd), sub))
            except OSError as e:
                return _refusal(f"cannot read {origin}/{rel} to see what the rename moves: "
                                f"{e.strerror}", origin, target)
            finally:
                os.close(fd)
        return worst
    finally:
        for fd, _rel in stack:
            os.close(fd)


def _refusal(reason: str, origin: str, target: str) -> tuple[Decision, str, str]:
    return Decision(Result.DENY, "moved-tree", reason, errno.EACCES), origin, target
