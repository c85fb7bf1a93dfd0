"""The terminal approver: asks the human at `run`'s terminal, which the sandbox shares.

The sandboxed command is the terminal's foreground process group, so a naive prompt
would be answerable by the agent (it can write "y\\n" into its own input) or readable by it
(a process blocked in read() takes the human's line first). While one request is asked:

* the supervisor's process group takes the foreground (tcsetpgrp), so a sandboxed read
  stops with SIGTTIN and, with TOSTOP, a sandboxed write stops with SIGTTOU: it can
  neither see the answer nor draw over the prompt;
* a read that was *already blocked* when the foreground moved is not re-checked by the
  kernel (job control is tested only on entry to read()), so every running process of
  the old foreground group is stopped and continued once: its read restarts through the
  job-control check and stops with SIGTTIN;
* a process that ignores SIGTTOU can take the foreground back with tcsetpgrp; each tick
  checks, and the terminal is retaken, its readers stopped, and typed input discarded;
* type-ahead from before the prompt was shown is flushed; ISIG is off, so Ctrl-C is read
  as "deny" (it also ends the line) and never becomes a SIGINT for the sandbox;
* everything is restored in `finally`: termios, the foreground group, then SIGCONT so
  readers and writers stopped meanwhile continue.
"""
from __future__ import annotations

import errno
import fcntl
import os
import pwd
import select
import signal
import struct
import sys
import termios
import threading
import time
from collections import deque

from aarm_sandbox.approvals.view import render_request
from aarm_sandbox.enforce.freeze import stop_through_pidfd
from aarm_sandbox.procfs import descends_from, stat_fields
from aarm_sandbox.journal.render import escape

PROMPT = "approve? [y] once  [s] for this session  [n] deny  > "
TICK = 0.2                      # how often a waiting prompt checks for answers elsewhere
STOP_WAIT = 0.25                # at most this long for old-foreground processes to stop
_TIOCGSID = getattr(termios, "TIOCGSID", 0x5429)
_RUNNING = frozenset("RS")      # task states that may be inside (or about to enter) read()


