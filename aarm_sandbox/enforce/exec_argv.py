"""MODIFY/append_args: an exec runs with arguments added at the end of its argv.

Seccomp user notification cannot change a syscall's arguments, and the argv array the
target passed has no slot for one more. So the call is made again with a new array: the
supervisor attaches to the calling thread (PTRACE_SEIZE, PTRACE_INTERRUPT), answers the
notification with -ERESTARTNOINTR, and meets the thread in its interrupt stop on the way
back to user space, where its registers still describe the exec. There it writes the new
array (the original argument pointers, the added strings, NULL) below the thread's stack
pointer, points the argv register at it and lets the thread go: the kernel restarts the
exec, which is notified and decided again, on the argv it will now really use. A thread of
the same process could still rewrite that array before the kernel copies it, so the
supervisor stays attached (PTRACE_O_TRACEEXEC) and checks the new program's
/proc/PID/cmdline in its exec stop, before it runs a single instruction: without the added
arguments at its end it is killed there. Every ptrace call comes from one thread (the
kernel's rule), started per restart: the decision loop goes on meanwhile and decides the
restarted exec when it is notified.
"""
from __future__ import annotations

import ctypes
import errno
import os
import threading
import time

from aarm_sandbox.decode.handlers import ExecContinue
from aarm_sandbox.decode.memory import DecodeError, read_u64_array, write_mem
from aarm_sandbox.enforce.effects import Effect
from aarm_sandbox.procfs import tgid_of

ERESTARTNOINTR = 513
_RESTART_ERRORS = (512, 513, 514, 516)      # ERESTARTSYS NOINTR NOHAND RESTART_RESTARTBLOCK
_PTRACE_CONT, _PTRACE_GETREGS, _PTRACE_SETREGS, PTRACE_DETACH = 7, 12, 13, 17
PTRACE_SEIZE, _PTRACE_INTERRUPT = 0x4206, 0x4207
_PTRACE_SYSCALL = 24
_PTRACE_O_TRACESYSGOOD, _PTRACE_O_TRACEEXEC = 0x1, 0x10
_PTRACE_EVENT_EXEC, _PTRACE_EVENT_STOP = 4, 128
_SYSCALL_TRAP = 5 | 0x80                     # SIGTRAP | 0x80: a syscall stop (TRACESYSGOOD)
_PTRACE_LISTEN = 0x4208
_STOP_SIGNALS = (19, 20, 21, 22)             # SIGSTOP SIGTSTP SIGTTIN SIGTTOU
_EXEC_GATE_TIMEOUT = 30.0   # an exec not over by then is killed (see gate_exec)
_WALL = 0x40000000
_STOP_TIMEOUT = 2.0
_BELOW_STACK = 8192                          # clear of the red zone and a signal frame
MAX_ARGS = 4096

def ptrace(req: int, tid: int, addr: int = 0, data: int = 0) -> None:
    """ptrace(2), the libc call itself: every allowed exec is held with it, and
    python-ptrace (its register layout is what `_getregs` needs) costs ~15 ms to import,
    which the first exec of every run paid. OSError on failure."""
    global _libc_ptrace
    if _libc_ptrace is None:
        fn = ctypes.CDLL(None, use_errno=True).ptrace
        fn.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
        fn.restype = ctypes.c_long
        _libc_ptrace = fn
    ctypes.set_errno(0)
    if _libc_ptrace(req, tid, addr, data) == -1:
        err = ctypes.get_errno() or errno.EPERM
        raise OSError(err, f"ptrace({req}) on thread {tid}: {os.strerror(err)}")


_libc_ptrace = None


def _getregs(tid: int):
    """The thread's struct user_regs_struct (python-ptrace's type)."""
    from ptrace.binding.func import ptrace_registers_t
    regs = ptrace_registers_t()
    ptrace(_PTRACE_GETREGS, tid, 0, ctypes.addressof(regs))
    return regs


class RestartUnavailable(OSError):
    """ptrace refused before anything was answered: the exec can simply be denied."""


