"""Operations the supervisor performs itself on behalf of the target (emulation).

Each Effect holds pinned kernel objects (O_PATH fds of the parent directory or the object,
or a pidfd_getfd'd copy of the target's own fd) plus the private copy of every argument,
and performs the syscall on those: the target's memory is never read again, so rewriting
it while the supervisor decides changes nothing. `perform()` returns the value the
target's syscall returns, or -errno, exactly as the kernel would have.
"""
from __future__ import annotations

import errno
import os
import stat
import threading

from aarm_sandbox._native import ffi, lib
from aarm_sandbox.decode.memory import DecodeError, write_mem
from aarm_sandbox.decode.paths import RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS
from aarm_sandbox.enforce import libc

# The effects are plain classes with explicit __init__ (not dataclasses): this module is
# imported on every session's startup path, where each dataclass definition costs ~0.5 ms.


class Effect:
    """Base: what to do once the policy allowed the action."""
    blocking = False          # True: may block (FIFO open, connect): run off the main loop
    performed = False         # True: it happened although the call failed (see _enforce)

    def perform(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        for fd in self._fds():
            if fd is not None and fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _fds(self) -> tuple:
        return ()


class Continue(Effect):
    """Let the kernel run the syscall. Only for calls whose outcome no user memory decides
    (umask) or that cannot be emulated (exec, verified afterwards)."""

    def perform(self) -> int:
        return 0


# The open flags the kernel keeps (VALID_OPEN_FLAGS, x86_64): open() drops any other bit,
# openat2 refuses it (EINVAL); masked, the two behave alike.
_VALID_OPEN_FLAGS = 0o37777703
_RESOLVE_NO_LINKS = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS


class NameAppeared(Exception):
    """An exclusive create met a name that appeared after the decision: decide again."""


class OpenFile(Effect):
    """Open through a pinned fd and install the result with ADDFD|SEND.

    `no_follow`: `name` must not be followed if it is a symlink (it is the very name that
    was decided on). That is RESOLVE_NO_SYMLINKS rather than O_NOFOLLOW, which would stay
    in the open file's flags: the caller's F_GETFL would show it, a native open's does
    only when the caller asked for it (then it is in `flags`)."""

    exclusive_create = False    # this open creates the file it opens (O_EXCL, decided as create)
    redecide_if_exists = False  # EEXIST is not the caller's answer: raise NameAppeared

    def __init__(self, dirfd: int, name: bytes, objfd: int, flags: int, mode: int,
                 cloexec: bool, opath_passthrough: bool = False, blocking: bool = False,
                 opened: int = -1, no_follow: bool = False):
        self.dirfd = dirfd                   # parent dir (create) or -1
        self.name = name                     # name in dirfd, or b"" to reopen `objfd`
        self.objfd = objfd                   # O_PATH fd of the existing object, or -1
        self.flags = flags
        self.mode = mode
        self.cloexec = cloexec
        self.opath_passthrough = opath_passthrough  # O_PATH open: hand our O_PATH fd over as is
        self.blocking = blocking
        self.opened = opened
        self.no_follow = no_follow

    def replace(self, **changes) -> "OpenFile":
        """A new OpenFile with `changes` applied to this one's fields (MODIFY transforms)."""
        fields = {"dirfd": self.dirfd, "name": self.name, "objfd": self.objfd,
                  "flags": self.flags, "mode": self.mode, "cloexec": self.cloexec,
                  "opath_passthrough": self.opath_passthrough, "blocking": self.blocking,
                  "opened": self.opened, "no_follow": self.no_follow}
        fields.update(changes)
        return OpenFile(**fields)

    def undo_create(self) -> bool:
        """Remove the file this exclusive create made, if its name still is that file."""
        if not self.exclusive_create or self.opened < 0 or self.dirfd < 0:
            return False
        try:
            made, now = os.fstat(self.opened), os.stat(self.name, dir_fd=self.dirfd,
                                                      follow_symlinks=False)
            if (made.st_dev, made.st_ino) != (now.st_dev, now.st_ino):
                return False
            os.unlink(self.name, dir_fd=self.dirfd)
            return True
        except OSError:
            return False

    def perform(self) -> int:
        try:
            if self.opath_passthrough:
                return self._path_open()
            if self.objfd >= 0:
                self.opened = os.open(f"/proc/self/fd/{self.objfd}", self.flags, self.mode)
            elif self.no_follow:
                fd = lib.aarm_openat2(self.dirfd, self.name, self.flags & _VALID_OPEN_FLAGS,
                                      self.mode if self.flags & os.O_CREAT else 0,
                                      _RESOLVE_NO_LINKS)
                if fd < 0:
                    if fd == -errno.EEXIST and self.redecide_if_exists:
                        raise NameAppeared()
                    return fd
                self.opened = fd
            else:
                self.opened = os.open(self.name, self.flags, self.mode, dir_fd=self.dirfd)
        except OSError as e:
            return -e.errno
        return self.opened

    def _path_open(self) -> int:
        """O_PATH: the kernel will not install an O_PATH file into another process
        (SECCOMP_IOCTL_NOTIF_ADDFD takes only full files: every such open failed EBADF), so
        the very object decided on is reopened read-only - a directory as a directory, a
        regular file without blocking - which the read decision covered. Anything else (a
        symlink itself, a FIFO, a socket, a device: opening those acts on them) is refused:
        EOPNOTSUPP, said in the journal like any error."""
        try:
            mode = os.fstat(self.objfd).st_mode
            if self.flags & os.O_DIRECTORY and not stat.S_ISDIR(mode):
                return -errno.ENOTDIR
            if stat.S_ISDIR(mode):
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            elif stat.S_ISREG(mode):
                flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
            else:
                return -errno.EOPNOTSUPP
            self.opened = os.open(f"/proc/self/fd/{self.objfd}", flags)
            if stat.S_ISREG(mode):
                os.set_blocking(self.opened, True)
        except OSError as e:
            return -e.errno
        return self.opened

    def _fds(self):
        return (self.dirfd, self.objfd, self.opened)


class AtCall(Effect):
    """A *at() call on pinned directory fds (unlink, rename, mkdir, symlink, link, mknod)."""

    def __init__(self, op: str, fd1: int, name1: bytes, fd2: int = -1, name2: bytes = b"",
                 arg: int = 0, arg2: int = 0, extra: bytes = b""):
        self.op = op
        self.fd1 = fd1
        self.name1 = name1
        self.fd2 = fd2
        self.name2 = name2
        self.arg = arg
        self.arg2 = arg2
        self.extra = extra

    def perform(self) -> int:
        op = self.op
        if op == "unlink":
            if mount_point(self.fd1, self.name1):
                return -errno.EBUSY
            return libc.unlinkat(self.fd1, self.name1, self.arg)
        if op == "rename":
            if mount_point(self.fd1, self.name1) or mount_point(self.fd2, self.name2):
                return -errno.EBUSY
            return lib.aarm_renameat2(self.fd1, self.name1, self.fd2, self.name2, self.arg)
        if op == "mkdir":
            return _call(lambda: os.mkdir(self.name1, self.arg, dir_fd=self.fd1))
        if op == "symlink":
            return _call(lambda: os.symlink(self.extra, self.name1, dir_fd=self.fd1))
        if op == "link":     # fd2 = O_PATH fd of the source object (pinned inode)
            return lib.aarm_linkat(libc.AT_FDCWD, f"/proc/self/fd/{self.fd2}".encode(),
                                   self.fd1, self.name1, libc.AT_SYMLINK_FOLLOW)
        if op == "mknod":
            return _call(lambda: os.mknod(self.name1, self.arg, self.arg2, dir_fd=self.fd1))
        return -errno.ENOSYS

    def _fds(self):
        return (self.fd1, self.fd2)


class QuarantineDelete(Effect):
    """MODIFY/quarantine: the entry an unlink or rmdir would remove is moved into the
    session's trash instead (outside the sandbox's view), so `aarm-sandbox restore` can
    put it back."""

    def __init__(self, unlink: AtCall, store, original_path: str, record: dict):
        self.unlink = unlink
        self.store = store
        self.original_path = original_path
        self.record = record            # the receipt's "modified" block: gets the trash path

    def perform(self) -> int:
        if mount_point(self.unlink.fd1, self.unlink.name1):
            return -errno.EBUSY
        r, trash = self.store.stash(self.unlink.fd1, self.unlink.name1, self.original_path,
                                    is_dir=bool(self.unlink.arg & 0x200))   # AT_REMOVEDIR
        if trash is not None:
            self.record["trash"] = trash
        return r

    def close(self) -> None:
        self.unlink.close()


def mount_point(dirfd: int, name: bytes) -> bool:
    """name in dirfd is a mount point of the sandbox (a masked credential file, a bind, a
    view): removing or renaming it is EBUSY, as the kernel answers inside the sandbox. The
    supervisor's own unlinkat/renameat are not refused - the kernel checks the caller's
    mount namespace, not the sandbox's - and would remove what the mount hides."""
    name = name.rstrip(b"/") or name
    return name not in (b".", b"..", b"/") and lib.aarm_is_mount_root(dirfd, name) == 1


def _call(fn) -> int:
    try:
        fn()
    except OSError as e:
        return -e.errno
    return 0


class ObjectCall(Effect):
    """Metadata/content change on a pinned object (truncate, chmod, chown, utime, xattr)."""

    def __init__(self, op: str, objfd: int, arg: int = 0, arg2: int = 0,
                 times: tuple | None = None, name: bytes = b"", value: bytes = b"",
                 is_fd_copy: bool = False, arg3: int = 0):
        self.op = op
        self.objfd = objfd
        self.arg = arg
        self.arg2 = arg2
        self.arg3 = arg3
        self.times = times
        self.name = name
        self.value = value
        self.is_fd_copy = is_fd_copy     # objfd is a pidfd_getfd copy of the target's fd

    def perform(self) -> int:
        p = f"/proc/self/fd/{self.objfd}"
        op = self.op
        if op == "truncate":
            return _call(lambda: os.ftruncate(self.objfd, self.arg)) if self.is_fd_copy \
                else _call(lambda: os.truncate(p, self.arg))
        if op == "fallocate":            # on the fd copy: the caller's own open file
            return libc.fallocate(self.objfd, self.arg, self.arg2, self.arg3)
        if op == "chmod":
            return _call(lambda: os.chmod(self.objfd, self.arg)) if self.is_fd_copy \
                else _call(lambda: os.chmod(p, self.arg))
        if op == "chown":
            if self.is_fd_copy:
                return _call(lambda: os.chown(self.objfd, self.arg, self.arg2))
            return libc.fchownat(self.objfd, b"", self.arg, self.arg2, libc.AT_EMPTY_PATH)
        if op == "utime":
            if self.times is None:
                tp = ffi.NULL
            else:
                tp = ffi.new("int64_t[4]", list(self.times))
            return lib.aarm_utimensat(self.objfd, b"", tp, libc.AT_EMPTY_PATH)
        if op == "setxattr":
            target = self.objfd if self.is_fd_copy else p
            return _call(lambda: os.setxattr(target, self.name, self.value, self.arg))
        if op == "removexattr":
            target = self.objfd if self.is_fd_copy else p
            return _call(lambda: os.removexattr(target, self.name))
        return -errno.ENOSYS

    def _fds(self):
        return (self.objfd,)


class SocketCall(Effect):
    """connect/bind/sendto/sendmsg on a pidfd_getfd copy of the target's socket, with the
    address bytes the policy saw (unix paths rewritten to a pinned /proc/self/fd path)."""

    def __init__(self, op: str, sockfd: int, addr: bytes = b"", payload: bytes = b"",
                 flags: int = 0, pinned: int = -1, bind_name: bytes = b"",
                 messages: list | None = None, blocking: bool = True, more_pinned: tuple = (),
                 passed_fds: list | None = None, msg_len_at: tuple = (), tid: int = 0):
        self.op = op
        self.sockfd = sockfd
        self.addr = addr
        self.payload = payload
        self.flags = flags
        self.pinned = pinned            # O_PATH fd of a unix socket path / parent dir, kept alive
        self.bind_name = bind_name      # bind: name to create inside `pinned`
        self.messages = [] if messages is None else messages    # sendmmsg: [(addr, payload)]
        self.blocking = blocking
        self.more_pinned = more_pinned  # sendmmsg: pinned unix paths of the other messages
        # our copies of fds sent as SCM_RIGHTS
        self.passed_fds = [] if passed_fds is None else passed_fds
        # sendmmsg: where each message's msg_len lives in the target (tid), set as natively
        self.msg_len_at = msg_len_at
        self.tid = tid

    def perform(self) -> int:
        op = self.op
        if op == "connect":
            return libc.connect(self.sockfd, self.addr)
        if op == "bind":
            if self.bind_name:
                return _bind_in_dir(self.sockfd, self.pinned, self.bind_name)
            return libc.bind(self.sockfd, self.addr)
        if op == "sendto" and self.passed_fds:
            return _sendmsg_rights(self.sockfd, self.payload, self.flags, self.addr, self.passed_fds)
        if op == "sendto":
            return libc.sendto(self.sockfd, self.payload, self.flags, self.addr)
        if op == "sendmmsg":
            sent = 0
            for i, (addr, payload) in enumerate(self.messages):
                r = libc.sendto(self.sockfd, payload, self.flags, addr)
                if r < 0:
                    return sent if sent else r
                if i < len(self.msg_len_at):
                    try:                  # (the resolver checks these: glibc's getaddrinfo)
                        write_mem(self.tid, self.msg_len_at[i], r.to_bytes(4, "little"))
                    except DecodeError:
                        pass              # unwritable: the count still says what was sent
                sent += 1
            return sent
        return -errno.ENOSYS

    def _fds(self):
        return (self.sockfd, self.pinned) + tuple(self.more_pinned) + tuple(self.passed_fds)


def _sendmsg_rights(sockfd: int, payload: bytes, flags: int, addr: bytes, fds: list[int]) -> int:
    import array
    import socket
    s = socket.socket(fileno=os.dup(sockfd))
    try:
        address = None
        if addr:
            raw = addr[2:]
            address = raw if raw[:1] == b"\0" else raw.split(b"\0", 1)[0]
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        if address is None:
            return s.sendmsg([payload], anc, flags)
        return s.sendmsg([payload], anc, flags, address)
    except OSError as e:
        return -e.errno
    finally:
        s.close()


_cwd_lock = threading.Lock()


def _bind_in_dir(sockfd: int, dirfd: int, name: bytes) -> int:
    """Create the socket inode as `name` inside the pinned directory.

    bind() resolves sun_path itself and stores it as the socket's name, so it is given
    just the last component, relative to the pinned directory made the cwd for the call:
    the socket lands exactly where it was decided, and getsockname()/recvfrom() show a
    plain name (a relative bind looks exactly as natively)."""
    with _cwd_lock:
        old = os.open(".", os.O_PATH | os.O_CLOEXEC)
        try:
            os.fchdir(dirfd)
            return libc.bind(sockfd, libc.sockaddr_un(name))
        finally:
            os.fchdir(old)
            os.close(old)


# ---- brokered egress -----------------------------------------------------------------------
import socket as _socket

# Options a program may have set on its socket before connect() that change how the
# connection behaves; copied onto the supervisor's socket (value bytes as they are).
_COPIED_OPTIONS = (
    (_socket.SOL_SOCKET, _socket.SO_KEEPALIVE, 4), (_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 4),
    (_socket.SOL_SOCKET, _socket.SO_BROADCAST, 4), (_socket.SOL_SOCKET, _socket.SO_OOBINLINE, 4),
    (_socket.SOL_SOCKET, _socket.SO_LINGER, 8), (_socket.SOL_SOCKET, _socket.SO_RCVTIMEO, 16),
    (_socket.SOL_SOCKET, _socket.SO_SNDTIMEO, 16), (_socket.SOL_SOCKET, _socket.SO_PRIORITY, 4),
)
_TCP_OPTIONS = (
    (_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 4), (_socket.IPPROTO_TCP, _socket.TCP_KEEPIDLE, 4),
    (_socket.IPPROTO_TCP, _socket.TCP_KEEPINTVL, 4), (_socket.IPPROTO_TCP, _socket.TCP_KEEPCNT, 4),
    (_socket.IPPROTO_TCP, _socket.TCP_USER_TIMEOUT, 4),
)


class BrokeredSocket(Effect):
    """Egress the supervisor performs itself: a fresh socket in the supervisor's network
    namespace (same family/type/protocol, the options that matter), connected or sent to
    the exact address the policy saw; the supervisor then installs it in place of the
    target's socket (ADDFD|SETFD) so data flows natively from then on. The sandbox's own
    namespace has no route out: this is the only door."""

    def __init__(self, op: str, sockfd: int, target_fd: int, cloexec: bool, addr: bytes = b"",
                 payload: bytes = b"", flags: int = 0, blocking: bool = True,
                 replacement: int = -1):
        self.op = op                # "connect" | "sendto" | "fastopen" (connect, then send)
        self.sockfd = sockfd        # our copy of the target's socket (options, status flags)
        self.target_fd = target_fd  # its number in the target
        self.cloexec = cloexec      # the target's FD_CLOEXEC on it
        self.addr = addr
        self.payload = payload
        self.flags = flags
        self.blocking = blocking
        self.replacement = replacement  # set by perform(): the socket to install

    def perform(self) -> int:
        fam = libc.sockopt_int(self.sockfd, libc.SO_DOMAIN)
        typ = libc.sockopt_int(self.sockfd, libc.SO_TYPE)
        proto = libc.sockopt_int(self.sockfd, libc.SO_PROTOCOL)
        if min(fam, typ, proto) < 0:
            return min(fam, typ, proto)
        try:
            s = _socket.socket(fam, typ, proto)
        except OSError as e:
            return -(e.errno or errno.EIO)
        try:
            nonblocking = bool(_fcntl_getfl(self.sockfd) & os.O_NONBLOCK)
            _copy_options(self.sockfd, s, tcp=typ == _socket.SOCK_STREAM)
            r = self._act(s, nonblocking)
        except OSError as e:
            s.close()
            return -(e.errno or errno.EIO)
        if r < 0 and r != -errno.EINPROGRESS:
            s.close()                    # nothing to install: the target keeps its socket
            return r
        if nonblocking:
            s.setblocking(False)
        self.replacement = s.detach()
        return r

    def _act(self, s: _socket.socket, nonblocking: bool) -> int:
        if self.op in ("connect", "fastopen"):
            timeout = None
            if nonblocking and self.op == "connect":
                s.setblocking(False)
            else:
                timeout = _send_timeout(self.sockfd)
                s.settimeout(timeout)
            r = s.connect_ex(libc_sockaddr(self.addr))
            if timeout is not None and r in (errno.EAGAIN, errno.ETIMEDOUT):
                r = errno.EINPROGRESS    # the kernel's answer when SO_SNDTIMEO expires
            if r not in (0, errno.EINPROGRESS):
                return -r
            if self.op == "fastopen":
                return s.send(self.payload, self.flags & ~MSG_FASTOPEN)
            return -r
        return s.sendto(self.payload, self.flags, libc_sockaddr(self.addr))

    def _fds(self):
        return (self.sockfd, self.replacement)


MSG_FASTOPEN = 0x20000000


def libc_sockaddr(addr: bytes):
    """A raw sockaddr_in/in6 as the (host, port[, flow, scope]) tuple Python wants."""
    import ipaddress
    fam = int.from_bytes(addr[:2], "little")
    port = int.from_bytes(addr[2:4], "big")
    if fam == _socket.AF_INET:
        return (str(ipaddress.IPv4Address(addr[4:8])), port)
    flow = int.from_bytes(addr[4:8], "big")
    scope = int.from_bytes(addr[24:28], "little") if len(addr) >= 28 else 0
    return (str(ipaddress.IPv6Address(addr[8:24])), port, flow, scope)


def _fcntl_getfl(fd: int) -> int:
    import fcntl
    return fcntl.fcntl(fd, fcntl.F_GETFL)


def _send_timeout(fd: int) -> float | None:
    """connect() on a blocking socket gives up after SO_SNDTIMEO (0: never)."""
    import struct
    s = _socket.socket(fileno=os.dup(fd))
    try:
        sec, usec = struct.unpack("ll", s.getsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO, 16))
    finally:
        s.close()
    t = sec + usec / 1e6
    return t if t > 0 else None


def _copy_options(src_fd: int, dst: _socket.socket, tcp: bool) -> None:
    src = _socket.socket(fileno=os.dup(src_fd))
    try:
        for level, opt, size in _COPIED_OPTIONS + (_TCP_OPTIONS if tcp else ()):
            try:
                val = src.getsockopt(level, opt, size)
                if val != dst.getsockopt(level, opt, size):
                    dst.setsockopt(level, opt, val)
            except OSError:
                pass
        if src.family == _socket.AF_INET6:
            try:
                dst.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY,
                               src.getsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY))
            except OSError:
                pass
    finally:
        src.close()
