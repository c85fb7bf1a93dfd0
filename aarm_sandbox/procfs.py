"""Reading the process tree from /proc (world-readable files only: the supervisor has
dropped the capabilities that other /proc views of privileged processes would need)."""
from __future__ import annotations

import errno
import os
import re


def stat_fields(path: str) -> list[str] | None:
    """Fields after the command name of a /proc stat file (state is [0], ppid [1],
    pgrp [2], tty_nr [4]); None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2:].decode().split()


def tgid_of(tid: int) -> int:
    """The thread group (process) of a thread; OSError when it is gone."""
    with open(f"/proc/{tid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Tgid:"):
                return int(line.split()[1])
    raise OSError(errno.ESRCH, "no Tgid")


def descends_from(pid: int, ancestor: int, *, unknown: bool) -> bool:
    """`pid` is `ancestor` or below it. `unknown` is the answer when the chain cannot be
    read to its end (a check that must fail closed passes True)."""
    for _ in range(4096):
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
        fields = stat_fields(f"/proc/{pid}/stat")
        if fields is None:
            return unknown
        pid = int(fields[1])
    return unknown


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def tree_pids(root_pid: int) -> list[int]:
    """root_pid and all its current descendants (root first)."""
    seen, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        if pid not in seen and os.path.exists(f"/proc/{pid}"):
            seen.append(pid)
            todo.extend(children(pid))
    return seen


def mount_points(pid: int) -> list[str]:
    """The mount points of pid's mount namespace as it sees them (from its root), from
    /proc/PID/mountinfo (field 5, octal escapes undone); [] when unreadable."""
    try:
        with open(f"/proc/{pid}/mountinfo", "rb") as f:
            data = f.read()
    except OSError:
        return []
    out = []
    for line in data.splitlines():
        fields = line.split(b" ")
        if len(fields) > 4:
            mp = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4])
            out.append(os.fsdecode(mp))
    return out
