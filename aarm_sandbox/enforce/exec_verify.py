"""After an allowed exec: check that the kernel loaded the file that was decided on, with the
arguments that were decided on.

Exec cannot be emulated, so the supervisor answers CONTINUE and the kernel reads the path,
argv and envp again; a thread rewriting them between the decision and the exec would load
another file, or run a classified tool (`git push`) with other arguments (`git push
--force`). Where ptrace is allowed, the supervisor holds each continued exec in its exec
stop - the new program exists, not one instruction of it has run - and kills it there if
what it loaded or runs with differs (`exec_stop_checks`, used by the supervisor's gate).
Where it is not, `ExecImageVerifier` watches the process after the exec instead: the same
checks, but the program may run for a moment before it is killed.

The watcher is one long-lived thread. A thread per exec cost the decision loop ~0.45 ms an
exec (threading.Thread.start waits until the new thread runs and holds the GIL).
"""
from __future__ import annotations

import errno
import os
import struct
import threading
import time
from collections.abc import Callable

from aarm_sandbox.decode.memory import env_prefixed
from aarm_sandbox.procfs import stat_fields, tgid_of

WATCH_FOR = 2.0             # an image unchanged by then: the exec failed, the old image runs on
POLL = 0.0005               # between two looks at the pending execs


class ExecBasis:
    """What an exec's decision read from its caller while it waited: the argv (a rule's
    argv pattern, an approval and the classification of a tool depend on it), and for a
    classified tool the GIT_CONFIG* variables (None: not read, so not needed) and the cwd
    (None: not used)."""
    __slots__ = ("argv", "env", "cwd")

    def __init__(self, argv: tuple[bytes, ...], env: dict[str, str] | None, cwd: str | None):
        self.argv = argv
        self.env = env
        self.cwd = cwd


ENV_PREFIX = b"GIT_CONFIG"


def image_loaded(pid: int, effect) -> bool:
    """In the exec stop: the image is the file decided on (for a '#!' script, the ELF its
    interpreter chain ends in, resolved at the decision), and the dynamic loader mapped is
    the one its PT_INTERP named then (none for a static ELF): a thread rewriting the
    PT_INTERP of a file it may write, between the decision and the exec, loaded another."""
    st = os.stat(f"/proc/{pid}/exe")
    if not runs_image(pid, (st.st_dev, st.st_ino), effect.loads):
        return False
    return loader_ok(pid, effect.loads)


def runs_image(pid: int, now: tuple[int, int], loads) -> bool:
    """`now` (the program's image) is what the decision expected to run: the image, or
    another interpreter binfmt_misc may run it with, or an 'F' entry's interpreter, which
    the kernel opened when it was registered (matched by its path: the file there may have
    been replaced since)."""
    if loads.image is not None and (now == loads.image or now in loads.alt_images):
        return True
    if loads.fixed_interpreters:
        try:
            shown = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return False
        return shown.removesuffix(" (deleted)") in loads.fixed_interpreters
    return False


def loader_ok(pid: int, loads) -> bool:
    """The dynamic loader mapped is the one decided on. Its mapping's own file, stat'ed
    through /proc/PID/map_files, compares with a stat of the decided path everywhere; where
    the supervisor may not open map_files (it needs CAP_SYS_ADMIN), /proc/PID/maps' device
    and inode do, except on overlayfs and btrfs (Loads.loader_unmatchable)."""
    mapped, exact = loader_mapped(pid)
    if exact or not loads.loader_unmatchable:
        return mapped == loads.loader
    return True


def loader_mapped(pid: int) -> tuple[tuple[int, int] | None, bool]:
    """((dev, ino) of the file mapped where the kernel put the program's dynamic loader
    (AT_BASE of its auxiliary vector), None when it has none; whether that came from a stat
    of the mapping itself rather than the text of /proc/PID/maps)."""
    with open(f"/proc/{pid}/auxv", "rb") as f:
        auxv = f.read()
    keys = dict(struct.unpack_from("<QQ", auxv, i) for i in range(0, len(auxv) - 15, 16))
    if _AT_PAGESZ not in keys:
        raise NotSetUp("the new program's auxiliary vector is not set up yet")
    base = keys.get(_AT_BASE, 0)
    if base == 0:
        return None, True
    with open(f"/proc/{pid}/maps", "rb") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            start, _, end = fields[0].partition(b"-")
            if int(start, 16) <= base < int(end, 16):
                try:
                    st = os.stat(f"/proc/{pid}/map_files/{fields[0].decode()}")
                    return (st.st_dev, st.st_ino), True
                except PermissionError:
                    major, _, minor = fields[3].partition(b":")
                    return (os.makedev(int(major, 16), int(minor, 16)), int(fields[4])), False
    raise OSError(errno.ENOENT, f"no mapping holds the dynamic loader at {base:#x}")