class ExecRestart(Effect):
    """Make the exec again, with `extra` appended to its argv (see the module docstring).
    perform(answer_restart) returns 0 once the thread runs on towards the restarted exec;
    raises RestartUnavailable before anything was answered (deny the exec), or another
    OSError/DecodeError after (the caller kills the target: fail closed)."""

    def __init__(self, exec_effect: ExecContinue, tid: int, nr: int, argv_ptr: int,
                 extra: tuple[str, ...]):
        self.exec_effect = exec_effect
        self.tid = tid
        self.nr = nr
        self.argv_ptr = argv_ptr
        self.extra = tuple(os.fsencode(a) for a in extra)
        self.failed: str | None = None      # what the check in the exec stop found, if killed

    def _fds(self):
        return self.exec_effect._fds()

    def perform(self, answer_restart=None, still_pending=None, restarted=None,
                before_release=None, also_check=None) -> str:
        """The whole restart, in the calling thread (the tracer): `restarted(r)` is called
        once the call is answered and the thread runs on (r = 0), or refused before any
        answer (r = -errno, raised too). Returns how the exec ended (gate_exec): "ok" (ran
        with the arguments), "killed" (cut: killed in its exec stop), "returned" (the
        restarted exec failed or was refused), "gone" or "timeout"."""
        pointers = self._argv_pointers()
        tid = self.tid
        seize_for_exec(tid)
        attached = True
        try:
            if still_pending is not None and not still_pending():
                # the caller went away (and its TID could be another task's by now)
                raise RestartUnavailable(errno.ESRCH, f"thread {tid} left its exec")
            ptrace(_PTRACE_INTERRUPT, tid)
            answer_restart()
            self._wait_stop()
            regs = _getregs(tid)
            ret = -ctypes.c_longlong(regs.rax).value
            if regs.orig_rax != self.nr or ret not in _RESTART_ERRORS:
                raise OSError(errno.EPROTO, f"thread {tid} did not stop in its exec "
                                            f"(syscall {regs.orig_rax}, return {-ret})")
            addr = self._write_array(regs.rsp, pointers)
            if self.nr == 59:                # execve(path, argv, envp)
                regs.rsi = addr
            else:                            # execveat(dirfd, path, argv, envp, flags)
                regs.rdx = addr
            ptrace(_PTRACE_SETREGS, tid, 0, ctypes.addressof(regs))
            # on to the restarted exec, stopping at its entry and exit: an exec that fails
            # (refused by its decision, ENOEXEC...) ends the tracing at its exit
            ptrace(_PTRACE_SYSCALL, tid, 0, 0)
            if restarted is not None:
                restarted(0)
            attached = False                 # gate_exec detaches (or kills)
            return self._gate_exec(before_release, also_check)
        finally:
            if attached:
                self._detach()

    def _detach(self) -> None:
        detach(self.tid)

    def _gate_exec(self, before_release=None, also_check=None) -> str:
        """Follow the thread to its exec stop and check the new program's argv there, then
        also_check(pid) -> None, or what else it ran that the restarted exec's decision did
        not allow (the file loaded, a classified argv)."""
        extra = tuple(os.fsdecode(a) for a in self.extra)

        def argv_ok(pid: int) -> bool:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if not argv_ends_with(f.read(), extra):
                    self.failed = ("ran without the arguments a modify: append_args rule "
                                   "added (rewritten by another thread)")
                    return False
            self.failed = also_check(pid) if also_check is not None else None
            return not self.failed
        return gate_exec(self.tid, argv_ok, syscall_stops=self.nr, before_release=before_release)

    def _argv_pointers(self) -> list[int]:
        out: list[int] = []
        while len(out) < MAX_ARGS:
            (p,) = read_u64_array(self.tid, self.argv_ptr + 8 * len(out), 1)
            if p == 0:
                return out
            out.append(p)
        raise DecodeError(errno.E2BIG, "too many arguments to add to")

    def _wait_stop(self) -> None:
        _wait_stop(self.tid)

    def _write_array(self, rsp: int, pointers: list[int]) -> int:
        """Strings first, then the pointer array (8-byte aligned), below the stack."""
        strings = b"".join(a + b"\0" for a in self.extra)
        count = len(pointers) + len(self.extra) + 1
        size = len(strings) + 16 + 8 * count
        base = (rsp - _BELOW_STACK - size) & ~15
        extra_ptrs, off = [], 0
        for a in self.extra:
            extra_ptrs.append(base + off)
            off += len(a) + 1
        array_at = (base + len(strings) + 15) & ~15
        array = b"".join(p.to_bytes(8, "little") for p in pointers + extra_ptrs + [0])
        blob = strings + b"\0" * (array_at - base - len(strings)) + array
        try:
            write_mem(self.tid, base, blob)
        except DecodeError as e:             # answered already: the caller kills
            raise OSError(e.errno, f"cannot write the new argv below the stack: {e}") from None
        return array_at


def seize_for_exec(tid: int) -> None:
    """Become the thread's tracer (no stop) with exec stops and marked syscall stops:
    RestartUnavailable when ptrace is refused here (or the thread is traced already)."""
    try:
        ptrace(PTRACE_SEIZE, tid, 0, _PTRACE_O_TRACEEXEC | _PTRACE_O_TRACESYSGOOD)
    except OSError as e:
        raise RestartUnavailable(e.errno, f"{e.strerror}: the supervisor may not ptrace "
                                          f"here (container runtime or LSM policy), or the "
                                          f"thread is traced already") from None


