"""Freeze the whole sandboxed process tree while an approval waits.

A held syscall blocks one thread; the rest of the agent keeps running and could race the
human (delete the evidence, try another route). A rule with `freeze: true` stops the
whole tree until the answer. Methods, in order of preference:

* cgroup-v1: a child of the v1 freezer hierarchy holding the tree (moved there right
  after launch; later children inherit it). Invisible to the tree.
* cgroup-v2: a child of our own v2 cgroup, frozen with cgroup.freeze. Invisible too.
* signals: SIGSTOP/SIGCONT to every process of the tree. Works unprivileged, but the
  tree can see it (a parent shell's waitpid reports its child stopped, SIGCHLD arrives,
  a process with a SIGCONT handler runs it), which is why cgroups are preferred.

Freezes nest (one per waiting request): the tree runs again after as many thaws.
"""
from __future__ import annotations

import errno
import os
import re
import signal
import threading
import time

from aarm_sandbox.procfs import tree_pids

FREEZER_V1 = "/sys/fs/cgroup/freezer"
METHODS = ("cgroup-v1", "cgroup-v2", "signals")
SETTLE = 0.1            # how long freeze() polls for the FROZEN state (never required)
WALK_ROUNDS = 5


class FreezeUnavailable(RuntimeError):
    """The requested method cannot be used here (the message says why)."""


# ---------------------------------------------------------------------- process tree

def stop_through_pidfd(pid: int) -> int | None:
    """SIGSTOP `pid` through a pidfd, so a recycled pid is never signalled; the pidfd (kept
    to continue it later) or None when the process is gone."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGSTOP)
    except OSError:
        os.close(pidfd)
        return None
    return pidfd


# ---------------------------------------------------------------------- cgroup discovery

def _mounts(fstype: str) -> list[tuple[str, str, str]]:
    """(mount point, root within the hierarchy, super options) of each `fstype` mount."""
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, rfields = left.split(), right.split()
                if len(rfields) >= 3 and rfields[0] == fstype:
                    out.append((fields[4], fields[3], rfields[2]))
    except OSError:
        pass
    return out


def v1_root() -> str:
    """The v1 freezer hierarchy's mount point, or raise why there is none usable."""
    freezers = [m for m, _, opts in _mounts("cgroup") if "freezer" in opts.split(",")]
    if not freezers:
        raise FreezeUnavailable("no cgroup v1 freezer hierarchy mounted")
    root = FREEZER_V1 if FREEZER_V1 in freezers else freezers[0]
    if not os.access(root, os.W_OK):
        raise FreezeUnavailable(f"{root} is not writable")
    return root


def v2_own() -> str:
    """Our own cgroup v2 directory if it supports cgroup.freeze, or raise why not."""
    path = None
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    path = line[3:].strip()
    except OSError:
        pass
    mounts = _mounts("cgroup2")
    if path is None or not mounts:
        raise FreezeUnavailable("no cgroup v2 hierarchy")
    mount, mroot, _ = mounts[0]
    if mroot != "/" and path.startswith(mroot):
        path = path[len(mroot):]
    own = os.path.normpath(os.path.join(mount, path.lstrip("/")))
    if not os.path.exists(os.path.join(own, "cgroup.freeze")):
        raise FreezeUnavailable(f"{own} has no cgroup.freeze (root cgroup, or no v2 freezer)")
    if not os.access(own, os.W_OK):
        raise FreezeUnavailable(f"{own} is not writable")
    return own


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


# ---------------------------------------------------------------------- the freezer

