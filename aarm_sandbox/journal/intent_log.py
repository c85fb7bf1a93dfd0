"""Intent lines stored through a shared mapping of the intents file (native/aarm_intentlog.c).

A store into a MAP_SHARED mapping puts the line in the file's page cache as a returned
write(2) does, without the system call: the native fast path writes an intent before every
delete it performs, and the write(2) was ~0.5 µs of each. Python's own intent lines go
through the same log, so lines of both stay whole and in order.
"""

from __future__ import annotations

import errno
import os

from aarm_sandbox._native import ffi, lib


class IntentLog:
    """The mapped intents file of one session, or None from `open` where the file cannot
    be mapped safely (see aarm_intentlog.h): the journal then write(2)s its lines."""

    def __init__(self, ptr) -> None:
        self.ptr = ptr

    @classmethod
    def open(cls, fd: int) -> IntentLog | None:
        ptr = lib.aarm_intent_log_new(fd)
        if ptr == ffi.NULL:
            return None
        return cls(ptr)

    def append(self, line: bytes) -> None:
        r = lib.aarm_intent_log_append(self.ptr, line, len(line))
        if r < 0:
            raise OSError(-r, os.strerror(-r))

    @property
    def used(self) -> int:
        return lib.aarm_intent_log_used(self.ptr)

    def close(self) -> None:
        """Trim the file to its lines; appends fail with EBADF from here on."""
        r = lib.aarm_intent_log_close(self.ptr)
        if r < 0 and r != -errno.EINVAL:
            raise OSError(-r, os.strerror(-r))