_AT_BASE, _AT_PAGESZ = 7, 6


class NotSetUp(OSError):
    """Looked at between the new image's switch and its auxiliary vector (the watcher)."""


def basis_differs(pid: int, basis: ExecBasis, script: bool = False,
                  cmdline: bytes | None = None) -> str | None:
    """What the program pid now runs with that its decision did not read, or None. A '#!'
    script's program is its interpreter, whose argv the kernel makes of the interpreter,
    its optional argument and the script's path, then the script's own arguments: those
    (all but argv[0]) must be the ones decided on."""
    if cmdline is None:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    args = _split_nul(cmdline)
    if script:
        tail = basis.argv[1:]
        same = len(args) > len(tail) and (not tail or args[-len(tail):] == tail)
    else:
        # (an empty argv reaches the program as one empty argument, since Linux 5.18)
        same = args == basis.argv or (not basis.argv and args == (b"",))
    if not same:
        return "other arguments than the ones decided on"
    if basis.env is not None:
        with open(f"/proc/{pid}/environ", "rb") as f:
            if env_prefixed(_split_nul(f.read()), ENV_PREFIX) != basis.env:
                return "another git configuration in its environment than the one classified"
    if basis.cwd is not None and os.readlink(f"/proc/{pid}/cwd") != basis.cwd:
        return "in another directory than the one classified"
    return None


def _split_nul(block: bytes) -> tuple[bytes, ...]:
    items = block.split(b"\0")
    if items and items[-1] == b"":
        items.pop()
    return tuple(items)


class PendingExec:
    """One continued exec being watched: its process (taken before the exec, since a
    non-leader thread's id is gone after it) and its memory then (a /proc/PID/mem fd of the
    old program, which reads nothing once the exec replaced it: the sign the exec happened
    when the image stays the same file)."""
    __slots__ = ("tid", "effect", "tgid", "deadline", "mark", "arg_start")

    def __init__(self, tid: int, effect, deadline: float, mark: tuple):
        self.tid = tid
        self.effect = effect
        self.tgid, self.mark, self.arg_start = mark
        self.deadline = deadline


NO_MARK = (None, -1, 0)


