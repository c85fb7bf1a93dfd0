"""The one protocol every interception backend (seccomp unotify, ptrace) implements.

The supervisor only ever talks to this: receive a Notification, check it is still live,
answer it. Which kernel mechanism delivered it is the backend's business (gVisor's
platform split)."""
from __future__ import annotations

from typing import Protocol

from aarm_sandbox.decode.handlers import Notification


class InterceptBackend(Protocol):
    name: str

    def receive(self) -> Notification | None:
        """Next intercepted syscall; None once no sandboxed task remains."""

    def still_pending(self, n: Notification) -> bool:
        """True while the target still waits in this syscall (after reading its memory)."""

    def answer_value(self, n: Notification, value: int) -> None: ...
    def answer_error(self, n: Notification, err: int) -> None: ...
    def answer_continue(self, n: Notification) -> None: ...

    def answer_with_fd(self, n: Notification, fd: int, cloexec: bool) -> int:
        """Install `fd` in the target and make the syscall return its number (or -errno)."""

    def replace_fd(self, n: Notification, fd: int, target_fd: int, cloexec: bool) -> int:
        """Put our fd in place of the target's `target_fd` before answering; -errno."""

    def close(self) -> None: ...