def ptrace_works() -> tuple[bool, str]:
    """(whether this process may PTRACE_SEIZE a child of its own, why not): what the
    environment's policy (seccomp profile of a container runtime, an LSM, yama) allows."""
    import signal
    pid = os.fork()
    if pid == 0:
        signal.pause()
        os._exit(0)
    try:
        ptrace(PTRACE_SEIZE, pid)
        try:
            ptrace(PTRACE_DETACH, pid)
        except OSError:
            pass                         # (a running tracee cannot be detached: killed below)
        return True, ""
    except OSError as e:
        return False, f"ptrace refused: {os.strerror(e.errno)}"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def no_tracee_left() -> bool:
    """A tracer thread may serve another exec only when nothing is attached to it any more:
    no tracee, and no exit of one left to collect (a tracee killed as it was let go stays a
    zombie its real parent cannot reap while this thread lives). Otherwise the thread ends,
    which releases whatever it still traces."""
    try:
        os.waitpid(-1, os.WNOHANG | _WALL | _WNOTHREAD)
    except ChildProcessError:
        return True
    return False


def interrupt(tid: int) -> None:
    """Ask for a stop on the thread's way back to user space. Blocked in a notified
    syscall whose wait only a fatal signal ends (WAIT_KILLABLE_RECV), it stops only once
    that syscall returned: the stop then says "the call came back"."""
    ptrace(_PTRACE_INTERRUPT, tid)


def detach(tid: int) -> None:
    """Detach, which needs the thread stopped: interrupt it first if it runs."""
    try:
        ptrace(PTRACE_DETACH, tid)
        return
    except OSError:
        pass
    try:
        ptrace(_PTRACE_INTERRUPT, tid)
        _wait_stop(tid)
        ptrace(PTRACE_DETACH, tid)
    except OSError:
        pass


_WNOTHREAD = 0x20000000


def gate_exec(tid: int, check, syscall_stops: int = 0,
              timeout: float = _EXEC_GATE_TIMEOUT, before_release=None) -> str:
    """Follow a seized thread (seize_for_exec, by this same thread) until its exec is
    over. In the exec stop the new program exists but has not run an instruction:
    check(pid) -> bool decides whether it may (an OSError counts as no). The exec is over
    without a new program when the thread stops on its way back to user space: our
    interrupt (see `interrupt`), a group stop, a signal, or, with `syscall_stops` (the
    exec's syscall number, the thread resumed with PTRACE_SYSCALL), the exit of that
    syscall; the thread is then let go as it was (a signal still delivered, a group stop
    kept). Returns "ok", "killed" (in its exec stop), "returned" (no exec), "gone", or
    "timeout" (killed: nothing decided should run unchecked; not while a restarted exec
    waits for its decision).
    Waits on this thread's own tracee (__WNOTHREAD), whatever its id: a non-leader's exec
    takes over the leader's. before_release() is called while the thread is still held,
    before it is let go, killed or found gone."""
    released = before_release or (lambda: None)
    if not syscall_stops:
        # Blocking in waitpid (the GIL released the whole time, the stop seen at once);
        # the deadline is kept by a watchdog that kills the process.
        token = _DEADLINES.arm(tid, timeout)
        try:
            outcome = _follow_to_exec_stop(check, released)
        finally:
            fired = _DEADLINES.disarm(token)
        return "timeout" if fired and outcome == "gone" else outcome
    deadline = time.monotonic() + timeout
    in_exec = False                  # between the exec's syscall entry and exit stops
    delay = 0.0002
    while True:
        got = _next_stop(os.WNOHANG, released)
        if got is None:
            return "gone"
        pid, status = got
        if pid == 0:
            # (no limit while a restarted exec waits for its decision: it may be held
            # for a human's approval)
            if time.monotonic() > deadline and not in_exec:
                released()
                kill_process_of(tid)
                return "timeout"
            time.sleep(delay)
            delay = min(delay * 2, 0.01)
            continue
        delay = 0.0002
        event, sig = status >> 16, os.WSTOPSIG(status)
        if event == _PTRACE_EVENT_EXEC:
            return _exec_stop(pid, check, released)
        if event == 0 and sig == _SYSCALL_TRAP:
            nr = _getregs(pid).orig_rax
            if nr == syscall_stops and in_exec:
                released()
                _let_go(pid, 0)             # the exec's exit: it failed
                return "returned"
            in_exec = nr == syscall_stops
            _resume(pid, _PTRACE_SYSCALL, 0)
        elif event == _PTRACE_EVENT_STOP and sig in _STOP_SIGNALS:
            _resume(pid, _PTRACE_LISTEN, 0)     # a group stop: stays stopped, still traced
        elif event == _PTRACE_EVENT_STOP:
            _resume(pid, _PTRACE_SYSCALL, 0)    # resumed from a group stop (SIGCONT)
        else:
            _resume(pid, _PTRACE_SYSCALL, sig)  # a signal on its way: delivered