class TerminalApprover:
    """Asks pending requests one at a time on the controlling terminal."""

    def __init__(self, broker, tty_path: str = "/dev/tty") -> None:
        self.broker = broker
        self.tty_path = tty_path
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._fd = -1

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def available(cls, tty_path: str = "/dev/tty") -> bool:
        """stdin is a terminal and it is our controlling terminal (same session), whether
        our group or the sandboxed command's group is in the foreground."""
        try:
            if not os.isatty(0):
                return False
            fd = os.open(tty_path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            return _tcgetsid(fd) == os.getsid(0)
        except OSError:
            return False
        finally:
            os.close(fd)

    @staticmethod
    def prepare_main_thread():
        """Ignore SIGTTOU (process-wide, so it must be done from the main thread): the
        approver thread takes the foreground with tcsetpgrp while in the background,
        which would otherwise stop the whole supervisor. Returns the old handler."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("prepare_main_thread must be called from the main thread")
        return signal.signal(signal.SIGTTOU, signal.SIG_IGN)

    def start(self) -> "TerminalApprover":
        self._thread = threading.Thread(target=self._run, name="aarm-terminal-approver",
                                        daemon=True)
        self._thread.start()
        return self

    def submit(self, request_id: str) -> None:
        """Queue a request for the human (any thread; never blocks)."""
        with self._cond:
            if not self._stopping and request_id not in self._queue:
                self._queue.append(request_id)
                self._cond.notify()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop asking; a prompt on screen is abandoned (the terminal restored) within a
        tick, and its request is left to other approvers or its timeout."""
        with self._cond:
            self._stopping = True
            self._queue.clear()
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        with self._cond:
            return self._stopping

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        # Blocked here, SIGTTIN/SIGTTOU count as ignored for this thread: if the foreground
        # is taken from us mid-prompt, our read fails with EIO instead of the kernel
        # stopping the whole supervisor with SIGTTIN.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTIN, signal.SIGTTOU})
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._stopping:
                        self._cond.wait()
                    if self._stopping:
                        return
                    request_id = self._queue.popleft()
                entry = self.broker.get(request_id)
                if entry is None:
                    continue
                if not self._ask(entry):         # EOF on the terminal
                    with self._cond:
                        self._stopping = True
                    return
        except Exception as e:  # noqa: BLE001 - the session goes on; others may answer
            print(f"aarm-sandbox: terminal approver stopped: {escape(str(e))}", file=sys.stderr)
        finally:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _tty(self) -> int:
        if self._fd < 0:
            self._fd = os.open(self.tty_path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
            os.set_blocking(self._fd, False)    # another reader may take a line select saw
        return self._fd

    def _ask(self, entry: dict) -> bool:
        """Ask one request; False when the terminal reached EOF."""
        fd = self._tty()
        request_id = entry["request"]
        if not self._wait_for_terminal(fd, request_id):
            return True
        own = os.getpgrp()
        fg = os.tcgetpgrp(fd)
        saved = termios.tcgetattr(fd)
        # The whole sandboxed tree pauses while the human reads and answers: job control
        # stops only processes of this terminal's session, and one that called setsid()
        # keeps its fds to the terminal, free to draw a fake request over the real one and
        # to read the keys typed for it.
        freezer = getattr(self.broker, "freezer", None)
        if freezer is not None:
            freezer.freeze()
        try:
            if fg != own:
                os.tcsetpgrp(fd, own)
                kick_readers(fg)
            termios.tcsetattr(fd, termios.TCSANOW, prompt_mode(saved))
            termios.tcflush(fd, termios.TCIFLUSH)
            with self._cond:
                waiting = len(self._queue)
            more = f"({waiting} more waiting)\n" if waiting else ""
            self._write(fd, "\r\n" + render_request(entry["view"], entry["action_hash"]) + "\n"
                        + more + PROMPT)
            return self._read_answer(fd, entry, saved)
        finally:
            try:
                termios.tcsetattr(fd, termios.TCSANOW, saved)
            except termios.error:
                pass
            if fg != own:
                try:
                    os.killpg(fg, 0)
                    os.tcsetpgrp(fd, fg)
                except OSError:
                    pass
                try:
                    os.killpg(fg, signal.SIGCONT)
                except OSError:
                    pass
                if freezer is not None:
                    freezer.reassert()   # (a signals freeze other requests still hold)
            if freezer is not None:
                freezer.thaw()

    def _retake(self, fd: int, saved: list) -> None:
        """A process that ignores SIGTTOU may call tcsetpgrp while we ask: take the
        terminal back, stop its readers the same way, and discard whatever was typed
        meanwhile (it may have been read or answered by that process)."""
        thief = os.tcgetpgrp(fd)
        os.tcsetpgrp(fd, os.getpgrp())
        kick_readers(thief)
        termios.tcsetattr(fd, termios.TCSANOW, prompt_mode(saved))
        termios.tcflush(fd, termios.TCIFLUSH)
        self._write(fd, "\n(another process took the terminal; anything typed meanwhile was "
                        "discarded)\n" + PROMPT)

    def _wait_for_terminal(self, fd: int, request_id: str) -> bool:
        """Wait while the foreground belongs to someone else (e.g. `run` itself is a
        background job of the user's shell): never take the terminal from a shell."""
        while not self.stopping and self.broker.is_pending(request_id):
            fg = os.tcgetpgrp(fd)
            if fg == os.getpgrp() or not is_foreign_group(fg):
                return True
            time.sleep(TICK)
        return False

    def _read_answer(self, fd: int, entry: dict, saved: list) -> bool:
        request_id = entry["request"]
        while True:
            if self.stopping:
                self._write(fd, "\r\n(the terminal approver stopped)\r\n")
                return True
            if not self.broker.is_pending(request_id):
                self._write(fd, "\r\n(answered elsewhere or expired)\r\n")
                return True
            if os.tcgetpgrp(fd) != os.getpgrp():
                self._retake(fd, saved)
                continue
            if not select.select([fd], [], [], TICK)[0]:
                continue
            try:
                line = os.read(fd, 4096)
            except BlockingIOError:
                continue
            except OSError as e:
                if e.errno == errno.EIO and os.tcgetpgrp(fd) != os.getpgrp():
                    continue                    # taken from us: retaken at the loop's top
                if e.errno == errno.EIO:        # hung up
                    return False
                raise
            if not line:
                return False
            choice = parse_answer(line)
            if choice is None:
                self._write(fd, "please answer y, s or n\n" + PROMPT)
                continue
            approve, scope = choice
            status, body = self.broker.answer(
                request_id, entry["action_hash"], approve, approver_identity(fd),
                None if approve else "denied at the terminal", scope)
            self._write(fd, outcome_line(request_id, approve, scope, status, body) + "\n")
            return True

    def _write(self, fd: int, text: str) -> None:
        data = text.encode("utf-8", "backslashreplace")
        while data:
            try:
                data = data[os.write(fd, data):]
            except BlockingIOError:
                if self.stopping:
                    return
                select.select([], [fd], [], TICK)


def _tcgetsid(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, _TIOCGSID, b"\0" * 4))[0]


def prompt_mode(saved: list) -> list:
    """Termios for the prompt: a cooked, echoing line; no signals from keys (Ctrl-C is
    a character and, as VEOL, also ends the line); background writers stop (TOSTOP)."""
    attrs = [saved[0], saved[1], saved[2], saved[3], saved[4], saved[5], list(saved[6])]
    attrs[0] = (attrs[0] | termios.ICRNL) & ~(termios.INLCR | termios.IGNCR)
    attrs[1] |= termios.OPOST | termios.ONLCR
    attrs[3] = ((attrs[3] | termios.ICANON | termios.ECHO | termios.ECHOE | termios.ECHOK
                 | termios.TOSTOP) & ~termios.ISIG)
    attrs[6][termios.VEOL] = b"\x03"
    return attrs


def parse_answer(line: bytes) -> tuple[bool, str] | None:
    """(approve, scope) for a typed line, None to ask again."""
    if b"\x03" in line:
        return False, "once"
    text = line.decode("utf-8", "replace").strip().lower()
    return {"y": (True, "once"), "yes": (True, "once"), "s": (True, "session"),
            "n": (False, "once"), "no": (False, "once")}.get(text)


def approver_identity(fd: int) -> dict:
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = None
    return {"channel": "terminal", "tty": tty_name(fd), "uid": os.getuid(), "user": user}


def tty_name(fd: int) -> str:
    """The terminal's own name (/dev/pts/3), not the /dev/tty alias we opened it by."""
    name = os.ttyname(fd)
    fields = stat_fields("/proc/self/stat")
    if name != "/dev/tty" or fields is None:
        return name
    dev = int(fields[4])                        # tty_nr: the controlling terminal
    for std in (0, 1, 2):
        try:
            if os.isatty(std) and os.fstat(std).st_rdev == dev:
                return os.ttyname(std)
        except OSError:
            pass
    if 136 <= os.major(dev) <= 143:             # Unix98 pty slaves
        return f"/dev/pts/{(os.major(dev) - 136) * 256 + os.minor(dev)}"
    return name


def outcome_line(request_id: str, approve: bool, scope: str, status: int, body) -> str:
    if status != 200:
        error = body.get("error", body) if isinstance(body, dict) else body
        return f"answer for {escape(request_id)} not accepted ({status}): {escape(error)}"
    if not approve:
        return f"denied {escape(request_id)}"
    return f"approved {escape(request_id)} " + ("once" if scope == "once" else "for this session")


# ---------------------------------------------------------------------- process groups

def group_members(pgid: int) -> list[int]:
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = stat_fields(f"/proc/{name}/stat")
            if fields is not None and int(fields[2]) == pgid:
                members.append(int(name))
    return members


def is_foreign_group(pgid: int) -> bool:
    """True when process group `pgid` has members and none of them is ours (a
    descendant of this process): it is the user's shell or another job."""
    members = group_members(pgid)
    me = os.getpid()
    return bool(members) and not any(descends_from(p, me, unknown=False) for p in members)


def _running(pid: int) -> bool:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tasks:
        fields = stat_fields(f"/proc/{pid}/task/{tid}/stat")
        if fields is not None and fields[0] in _RUNNING:
            return True
    return False


def kick_readers(pgid: int) -> None:
    """Stop and continue every running process of `pgid` (called right after the
    foreground moved away from it), so a read() already blocked on the terminal restarts
    and meets the job-control check. Processes already stopped (SIGTTIN, a freeze) are
    left alone: their read restarts through the same check when they continue. pidfds
    make sure a recycled pid is never signalled."""
    pidfds = []
    for pid in group_members(pgid):
        if not _running(pid):
            continue
        pidfd = stop_through_pidfd(pid)
        if pidfd is not None:
            pidfds.append((pid, pidfd))
    deadline = time.monotonic() + STOP_WAIT
    while time.monotonic() < deadline and any(_running(pid) for pid, _ in pidfds):
        time.sleep(0.002)
    for _, pidfd in pidfds:
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGCONT)
        except OSError:
            pass
        os.close(pidfd)