def exec_mark(pid: int) -> tuple[int | None, int, int]:
    """(the thread's process, an fd of its memory now, the start of its arguments: -1 and
    0 when unknown), taken before its exec is let go: the exec has happened once that memory
    reads nothing (gone with the old program) or the arguments moved. (A vfork child shares
    its parent's memory, which stays; ASLR off can leave the arguments where they were;
    yama and LSMs may refuse the memory: either sign is enough.)"""
    try:
        tgid = tgid_of(pid)
    except OSError:
        return NO_MARK
    fields = stat_fields(f"/proc/{tgid}/stat")
    try:
        arg_start = int(fields[45]) if fields else 0           # field 48
    except (IndexError, ValueError):
        arg_start = 0
    try:
        fd = os.open(f"/proc/{tgid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        fd = -1
    return tgid, fd, arg_start


class ExecImageVerifier:
    """Watches continued execs (`watch`) from one daemon thread, started on first use.
    allowed_images: (dev, ino) of every image an exec decision allowed (shared with the
    supervisor, which adds to it before answering). kill(tgid, tid, why) kills a process
    that ran what it should not and journals why."""

    def __init__(self, allowed_images: set[tuple[int, int]],
                 kill: Callable[[int, int, str], None]):
        self.allowed_images = allowed_images
        self._kill = kill
        self._pending: list[PendingExec] = []
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None

    def watch(self, tid: int, effect, mark: tuple = NO_MARK) -> None:
        """Watch the exec thread `tid` was just let go to make (effect: its ExecContinue;
        mark: exec_mark(tid) from before it was let go)."""
        item = PendingExec(tid, effect, time.monotonic() + WATCH_FOR, mark)
        with self._cond:
            self._pending.append(item)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="aarm-exec-verify",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                batch = list(self._pending)
            done = [item for item in batch if self._settled(item)]
            for item in done:
                if item.mark >= 0:
                    os.close(item.mark)
                    item.mark = -1
            with self._cond:
                if done:
                    gone = set(map(id, done))
                    self._pending = [p for p in self._pending if id(p) not in gone]
                if self._pending:
                    # (a new exec wakes the wait at once: its first look is not delayed)
                    self._cond.wait(POLL)

    def _settled(self, item: PendingExec) -> bool:
        """One look at a pending exec: True once it needs no more (verified, killed, gone,
        or its time is up)."""
        try:
            return self._look(item)
        except Exception as e:  # noqa: BLE001 - a bug here must not end the watching
            self._kill_safely(item, f"exec check failed ({e!r})")
            return True

    def _look(self, item: PendingExec) -> bool:
        effect = item.effect
        if item.tgid is None:
            try:
                item.tgid = tgid_of(item.tid)
            except OSError:
                return True                       # gone
        tgid = item.tgid
        if time.monotonic() > item.deadline:
            return True
        try:
            st = os.stat(f"/proc/{tgid}/exe")
        except OSError:
            return True                           # gone
        now = (st.st_dev, st.st_ino)
        # the same file as before the exec: has the exec happened? (unknown without a mark)
        same = now == effect.before
        marked = item.mark >= 0 or item.arg_start != 0
        if same and marked and not self._exec_happened(item):
            return False                          # not yet: look again
        maybe_old = same and not marked
        if runs_image(tgid, now, effect.loads):
            try:
                loader_right = loader_ok(tgid, effect.loads)
            except NotSetUp:
                return False                      # look again
            except OSError:
                return True                       # gone (its mappings with it)
            if not loader_right:
                return self._kill_if_still(item, now, "exec loaded another dynamic loader "
                                                      "than the one decided on")
            basis = getattr(effect, "basis", None)
            if basis is None:
                return True
            why = _basis_now(tgid, basis, effect.is_script)
            if why is None or (why and maybe_old):
                return False            # not set up yet, or maybe still the old program's
            if why:
                return self._kill_if_still(item, now, f"exec ran with {why} (rewritten by "
                                                      f"another thread)")
            return True
        if maybe_old:
            return False                          # still the old image: look again
        if now in self.allowed_images:
            # a later exec of the same process (`sh -c 'exec prog'`) already replaced the
            # image: any image an exec decision allowed is fine
            return True
        return self._kill_if_still(item, now, "exec loaded a different file than the one "
                                              "decided on")

    def _kill_if_still(self, item: PendingExec, image: tuple[int, int], why: str) -> bool:
        """Kill the process for `why`, found while it ran `image`: unless it has exec'd again
        since (what was read may be the next program's: look again)."""
        try:
            st = os.stat(f"/proc/{item.tgid}/exe")
        except OSError:
            return True                           # gone
        if (st.st_dev, st.st_ino) != image:
            return False
        self._kill(item.tgid, item.tid, why)
        return True

    @staticmethod
    def _exec_happened(item: PendingExec) -> bool:
        """With the same file before and after, whether the exec has replaced the program
        (see exec_mark)."""
        fields = stat_fields(f"/proc/{item.tgid}/stat")
        try:
            arg_start = int(fields[45]) if fields else 0
        except (IndexError, ValueError):
            return True
        if item.arg_start and arg_start != item.arg_start:
            return True
        if item.mark >= 0:
            try:
                return not os.pread(item.mark, 1, item.arg_start or arg_start)
            except OSError:
                return True
        return False

    def _kill_safely(self, item: PendingExec, why: str) -> None:
        try:
            self._kill(item.tgid if item.tgid is not None else item.tid, item.tid, why)
        except Exception:  # noqa: BLE001
            pass


def _basis_now(tgid: int, basis: ExecBasis, script: bool) -> str | None:
    """'' when the running program matches its basis, what differs when not, None while
    its arguments are not set up yet."""
    try:
        with open(f"/proc/{tgid}/cmdline", "rb") as f:
            cmdline = f.read()
        if not cmdline and basis.argv:
            return None
        return basis_differs(tgid, basis, script, cmdline) or ""
    except OSError:
        return ""                                 # gone: nothing runs that could be wrong