def _follow_to_exec_stop(check, released) -> str:
    """gate_exec without syscall stops, waiting in waitpid."""
    got = _next_stop(0, released)
    if got is None:
        return "gone"
    pid, status = got
    event, sig = status >> 16, os.WSTOPSIG(status)
    if event == _PTRACE_EVENT_EXEC:
        return _exec_stop(pid, check, released)
    # our interrupt (SIGTRAP), a group stop or a signal on its way: the call is back
    released()
    _let_go(pid, 0 if event else sig)
    return "returned"


def _next_stop(flags: int, released) -> tuple[int, int] | None:
    """The next stop of this thread's tracee, (0, 0) when WNOHANG finds none yet, or None
    when the tracee is gone (released() called)."""
    try:
        pid, status = os.waitpid(-1, flags | _WALL | _WNOTHREAD)
    except ChildProcessError:
        released()
        return None
    if pid and not os.WIFSTOPPED(status):
        released()
        return None
    return pid, status


def kill_process_of(tid: int) -> None:
    """SIGKILL the process a thread belongs to (the thread itself when its status cannot be
    read: gone, or never mind)."""
    try:
        os.kill(tgid_of(tid), 9)
    except OSError:
        try:
            os.kill(tid, 9)
        except OSError:
            pass


def _exec_stop(pid: int, check, released) -> str:
    """In the exec stop: let the new program run ("ok") or kill it there ("killed")."""
    try:
        ok = check(pid)
    except OSError:
        ok = False
    released()
    if not ok:
        os.kill(pid, 9)
        return "killed"
    ptrace(PTRACE_DETACH, pid)
    return "ok"


class _Deadlines:
    """Kills the process of a held exec that is not over by its deadline, so that its
    tracer can wait in a blocking waitpid and still never wait for ever (one thread for
    every held exec, started on first use)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._due: dict[int, tuple[float, int]] = {}     # token -> (deadline, tid)
        self._fired: set[int] = set()
        self._tokens = 0
        self._thread: threading.Thread | None = None

    def arm(self, tid: int, timeout: float) -> int:
        with self._cond:
            self._tokens += 1
            self._due[self._tokens] = (time.monotonic() + timeout, tid)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="aarm-exec-deadlines",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()
            return self._tokens

    def disarm(self, token: int) -> bool:
        """Forget the deadline; True when it had passed and the process was killed."""
        with self._cond:
            self._due.pop(token, None)
            if token in self._fired:
                self._fired.discard(token)
                return True
            return False

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [(tok, tid) for tok, (at, tid) in self._due.items() if at <= now]
                for tok, _tid in due:
                    del self._due[tok]
                    self._fired.add(tok)
                if not due:
                    nearest = min((at for at, _ in self._due.values()), default=None)
                    self._cond.wait(None if nearest is None else max(nearest - now, 0.01))
                    continue
            for _tok, tid in due:
                kill_process_of(tid)


_DEADLINES = _Deadlines()


def _resume(pid: int, how: int, sig: int) -> None:
    try:
        ptrace(how, pid, 0, sig)
    except OSError:
        pass


def _let_go(pid: int, sig: int) -> None:
    """Detach from a stopped tracee, delivering `sig` (a group stop stays in effect)."""
    try:
        ptrace(PTRACE_DETACH, pid, 0, sig)
    except OSError:
        pass


def _wait_stop(tid: int) -> None:
    deadline = time.monotonic() + _STOP_TIMEOUT
    while True:
        pid, status = os.waitpid(tid, os.WNOHANG | _WALL)
        if pid == tid:
            if os.WIFSTOPPED(status):
                return
            raise OSError(errno.ESRCH, f"thread {tid} ended before its exec restarted")
        if time.monotonic() > deadline:
            raise OSError(errno.ETIMEDOUT, f"thread {tid} did not stop for the restart")
        time.sleep(0.0002)


def argv_ends_with(cmdline: bytes, extra: tuple[str, ...]) -> bool:
    """Whether /proc/PID/cmdline (NUL-separated) ends with the added arguments."""
    args = cmdline.split(b"\0")
    if args and args[-1] == b"":
        args.pop()
    tail = [os.fsencode(a) for a in extra]
    return len(args) >= len(tail) and args[len(args) - len(tail):] == tail