class TreeFreezer:
    """Freezes and thaws one session's process tree (see the module docstring)."""

    def __init__(self, session_id: str, root_pid: int, method: str,
                 cgroup: str | None = None, note: str = "") -> None:
        self.session_id, self.root_pid, self.method = session_id, root_pid, method
        self.cgroup = cgroup            # the cgroup directory (cgroup methods)
        self.note = note                # why this method (and why not the better ones)
        self._lock = threading.Lock()
        self._depth = 0
        self._stopped: dict[int, int] = {}      # signals: pid -> pidfd

    @classmethod
    def create(cls, session_id: str, root_pid: int, method: str | None = None) -> "TreeFreezer":
        """Set up the best available method (or exactly `method`, raising
        FreezeUnavailable if it cannot be used). Call right after launch."""
        if method is not None and method not in METHODS:
            raise ValueError(f"unknown freeze method {method!r}; expected one of {METHODS}")
        name = "aarm-" + re.sub(r"[^A-Za-z0-9._-]", "_", session_id)
        why_not = []
        for m in (method,) if method else METHODS:
            try:
                if m == "signals":
                    return cls(session_id, root_pid, m, None, "; ".join(
                        why_not + ["signals: SIGSTOP/SIGCONT (visible to the tree)"]))
                parent = v1_root() if m == "cgroup-v1" else v2_own()
                cgroup = _make_cgroup(parent, name, root_pid, m)
            except (FreezeUnavailable, OSError) as e:
                if method is not None:
                    raise FreezeUnavailable(f"{m}: {e}") from e
                why_not.append(f"{m} unavailable: {e}")
                continue
            return cls(session_id, root_pid, m, cgroup,
                       "; ".join(why_not + [f"{m}: a cgroup under {parent} (invisible to "
                                            "the tree)"]))
        raise AssertionError("unreachable: signals always works")

    @property
    def frozen(self) -> bool:
        with self._lock:
            return self._depth > 0

    def freeze(self) -> None:
        with self._lock:
            self._depth += 1
            if self._depth == 1:
                self._set(True)

    def thaw(self) -> None:
        with self._lock:
            if self._depth == 0:
                return
            self._depth -= 1
            if self._depth == 0:
                self._set(False)

    def reassert(self) -> None:
        """Someone else sent the tree SIGCONT (the terminal prompt waking readers it had
        stopped): while a freeze is held, stop the tree again. Only the signals method can
        be undone that way; a cgroup freeze ignores SIGCONT."""
        with self._lock:
            if self._depth == 0 or self.method != "signals":
                return
            for pidfd in self._stopped.values():
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGSTOP)
                except OSError:
                    pass
            self._signal_freeze()

    def close(self) -> None:
        """Thaw completely and remove the cgroup once the tree has left it (call after
        the tree exited; a cgroup still holding processes is left in place)."""
        with self._lock:
            if self._depth:
                self._depth = 0
                self._set(False)
            if self.cgroup is None:
                return
            for _ in range(20):         # exiting tasks leave the cgroup asynchronously
                try:
                    os.rmdir(self.cgroup)
                    self.cgroup = None
                    return
                except FileNotFoundError:
                    self.cgroup = None
                    return
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        break
                    time.sleep(0.005)
            self.note += f"; {self.cgroup} left in place (still holds processes)"

    # ------------------------------------------------------------------ per method
    def _set(self, frozen: bool) -> None:
        if self.method == "signals":
            self._signal_freeze() if frozen else self._signal_thaw()
            return
        if self.method == "cgroup-v1":
            _write(os.path.join(self.cgroup, "freezer.state"), "FROZEN" if frozen else "THAWED")
        else:
            _write(os.path.join(self.cgroup, "cgroup.freeze"), "1" if frozen else "0")
        if frozen:      # a task blocked in a seccomp wait may stay FREEZING: fine, it waits
            deadline = time.monotonic() + SETTLE
            while not self._settled() and time.monotonic() < deadline:
                time.sleep(0.005)

    def _settled(self) -> bool:
        if self.method == "cgroup-v1":
            return _read(os.path.join(self.cgroup, "freezer.state")).strip() == "FROZEN"
        return "frozen 1" in _read(os.path.join(self.cgroup, "cgroup.events"))

    def _signal_freeze(self) -> None:
        """SIGSTOP the tree, walking again until no new process appears (a process can
        fork between the walk and its SIGSTOP; a stopped one cannot)."""
        for _ in range(WALK_ROUNDS):
            new = [p for p in tree_pids(self.root_pid) if p not in self._stopped]
            if not new:
                break
            for pid in new:
                pidfd = stop_through_pidfd(pid)
                if pidfd is not None:
                    self._stopped[pid] = pidfd

    def _signal_thaw(self) -> None:
        stopped, self._stopped = self._stopped, {}
        for pidfd in stopped.values():
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGCONT)
            except OSError:
                pass
            os.close(pidfd)


def _make_cgroup(parent: str, name: str, root_pid: int, method: str) -> str:
    """mkdir parent/name and move the tree into it (root first: if that fails, the
    method is unusable and the directory is removed again)."""
    path = os.path.join(parent, name)
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    control = "freezer.state" if method == "cgroup-v1" else "cgroup.freeze"
    try:
        if not os.path.exists(os.path.join(path, control)):
            raise FreezeUnavailable(f"{path} has no {control}")
        _write(os.path.join(path, "cgroup.procs"), str(root_pid))
        moved = {root_pid}
        for _ in range(WALK_ROUNDS):    # children forked while we move are moved next round
            new = [p for p in tree_pids(root_pid) if p not in moved]
            if not new:
                break
            for pid in new:
                try:
                    _write(os.path.join(path, "cgroup.procs"), str(pid))
                except ProcessLookupError:
                    pass
                moved.add(pid)
    except BaseException:
        try:
            os.rmdir(path)
        except OSError:
            pass
        raise
    return path


def freezer_support() -> tuple[str, str]:
    """(method, detail) that `run` would use, found by freezing a throwaway child."""
    pid = os.fork()
    if pid == 0:
        time.sleep(10)
        os._exit(0)
    freezer = None
    try:
        freezer = TreeFreezer.create(f"doctor-{os.getpid()}", pid)
        freezer.freeze()
        freezer.thaw()
        return freezer.method, freezer.note
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        if freezer is not None:
            freezer.close()
