"""seccomp user-notification backend: the listener fd the launcher handed over."""
from __future__ import annotations

import errno
import os
from collections.abc import Callable

from aarm_sandbox._native import ffi, lib
from aarm_sandbox.decode.handlers import Notification

SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
SECCOMP_ADDFD_FLAG_SETFD = 1 << 0
SECCOMP_ADDFD_FLAG_SEND = 1 << 1
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP = 1
O_CLOEXEC = os.O_CLOEXEC


class UnotifyBackend:
    name = "seccomp-unotify"

    def __init__(self, listener: int, sandbox_gone: Callable[[], bool]):
        self.fd = listener
        self._n = ffi.new("struct aarm_notif *")
        self._sandbox_gone = sandbox_gone
        self.sandbox_gone = sandbox_gone
        self.sync_wakeup = lib.aarm_notif_set_flags(listener, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP) == 0

    def receive(self) -> Notification | None:
        n = self._n
        while True:
            r = lib.aarm_notif_recv(self.fd, n)
            if r == 0:
                d = n.data
                a = d.args
                return Notification(n.id, n.pid, d.nr, d.arch, (a[0], a[1], a[2], a[3], a[4], a[5]))
            if r == -errno.ENOENT:
                # The notifying task died before we read it, or no task is left at all.
                if self._sandbox_gone():
                    return None
                continue
            if r in (-errno.EINTR, -errno.EAGAIN):
                continue
            return None

    def still_pending(self, n: Notification) -> bool:
        return lib.aarm_notif_id_valid(self.fd, n.id) == 0

    def answer_value(self, n: Notification, value: int) -> None:
        lib.aarm_notif_send(self.fd, n.id, value, 0, 0)

    def answer_error(self, n: Notification, err: int) -> None:
        lib.aarm_notif_send(self.fd, n.id, 0, -abs(err) if err else -errno.EPERM, 0)

    def answer_continue(self, n: Notification) -> None:
        lib.aarm_notif_send(self.fd, n.id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE)

    def answer_with_fd(self, n: Notification, fd: int, cloexec: bool) -> int:
        return lib.aarm_notif_addfd(self.fd, n.id, fd, 0, O_CLOEXEC if cloexec else 0,
                                    SECCOMP_ADDFD_FLAG_SEND)

    def replace_fd(self, n: Notification, fd: int, target_fd: int, cloexec: bool) -> int:
        """Install `fd` as the target's fd number `target_fd` (dup2 semantics), without
        answering: a brokered socket takes the place of the sandbox's own."""
        return lib.aarm_notif_addfd(self.fd, n.id, fd, target_fd, O_CLOEXEC if cloexec else 0,
                                    SECCOMP_ADDFD_FLAG_SETFD)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
