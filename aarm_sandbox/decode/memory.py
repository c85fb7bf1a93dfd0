"""Bounded reads of the target's memory (process_vm_readv through the native module), and
the one kind of write MODIFY needs (exec arguments: enforce.exec_env, enforce.exec_argv).

Every read returns a private copy; the caller decides on that copy only. Unreadable memory
raises DecodeError carrying the errno the kernel itself would have returned (EFAULT,
ENAMETOOLONG), so the supervisor can fail the syscall exactly as native would.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator

from aarm_sandbox._native import ffi, lib

PATH_MAX = 4096


class DecodeError(Exception):
    """The arguments cannot be read or are malformed; `errno` is what the syscall returns."""

    def __init__(self, err: int, what: str):
        super().__init__(what)
        self.errno = err


_path_buf = ffi.new("char[]", PATH_MAX + 1)


def read_path(pid: int, addr: int) -> bytes:
    """The NUL-terminated path at `addr`, at most PATH_MAX bytes including the NUL."""
    if addr == 0:
        raise DecodeError(errno.EFAULT, "NULL path pointer")
    n = lib.aarm_read_cstr(pid, addr, _path_buf, PATH_MAX)
    if n < 0:
        raise DecodeError(-n, f"cannot read path at {addr:#x}")
    return ffi.unpack(_path_buf, n)


def read_bytes(pid: int, addr: int, length: int, limit: int = 1 << 20) -> bytes:
    if length < 0 or length > limit:
        raise DecodeError(errno.EINVAL, f"buffer length {length} over limit {limit}")
    if length == 0:
        return b""
    if addr == 0:
        raise DecodeError(errno.EFAULT, "NULL buffer pointer")
    buf = ffi.new("char[]", length)
    n = lib.aarm_read_mem(pid, addr, buf, length)
    if n < 0:
        raise DecodeError(-n, f"cannot read {length} bytes at {addr:#x}")
    if n != length:
        raise DecodeError(errno.EFAULT, f"short read {n}/{length} at {addr:#x}")
    return ffi.unpack(buf, length)


def read_u64_array(pid: int, addr: int, count: int) -> list[int]:
    raw = read_bytes(pid, addr, 8 * count)
    return [int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 8)]


def _strings(pid: int, addr: int, max_items: int, max_total: int, what: str) -> Iterator[bytes]:
    """The strings of a NULL-terminated pointer array (execve argv, envp), bounded in count
    and size (DecodeError beyond them)."""
    total = 0
    if addr == 0:
        return
    for i in range(max_items):
        (ptr,) = read_u64_array(pid, addr + 8 * i, 1)
        if ptr == 0:
            return
        s = read_path_unbounded(pid, ptr)
        total += len(s)
        if total > max_total:
            raise DecodeError(errno.E2BIG, f"{what} too large to read")
        yield s
    raise DecodeError(errno.E2BIG, f"too many entries in {what}")


def read_argv(pid: int, addr: int, max_args: int = 4096, max_total: int = 1 << 20) -> list[bytes]:
    """execve's argv."""
    return list(_strings(pid, addr, max_args, max_total, "argv"))


def read_env_prefixed(pid: int, addr: int, prefix: bytes, max_vars: int = 4096,
                      max_total: int = 1 << 20) -> dict[str, str]:
    """NAME=VALUE entries of an execve envp whose name starts with prefix (the first of a
    name counts, as for getenv)."""
    return env_prefixed(_strings(pid, addr, max_vars, max_total, "the environment"), prefix)


def env_prefixed(entries: Iterable[bytes], prefix: bytes) -> dict[str, str]:
    """NAME=VALUE entries whose name starts with prefix, the first of a name counting (as
    for getenv): of an envp array, or of a /proc/PID/environ block split at its NULs."""
    out: dict[str, str] = {}
    for s in entries:
        if s.startswith(prefix):
            name, _eq, value = s.partition(b"=")
            out.setdefault(os.fsdecode(name), os.fsdecode(value))
    return out


_arg_buf = ffi.new("char[]", 131072 + 1)


def read_path_unbounded(pid: int, addr: int) -> bytes:
    n = lib.aarm_read_cstr(pid, addr, _arg_buf, 131072)
    if n < 0:
        raise DecodeError(-n, f"cannot read string at {addr:#x}")
    return ffi.unpack(_arg_buf, n)


def write_mem(pid: int, addr: int, data: bytes) -> None:
    """Write `data` at `addr` in the target (one process_vm_writev); DecodeError unless all
    of it was written."""
    n = lib.aarm_write_mem(pid, addr, data, len(data))
    if n != len(data):
        raise DecodeError(-n if n < 0 else errno.EFAULT, f"cannot write {len(data)} bytes at {addr:#x}")
