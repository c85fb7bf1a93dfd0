"""The few libc calls Python's os/socket modules don't expose with raw semantics
(unlinkat flags, fchownat AT_EMPTY_PATH, connect/bind/sendto with exact sockaddr bytes).
Each returns the syscall's result or -errno, never raises."""
from __future__ import annotations

from cffi import FFI

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200
AT_SYMLINK_FOLLOW = 0x400
AT_EMPTY_PATH = 0x1000
SOL_SOCKET = 1
SO_TYPE = 3
SO_DOMAIN = 39

_ffi = FFI()
_ffi.cdef("""
int unlinkat(int dirfd, const char *pathname, int flags);
int fchownat(int dirfd, const char *pathname, unsigned int owner, unsigned int group, int flags);
int connect(int sockfd, const void *addr, unsigned int addrlen);
int bind(int sockfd, const void *addr, unsigned int addrlen);
long sendto(int sockfd, const void *buf, size_t len, int flags, const void *dest, unsigned int addrlen);
int getsockopt(int sockfd, int level, int optname, void *optval, unsigned int *optlen);
""")
_c = _ffi.dlopen(None)


def _ret(r: int) -> int:
    return r if r >= 0 else -_ffi.errno


def unlinkat(dirfd: int, name: bytes, flags: int) -> int:
    return _ret(_c.unlinkat(dirfd, name, flags))


def fchownat(dirfd: int, name: bytes, uid: int, gid: int, flags: int) -> int:
    return _ret(_c.fchownat(dirfd, name, uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, flags))


def connect(fd: int, addr: bytes) -> int:
    return _ret(_c.connect(fd, addr, len(addr)))


def bind(fd: int, addr: bytes) -> int:
    return _ret(_c.bind(fd, addr, len(addr)))


def sendto(fd: int, payload: bytes, flags: int, addr: bytes) -> int:
    return _ret(_c.sendto(fd, payload, len(payload), flags, addr if addr else _ffi.NULL, len(addr)))


def sockopt_int(fd: int, opt: int) -> int:
    val = _ffi.new("int *")
    ln = _ffi.new("unsigned int *", 4)
    r = _c.getsockopt(fd, SOL_SOCKET, opt, val, ln)
    return val[0] if r == 0 else -_ffi.errno


def sockaddr_un(path: bytes) -> bytes:
    return (1).to_bytes(2, "little") + path + b"\0"
