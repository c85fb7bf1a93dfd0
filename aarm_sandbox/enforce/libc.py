"""The few libc calls Python's os/socket modules don't expose with raw semantics
(unlinkat flags, fchownat AT_EMPTY_PATH, connect/bind/sendto with exact sockaddr bytes).
Compiled into the native module; each returns the syscall's result or -errno."""
from __future__ import annotations

import ctypes

from aarm_sandbox._native import ffi, lib

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200
AT_SYMLINK_FOLLOW = 0x400
AT_EMPTY_PATH = 0x1000
SOL_SOCKET = 1
SO_TYPE = 3
SO_DOMAIN = 39
SO_PROTOCOL = 38


_c = ctypes.CDLL(None, use_errno=True)
_c.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_c.fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> int:
    r = _c.fallocate(fd, mode, offset, length)
    return -ctypes.get_errno() if r < 0 else 0


def unlinkat(dirfd: int, name: bytes, flags: int) -> int:
    return lib.aarm_unlinkat(dirfd, name, flags)


def fchownat(dirfd: int, name: bytes, uid: int, gid: int, flags: int) -> int:
    return lib.aarm_fchownat(dirfd, name, uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, flags)


def connect(fd: int, addr: bytes) -> int:
    return lib.aarm_connect(fd, addr, len(addr))


def bind(fd: int, addr: bytes) -> int:
    return lib.aarm_bind(fd, addr, len(addr))


def sendto(fd: int, payload: bytes, flags: int, addr: bytes) -> int:
    return lib.aarm_sendto(fd, payload, len(payload), flags, addr if addr else ffi.NULL, len(addr))


def sockopt_int(fd: int, opt: int) -> int:
    return lib.aarm_sockopt_int(fd, SOL_SOCKET, opt)


def sockaddr_un(path: bytes) -> bytes:
    return (1).to_bytes(2, "little") + path + b"\0"
