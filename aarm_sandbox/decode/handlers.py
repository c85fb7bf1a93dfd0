"""Per-syscall-family decoders: notification -> (Action, Effect).

A decoder reads each argument once into a private copy, resolves every path to a pinned
kernel object (decode/paths.py), names the action, and prepares the Effect that performs
exactly that operation on exactly those objects if the policy allows it. Errors raise
DecodeError with the errno the kernel would have returned; nothing has happened then.
"""
from __future__ import annotations

import errno
import os
import stat
import struct
import time
from collections.abc import Callable

from aarm_sandbox._native import lib
from aarm_sandbox.actions import action as A
from aarm_sandbox.actions.action import Action
from aarm_sandbox.decode.memory import DecodeError, read_argv, read_bytes, read_path
from aarm_sandbox.decode.paths import (AT_EMPTY_PATH, AT_FDCWD, AT_SYMLINK_NOFOLLOW, ObjectRef,
                                       ParentRef, Resolver, as_int32, fd_path, fs_magic,
                                       join_path)
from aarm_sandbox.decode.syscall_table import BY_NR, SyscallSpec
from aarm_sandbox.enforce import libc
from aarm_sandbox.enforce.effects import (AtCall, BrokeredSocket, Continue, Effect, ObjectCall,
                                          OpenFile, SocketCall)
from aarm_sandbox.net.destinations import Verdict, sockaddr_to_ip_port

O_ACCMODE = 0o3
O_CREAT, O_EXCL, O_TRUNC, O_NOFOLLOW = os.O_CREAT, os.O_EXCL, os.O_TRUNC, os.O_NOFOLLOW
O_PATH, O_CLOEXEC, O_NOCTTY = os.O_PATH, os.O_CLOEXEC, os.O_NOCTTY
O_TMPFILE_BIT = 0o20000000
AT_REMOVEDIR = 0x200
AT_SYMLINK_FOLLOW = 0x400
PIDFD_THREAD = os.O_EXCL
AF_UNSPEC, AF_UNIX, AF_INET, AF_INET6 = 0, 1, 2, 10
_FAM_INET, _FAM_INET6 = AF_INET.to_bytes(2, "little"), AF_INET6.to_bytes(2, "little")
SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET = 1, 2, 5
MSG_FASTOPEN = 0x20000000
MAX_PAYLOAD = 4 << 20


class Notification:
    """Backend-neutral view of one intercepted syscall (unotify or ptrace). (The records
    here are plain slotted classes: this module is on the startup path, where each
    dataclass definition costs ~0.5 ms.)"""
    __slots__ = ("id", "tid", "nr", "arch", "args", "intent")

    def __init__(self, id: int, tid: int, nr: int, arch: int, args: tuple, intent: bool = False):
        self.id = id
        self.tid = tid
        self.nr = nr
        self.arch = arch
        self.args = args
        # the native fast path wrote an intent line for it before handing it over: every
        # way of answering it journals a record naming its notif (see _settle_intent)
        self.intent = intent


class DecodeState:
    """Per-session caches the decoders share (kept tiny; everything else is re-read)."""

    def __init__(self) -> None:
        self.umask: dict[int, tuple[int, float]] = {}      # tid -> (umask, when read)
        self.umask_pending: dict[int, int] = {}            # tid -> mask of a umask() in flight
        self.session_root = -1          # O_PATH fd of the sandbox root, once pinned
        # Network (set by `run`): the destination policy, the DNS stub's memory of which
        # names it answered with an address, and the inodes of sockets the supervisor
        # made outside the sandbox (they must never carry traffic meant for inside).
        self.destinations = None
        self.names_for: Callable[[str], frozenset] = lambda ip: frozenset()
        self.brokered: set[int] = set()
        # A datagram socket of the supervisor's namespace (brokered UDP) sends wherever its
        # address says. Once the sandbox holds one, no send is left to the kernel any more:
        # another thread could dup2 it onto the fd number between the decision on our copy
        # and the kernel's own lookup (every send is then performed on the copy decided on).
        self.udp_brokered = False

    def umask_of(self, tid: int) -> int:
        """The thread's umask, cached for UMASK_TTL (a reused TID cannot inherit an entry).
        While a umask() call is in flight (answered CONTINUE, perhaps not yet carried out by
        its thread), reads are fresh and nothing is cached: a thread sharing the fs struct
        would otherwise cache the old mask in that window and keep it afterwards."""
        if self.umask_pending and self._umask_still_pending():
            return _read_umask(tid)
        now = time.monotonic()
        hit = self.umask.get(tid)
        if hit is not None and now - hit[1] < UMASK_TTL:
            return hit[0]
        m = _read_umask(tid)
        if len(self.umask) > 4096:
            self.umask.clear()
        self.umask[tid] = (m, now)
        return m

    def umask_called(self, tid: int, mask: int) -> None:
        """tid's umask(mask) is about to be answered CONTINUE."""
        self.umask_pending[tid] = mask & 0o777
        self.umask.clear()

    def _umask_still_pending(self) -> bool:
        for tid, mask in list(self.umask_pending.items()):
            try:
                done = _read_umask(tid) == mask
            except DecodeError:
                done = True                 # the thread is gone
            if done:
                del self.umask_pending[tid]
        if not self.umask_pending:
            self.umask.clear()              # read before it took effect: stale
        return bool(self.umask_pending)


UMASK_TTL = 0.1


def _read_umask(tid: int) -> int:
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        raise DecodeError(errno.ESRCH, "target gone") from None
    return 0o022


class Decoded:
    __slots__ = ("action", "effect")

    def __init__(self, action: Action | None, effect: Effect):
        self.action = action       # None: nothing to decide (bookkeeping calls)
        self.effect = effect


Handler = Callable[[Notification, SyscallSpec, DecodeState], Decoded]


# ---------------------------------------------------------------------------------------
def _resolver(n: Notification, st: DecodeState) -> Resolver:
    return Resolver(n.tid, st.session_root)


def _act(type_: str, n: Notification, spec: SyscallSpec, target: str, paths: tuple, flags: int = 0,
         **detail) -> Action:
    return Action(type_, target, spec.name, n.tid, n.tid, flags, paths, detail, notif=n.id)


def _thread_fd(tid: int, fd: int) -> int:
    """A copy of the target thread's fd `fd` (same open file description)."""
    if fd < 0:
        raise DecodeError(errno.EBADF, "negative fd")
    pidfd = lib.aarm_pidfd_open(tid, PIDFD_THREAD)
    if pidfd == -errno.EINVAL:          # kernel < 6.9: no thread pidfds, use the process
        pidfd = lib.aarm_pidfd_open(tid, 0)
    if pidfd < 0:
        raise DecodeError(errno.ESRCH, "pidfd_open")
    try:
        r = lib.aarm_pidfd_getfd(pidfd, fd, 0)
    finally:
        os.close(pidfd)
    if r < 0:
        raise DecodeError(-r if -r != errno.ESRCH else errno.EBADF, "pidfd_getfd")
    return r


def _fd_object(tid: int, fd: int) -> ObjectRef:
    copy = _thread_fd(tid, fd)
    try:
        return ObjectRef(copy, os.readlink(f"/proc/self/fd/{copy}"), os.fstat(copy))
    except BaseException:
        os.close(copy)
        raise


# ---- opens ------------------------------------------------------------------------------
def decode_open(n: Notification, spec: SyscallSpec, st: DecodeState) -> Decoded:
    a = n.args
    if spec.name == "open":
        dirfd, pptr, flags, mode = AT_FDCWD, a[0], a[1], a[2]
    elif spec.name == "creat":
        dirfd, pptr, flags, mode = AT_FDCWD, a[0], os.O_CREAT | os.O_WRONLY | os.O_TRUNC, a[1]
    else:
        dirfd, pptr, flags, mode = a[0], a[1], a[2], a[3]
    flags &= 0xFFFFFFFF
    mode &= 0o7777
    path = read_path(n.tid, pptr)
    r = _resolver(n, st)
    cloexec = bool(flags & O_CLOEXEC)
    open_flags = (flags | O_CLOEXEC | O_NOCTTY) & ~O_NOFOLLOW if not flags & O_PATH else flags

    if flags & O_PATH:
        obj = r.object(dirfd, path, follow=not flags & O_NOFOLLOW)
        return Decoded(_act(A.FILE_READ, n, spec, obj.path, (obj.path,), flags),
                       OpenFile(-1, b"", obj.fd, flags, 0, cloexec, opath_passthrough=True))
    if flags & O_TMPFILE_BIT:
        d = r.object(dirfd, path, follow=True)
        m = mode & ~st.umask_of(n.tid)
        return Decoded(_act(A.FILE_CREATE, n, spec, d.path, (d.path,), flags, tmpfile=True),
                       OpenFile(d.fd, b".", -1, open_flags, m, cloexec))
    # Fast path: pin the parent directory and look at the last name without following it.
    # A regular file (or a name to create) is then opened by the supervisor without
    # following it, relative to the pinned parent: exactly the object that was decided on.
    if flags & O_CREAT and path.endswith(b"/"):
        raise DecodeError(errno.EISDIR, "O_CREAT with a trailing slash")
    p = r.parent(dirfd, path)
    if p.trailing_slash or p.name in (b".", b".."):
        p.close()
        return _open_object(n, spec, st, r, dirfd, path, flags, open_flags, mode, cloexec)
    try:
        lst = os.stat(p.name, dir_fd=p.fd, follow_symlinks=False)
    except FileNotFoundError:
        lst = None
    except OSError as e:
        p.close()
        raise DecodeError(e.errno, "stat last component") from None
    if lst is None:
        if not flags & O_CREAT:
            p.close()
            raise DecodeError(errno.ENOENT, "no such file")
        return _create(n, spec, st, p, flags, open_flags | (flags & O_NOFOLLOW), mode, cloexec)
    if flags & O_CREAT and flags & O_EXCL:
        p.close()
        raise DecodeError(errno.EEXIST, "exists")
    if flags & O_CREAT and stat.S_ISDIR(lst.st_mode):
        p.close()
        raise DecodeError(errno.EISDIR, "O_CREAT on a directory")
    if stat.S_ISLNK(lst.st_mode):
        p.close()
        if flags & O_NOFOLLOW:
            raise DecodeError(errno.ELOOP, "O_NOFOLLOW on a symlink")
        return _open_object(n, spec, st, r, dirfd, path, flags, open_flags, mode, cloexec)
    kind = A.FILE_WRITE if _writes_existing(flags) else A.FILE_READ
    eff = OpenFile(p.fd, p.name, -1, (open_flags | (flags & O_NOFOLLOW)) & ~(O_CREAT | O_EXCL), 0,
                   cloexec, blocking=stat.S_ISFIFO(lst.st_mode) or stat.S_ISCHR(lst.st_mode),
                   no_follow=True)
    return Decoded(_act(kind, n, spec, p.path, (p.path,), flags), eff)


def _open_object(n, spec, st, r: Resolver, dirfd, path, flags, open_flags, mode,
                 cloexec) -> Decoded:
    """Slow path: follow symlinks (in the target's root) to the final object, pin it, and
    reopen exactly that inode through /proc/self/fd."""
    try:
        obj = r.object(dirfd, path, follow=not flags & O_NOFOLLOW)
    except DecodeError as e:
        if e.errno != errno.ENOENT or not flags & O_CREAT:
            raise
        return _create_through_symlink(n, spec, st, r, dirfd, path, flags, open_flags, mode, cloexec)
    if flags & O_NOFOLLOW and stat.S_ISLNK(obj.st.st_mode):
        obj.close()
        raise DecodeError(errno.ELOOP, "O_NOFOLLOW on a symlink")
    if flags & O_CREAT and stat.S_ISDIR(obj.st.st_mode):
        obj.close()
        raise DecodeError(errno.EISDIR, "O_CREAT on a directory")
    kind = A.FILE_WRITE if _writes_existing(flags) else A.FILE_READ
    eff = OpenFile(-1, b"", obj.fd, open_flags & ~(O_CREAT | O_EXCL), 0, cloexec,
                   blocking=stat.S_ISFIFO(obj.st.st_mode) or stat.S_ISCHR(obj.st.st_mode))
    if r.via_fd_flags is not None and _within_fd_access(flags, r.via_fd_flags) and \
            not (flags & O_TRUNC and stat.S_ISREG(obj.st.st_mode)):
        # `> /dev/stdout` with stdout a log file: the process already holds this file open
        # with this access; reopening it through /proc/self/fd grants nothing new, so it
        # is judged as the fd, not as a new write to the path. Truncating a regular file
        # is a new act, never covered by an fd's access (`: > /dev/stdout` would empty a
        # log outside the workspace).
        return Decoded(_act(kind, n, spec, obj.path, (), flags, reopened_fd=True), eff)
    return Decoded(_act(kind, n, spec, obj.path, (obj.path,), flags), eff)


def _create_through_symlink(n, spec, st, r: Resolver, dirfd, path, flags, open_flags, mode,
                            cloexec) -> Decoded:
    """O_CREAT on a dangling symlink creates its target (as the kernel does): pin the
    directory the link points into, then create there exclusively and without following,
    deciding on that final path. Chains of dangling links are not followed further."""
    link = r.parent(dirfd, path)
    try:
        content = os.readlink(link.name, dir_fd=link.fd)
    except OSError as e:
        link.close()
        raise DecodeError(e.errno, "readlink") from None
    stripped = content.rstrip(b"/")
    if not stripped or content.endswith(b"/"):
        link.close()
        raise DecodeError(errno.EISDIR if content.endswith(b"/") else errno.ENOENT, "symlink target")
    head, _sep, name = stripped.rpartition(b"/")
    absolute = content.startswith(b"/")
    if not head and not absolute:          # "target": next to the link itself
        dfd = link.fd
        link.fd = -1
    else:
        base = r.root_fd() if absolute else os.dup(link.fd)
        try:
            dfd = r.lookup_dir(base, head or b"/", absolute)
        finally:
            os.close(base)
    link.close()
    target = ParentRef(dfd, name, join_path(fd_path(dfd), name), False)
    try:
        lst = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        lst = None
    except OSError as e:
        target.close()
        raise DecodeError(e.errno, "stat symlink target") from None
    if lst is not None:
        target.close()
        if stat.S_ISLNK(lst.st_mode):
            raise DecodeError(errno.EACCES, "creating through a chain of dangling symlinks is not mediated")
        raise DecodeError(errno.EAGAIN, "symlink target appeared during resolution")
    return _create(n, spec, st, target, flags, open_flags | O_EXCL, mode, cloexec)


def _writes_existing(flags: int) -> bool:
    """Opening an *existing* file changes it only with write access or O_TRUNC
    (O_CREAT alone, as flock(1) uses it, does nothing to a file that is there)."""
    return (flags & O_ACCMODE) != os.O_RDONLY or bool(flags & O_TRUNC)


def _within_fd_access(requested: int, held: int) -> bool:
    req, have = requested & O_ACCMODE, held & O_ACCMODE
    if have == os.O_RDWR:
        return req in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR)
    if have == os.O_WRONLY:
        return req == os.O_WRONLY
    return req == os.O_RDONLY and not requested & O_TRUNC


def _create(n, spec, st, p: ParentRef, flags, open_flags, mode, cloexec) -> Decoded:
    """Decided as a create of an absent name, performed exclusively: a name that appeared
    since (EEXIST without the caller's O_EXCL) is decided again, never opened as a write."""
    m = mode & ~st.umask_of(n.tid)
    act = _act(A.FILE_CREATE, n, spec, p.path, (p.path,), flags)
    eff = OpenFile(p.fd, p.name_for_op, -1, open_flags | O_CREAT | O_EXCL, m, cloexec, no_follow=True)
    eff.exclusive_create = True
    eff.redecide_if_exists = not flags & O_EXCL
    return Decoded(act, eff)


# ---- namespace changes ------------------------------------------------------------------
def decode_unlink(n, spec, st) -> Decoded:
    a = n.args
    if spec.name == "unlinkat":
        dirfd, pptr, flags = a[0], a[1], as_int32(a[2])
    else:
        dirfd, pptr, flags = AT_FDCWD, a[0], AT_REMOVEDIR if spec.name == "rmdir" else 0
    if flags & ~AT_REMOVEDIR:
        raise DecodeError(errno.EINVAL, "unlinkat flags")
    p = _resolver(n, st).parent(dirfd, read_path(n.tid, pptr))
    act = _act(A.FILE_DELETE, n, spec, p.path, (p.path,), flags, directory=bool(flags & AT_REMOVEDIR))
    return Decoded(act, AtCall("unlink", p.fd, p.name_for_op, arg=flags))


def decode_rename(n, spec, st) -> Decoded:
    a = n.args
    if spec.name == "rename":
        od, op, nd, np_, flags = AT_FDCWD, a[0], AT_FDCWD, a[1], 0
    else:
        od, op, nd, np_ = a[0], a[1], a[2], a[3]
        flags = (a[4] & 0xFFFFFFFF) if spec.name == "renameat2" else 0
    r = _resolver(n, st)
    src_path, dst_path = read_path(n.tid, op), read_path(n.tid, np_)
    src = r.parent(od, src_path)
    try:
        dst = r.parent(nd, dst_path)
    except BaseException:
        src.close()
        raise
    act = _act(A.FILE_RENAME, n, spec, src.path, (src.path, dst.path), flags, destination=dst.path)
    return Decoded(act, AtCall("rename", src.fd, src.name_for_op, dst.fd, dst.name_for_op, arg=flags))


def decode_link(n, spec, st) -> Decoded:
    a = n.args
    if spec.name == "link":
        od, op, nd, np_, flags = AT_FDCWD, a[0], AT_FDCWD, a[1], 0
    else:
        od, op, nd, np_, flags = a[0], a[1], a[2], a[3], as_int32(a[4])
    if flags & ~(AT_SYMLINK_FOLLOW | AT_EMPTY_PATH):
        raise DecodeError(errno.EINVAL, "linkat flags")
    r = _resolver(n, st)
    old = read_path(n.tid, op) if op or not flags & AT_EMPTY_PATH else b""
    new = read_path(n.tid, np_)
    src = r.object(od, old, follow=bool(flags & AT_SYMLINK_FOLLOW), empty_ok=bool(flags & AT_EMPTY_PATH))
    try:
        dst = r.parent(nd, new)
    except BaseException:
        src.close()
        raise
    act = _act(A.FILE_LINK, n, spec, dst.path, (src.path, dst.path), flags, source=src.path)
    return Decoded(act, AtCall("link", dst.fd, dst.name_for_op, src.fd))


def decode_symlink(n, spec, st) -> Decoded:
    a = n.args
    if spec.name == "symlink":
        tptr, nd, np_ = a[0], AT_FDCWD, a[1]
    else:
        tptr, nd, np_ = a[0], a[1], a[2]
    content = read_path(n.tid, tptr)
    if not content:
        raise DecodeError(errno.ENOENT, "empty symlink target")
    p = _resolver(n, st).parent(nd, read_path(n.tid, np_))
    act = _act(A.FILE_SYMLINK, n, spec, p.path, (p.path,), content=os.fsdecode(content))
    return Decoded(act, AtCall("symlink", p.fd, p.name_for_op, extra=content))


def decode_mkdir(n, spec, st) -> Decoded:
    a = n.args
    dirfd, pptr, mode = (AT_FDCWD, a[0], a[1]) if spec.name == "mkdir" else (a[0], a[1], a[2])
    p = _resolver(n, st).parent(dirfd, read_path(n.tid, pptr))
    _refuse_existing(p)
    m = (mode & 0o7777) & ~st.umask_of(n.tid)
    return Decoded(_act(A.FILE_MKDIR, n, spec, p.path, (p.path,)), AtCall("mkdir", p.fd, p.name_for_op, arg=m))


def _refuse_existing(p) -> None:
    """A name that is there already (of any type, a symlink included) makes mkdir EEXIST,
    as the kernel answers before any permission check: nothing would change, so there is
    nothing to decide. `mkdir -p /outside/ws/new` asks for /outside first; a denial there
    (EACCES instead of EEXIST) was reported as a blocked action and broke tools that
    only tolerate EEXIST."""
    try:
        os.stat(p.name, dir_fd=p.fd, follow_symlinks=False)
    except OSError:
        return                          # absent (or unreadable): decided as usual
    p.close()
    raise DecodeError(errno.EEXIST, f"{p.path} exists")


def decode_mknod(n, spec, st) -> Decoded:
    a = n.args
    dirfd, pptr, mode, dev = (AT_FDCWD, a[0], a[1], a[2]) if spec.name == "mknod" else (a[0], a[1], a[2], a[3])
    mode &= 0xFFFFFFFF
    ftype = stat.S_IFMT(mode) or stat.S_IFREG
    p = _resolver(n, st).parent(dirfd, read_path(n.tid, pptr))
    m = ftype | ((mode & 0o7777) & ~st.umask_of(n.tid))
    kind = A.FILE_CREATE if ftype == stat.S_IFREG else A.FILE_MKNOD
    return Decoded(_act(kind, n, spec, p.path, (p.path,), mode), AtCall("mknod", p.fd, p.name_for_op,
                                                                      arg=m, arg2=dev & 0xFFFFFFFF))


# ---- content / metadata -----------------------------------------------------------------
def decode_truncate(n, spec, st) -> Decoded:
    obj = _resolver(n, st).object(AT_FDCWD, read_path(n.tid, n.args[0]), follow=True)
    length = _s64(n.args[1])
    return Decoded(_act(A.FILE_TRUNCATE, n, spec, obj.path, (obj.path,), length=length),
                   ObjectCall("truncate", obj.fd, arg=length))


def decode_ftruncate(n, spec, st) -> Decoded:
    obj = _fd_object(n.tid, as_int32(n.args[0]))
    length = _s64(n.args[1])
    return Decoded(_act(A.FILE_TRUNCATE, n, spec, obj.path, (obj.path,), length=length),
                   ObjectCall("truncate", obj.fd, arg=length, is_fd_copy=True))


def decode_fallocate(n, spec, st) -> Decoded:
    """Punch hole, collapse, zero or insert range: the data of the fd's file changes like
    under a truncate (decided on that file, performed on the caller's own open file)."""
    obj = _fd_object(n.tid, as_int32(n.args[0]))
    mode, offset, length = as_int32(n.args[1]), _s64(n.args[2]), _s64(n.args[3])
    return Decoded(_act(A.FILE_TRUNCATE, n, spec, obj.path, (obj.path,), fallocate_mode=mode,
                        offset=offset, length=length),
                   ObjectCall("fallocate", obj.fd, arg=mode, arg2=offset, arg3=length, is_fd_copy=True))


def decode_chmod(n, spec, st) -> Decoded:
    a = n.args
    if spec.name == "chmod":
        dirfd, pptr, mode, flags = AT_FDCWD, a[0], a[1], 0
    else:
        dirfd, pptr, mode = a[0], a[1], a[2]
        flags = as_int32(a[3]) if spec.name == "fchmodat2" else 0
    obj = _resolver(n, st).object(dirfd, read_path(n.tid, pptr) if pptr or not flags & AT_EMPTY_PATH else b"",
                              follow=not flags & AT_SYMLINK_NOFOLLOW, empty_ok=bool(flags & AT_EMPTY_PATH))
    if stat.S_ISLNK(obj.st.st_mode):
        obj.close()
        raise DecodeError(errno.EOPNOTSUPP, "chmod of a symlink")
    mode &= 0o7777
    return Decoded(_act(A.FILE_CHMOD, n, spec, obj.path, (obj.path,), mode=oct(mode)),
                   ObjectCall("chmod", obj.fd, arg=mode))


def decode_fchmod(n, spec, st) -> Decoded:
    obj = _fd_object(n.tid, as_int32(n.args[0]))
    mode = n.args[1] & 0o7777
    return Decoded(_act(A.FILE_CHMOD, n, spec, obj.path, (obj.path,), mode=oct(mode)),
                   ObjectCall("chmod", obj.fd, arg=mode, is_fd_copy=True))


def decode_chown(n, spec, st) -> Decoded:
    a = n.args
    if spec.name == "fchownat":
        dirfd, pptr, uid, gid, flags = a[0], a[1], a[2], a[3], as_int32(a[4])
    else:
        dirfd, pptr, uid, gid = AT_FDCWD, a[0], a[1], a[2]
        flags = AT_SYMLINK_NOFOLLOW if spec.name == "lchown" else 0
    path = read_path(n.tid, pptr) if pptr or not flags & AT_EMPTY_PATH else b""
    obj = _resolver(n, st).object(dirfd, path, follow=not flags & AT_SYMLINK_NOFOLLOW,
                              empty_ok=bool(flags & AT_EMPTY_PATH))
    uid, gid = as_int32(uid), as_int32(gid)
    return Decoded(_act(A.FILE_CHOWN, n, spec, obj.path, (obj.path,), uid=uid, gid=gid),
                   ObjectCall("chown", obj.fd, arg=uid, arg2=gid))


def decode_fchown(n, spec, st) -> Decoded:
    obj = _fd_object(n.tid, as_int32(n.args[0]))
    uid, gid = as_int32(n.args[1]), as_int32(n.args[2])
    return Decoded(_act(A.FILE_CHOWN, n, spec, obj.path, (obj.path,), uid=uid, gid=gid),
                   ObjectCall("chown", obj.fd, arg=uid, arg2=gid, is_fd_copy=True))


def _xattr_args(n) -> tuple[bytes, bytes, int]:
    a = n.args
    name = read_path(n.tid, a[1])
    if len(name) > 255:
        raise DecodeError(errno.ERANGE, "xattr name too long")
    value, flags = b"", 0
    if n.nr in (188, 189, 190):           # set*
        value = read_bytes(n.tid, a[2], a[3], limit=65536)
        flags = as_int32(a[4])
    return name, value, flags


def decode_xattr(n, spec, st) -> Decoded:
    name, value, flags = _xattr_args(n)
    follow = not spec.name.startswith("l")
    obj = _resolver(n, st).object(AT_FDCWD, read_path(n.tid, n.args[0]), follow=follow)
    if stat.S_ISLNK(obj.st.st_mode):
        obj.close()
        raise DecodeError(errno.EPERM, "xattr on a symlink")
    op = "setxattr" if "set" in spec.name else "removexattr"
    return Decoded(_act(A.FILE_XATTR, n, spec, obj.path, (obj.path,), name=os.fsdecode(name)),
                   ObjectCall(op, obj.fd, arg=flags, name=name, value=value))


def decode_fxattr(n, spec, st) -> Decoded:
    name, value, flags = _xattr_args(n)
    obj = _fd_object(n.tid, as_int32(n.args[0]))
    op = "setxattr" if "set" in spec.name else "removexattr"
    return Decoded(_act(A.FILE_XATTR, n, spec, obj.path, (obj.path,), name=os.fsdecode(name)),
                   ObjectCall(op, obj.fd, arg=flags, name=name, value=value, is_fd_copy=True))


def decode_utime(n, spec, st) -> Decoded:
    a = n.args
    flags = 0
    times = None
    if spec.name == "utimensat":
        dirfd, pptr, tptr, flags = a[0], a[1], a[2], as_int32(a[3])
        if tptr:
            raw = read_bytes(n.tid, tptr, 32)
            times = struct.unpack("<qqqq", raw)
    elif spec.name == "utime":
        dirfd, pptr, tptr = AT_FDCWD, a[0], a[1]
        if tptr:
            at, mt = struct.unpack("<qq", read_bytes(n.tid, tptr, 16))
            times = (at, 0, mt, 0)
    else:   # utimes / futimesat: struct timeval[2]
        dirfd, pptr, tptr = (AT_FDCWD, a[0], a[1]) if spec.name == "utimes" else (a[0], a[1], a[2])
        if tptr:
            s0, u0, s1, u1 = struct.unpack("<qqqq", read_bytes(n.tid, tptr, 32))
            if not (0 <= u0 < 1000000 and 0 <= u1 < 1000000):
                raise DecodeError(errno.EINVAL, "bad timeval")
            times = (s0, u0 * 1000, s1, u1 * 1000)
    if pptr == 0 and spec.name in ("utimensat", "futimesat"):
        obj = _fd_object(n.tid, as_int32(dirfd))        # futimens(fd, times)
    else:
        path = read_path(n.tid, pptr) if pptr or not flags & AT_EMPTY_PATH else b""
        obj = _resolver(n, st).object(dirfd, path, follow=not flags & AT_SYMLINK_NOFOLLOW,
                                  empty_ok=bool(flags & AT_EMPTY_PATH))
    return Decoded(_act(A.FILE_UTIME, n, spec, obj.path, (obj.path,)),
                   ObjectCall("utime", obj.fd, times=times))


# ---- exec -------------------------------------------------------------------------------
class ExecContinue(Continue):
    """Exec cannot be emulated: continue it, remembering which inode was decided on and
    what the kernel will load for it (`loads`: a script's interpreter chain, an ELF's
    dynamic loader), so that the supervisor can check the new program in its exec stop."""

    def __init__(self, obj: ObjectRef, tid: int, loads: "Loads"):
        self.dev_ino = (obj.st.st_dev, obj.st.st_ino)
        self.objfd = obj.fd
        self.loads = loads
        self.is_script = loads.is_script
        # MODIFY scrub_env: name globs the new program's environment must not have when it
        # is checked in its exec stop (a thread may rewrite the scrubbed array meanwhile)
        self.env_gate: tuple[str, ...] | None = None
        # what an exec's classification read from the caller (exec_verify.ExecBasis),
        # checked again in the exec stop; set by the supervisor
        self.basis = None
        try:
            st = os.stat(f"/proc/{tid}/exe")
            self.before = (st.st_dev, st.st_ino)    # the image the caller runs now
        except OSError:
            self.before = None

    def _fds(self):
        return (self.objfd,)


def decode_exec(n, spec, st) -> Decoded:
    a = n.args
    if spec.name == "execve":
        dirfd, pptr, argvp, envp, flags = AT_FDCWD, a[0], a[1], a[2], 0
    else:
        dirfd, pptr, argvp, envp, flags = a[0], a[1], a[2], a[3], as_int32(a[4])
    path = read_path(n.tid, pptr) if pptr or not flags & AT_EMPTY_PATH else b""
    obj = _resolver(n, st).object(dirfd, path, follow=not flags & AT_SYMLINK_NOFOLLOW,
                              empty_ok=bool(flags & AT_EMPTY_PATH))
    try:
        argv = [os.fsdecode(x) for x in read_argv(n.tid, argvp)]
    except BaseException:
        obj.close()
        raise
    detail = {}
    try:
        loads = _what_loads(n, st, obj, os.path.basename(path))
    except BaseException:
        obj.close()
        raise
    if loads.unknown:
        # (execute-only, and the supervisor may not read it): what the kernel loads for it
        # is unknown, and decided as such - a profile that restricts exec refuses it
        detail["interpreter"] = UNKNOWN_INTERPRETER
    elif loads.interpreter_path is not None:
        # The kernel loads it itself (a '#!' line, an ELF's PT_INTERP): judged as an exec of
        # its own (the supervisor decides it too)
        detail["interpreter"] = loads.interpreter_path
    elif loads.unresolved is not None:
        detail["interpreter_unresolved"] = loads.unresolved     # the exec fails natively
    act = _act(A.PROCESS_EXEC, n, spec, obj.path, (obj.path,), argv=argv,
               inode=f"{obj.st.st_dev}:{obj.st.st_ino}", **detail)
    act.envp = envp             # read only if the classification needs it (GIT_CONFIG_*)
    return Decoded(act, ExecContinue(obj, n.tid, loads))


class Loads:
    """What the kernel will load to run a file: for a '#!' script its interpreter, that
    one's if it is a script too, down to the ELF that runs (`image`); and the dynamic
    loader of that ELF (`loader`, None for a static one). Resolved as the kernel will,
    from the caller's root: checked in the exec stop against what was mapped."""
    __slots__ = ("is_script", "interpreter_path", "interpreter_inode", "image", "loader",
                 "loader_unmatchable", "unresolved", "unknown", "alt_images",
                 "fixed_interpreters")

    def __init__(self) -> None:
        self.is_script = False
        self.interpreter_path: str | None = None     # the first file it names (judged too)
        self.interpreter_inode: tuple | None = None
        self.image: tuple | None = None      # (dev, ino) that runs; None: none can (it fails)
        self.loader: tuple | None = None     # (dev, ino) of the image's PT_INTERP
        # on overlayfs, /proc/PID/maps may show the backing file's (dev, ino), not the one
        # a stat of the path gives: the mapped loader is not compared there
        self.loader_unmatchable = False
        self.unresolved: str | None = None   # a name the kernel will not find
        self.alt_images: list[tuple] = []    # other binfmt_misc interpreters it may run as
        self.fixed_interpreters: list[str] = []   # 'F' entries: the paths registered
        self.unknown = False                 # a file the supervisor may not read


_MAX_INTERPRETERS = 5                        # the kernel's BINPRM_MAX_RECURSION is 4
_OVERLAYFS_MAGIC, _BTRFS_MAGIC = 0x794C7630, 0x9123683E


def _maps_shows_another_device(fd: int) -> bool:
    """Whether fd's file is on overlayfs or btrfs, where /proc/PID/maps shows another device
    (a backing file's, the superblock's instead of the subvolume's) than a stat; when that
    cannot be told, it may be."""
    magic = fs_magic(fd)
    return magic is None or magic in (_OVERLAYFS_MAGIC, _BTRFS_MAGIC)


BINFMT_MISC = "/proc/sys/fs/binfmt_misc"


def _binfmt_entries(ttl: float = 1.0) -> list[dict[str, str]]:
    """The enabled binfmt_misc entries (re-read at most every `ttl` seconds): none where
    binfmt_misc is not mounted."""
    global _BINFMT_CACHE
    now = time.monotonic()
    if _BINFMT_CACHE is not None and now - _BINFMT_CACHE[0] < ttl:
        return _BINFMT_CACHE[1]
    entries = []
    try:
        names = sorted(e for e in os.listdir(BINFMT_MISC) if e not in ("register", "status"))
    except OSError:
        names = []
    for entry in names:
        try:
            with open(os.path.join(BINFMT_MISC, entry), encoding="utf-8",
                      errors="surrogateescape") as f:
                fields = dict((line.split(" ", 1) + [""])[:2] for line in f.read().splitlines())
        except OSError:
            continue
        if "enabled" in fields:
            entries.append(fields)
    _BINFMT_CACHE = (now, entries)
    return entries


_BINFMT_CACHE: tuple[float, list] | None = None


def _binfmt_interpreters(head: bytes, name: bytes) -> list[tuple[str, str]]:
    """(interpreter, flags) of every enabled binfmt_misc entry that takes a file starting
    with `head` and called `name` (the last component of the path the exec was given): the
    kernel takes the newest-registered of them, an order it does not show, so any of them
    is what may run. Empty when none does (binfmt_misc then plays no part)."""
    found = []
    sname = os.fsdecode(name)
    for fields in _binfmt_entries():
        interp = fields.get("interpreter", "").strip()
        flags = fields.get("flags:", "").strip()
        if "extension" in fields:
            if sname.endswith("." + fields["extension"].strip().lstrip(".")):
                found.append((interp, flags))
            continue
        try:
            off = int(fields.get("offset", "0").strip() or 0)
            magic = bytes.fromhex(fields.get("magic", "").strip())
            mask = bytes.fromhex(fields["mask"].strip()) if "mask" in fields else b"\xff" * len(magic)
        except ValueError:
            continue
        got = head[off:off + len(magic)]
        if magic and len(got) == len(magic) and \
                bytes(a & m for a, m in zip(got, mask)) == bytes(b & m for b, m in zip(magic, mask)):
            found.append((interp, flags))
    return found


def _binfmt_loads(n, st, head: bytes, name: bytes, out: Loads, first: bool) -> bool:
    """Fill `out` for a file binfmt_misc runs: the image is one of the matching entries'
    interpreters (an 'F' entry's by its registered path: the kernel opened that file at
    registration), judged as an exec of its own; its argv is the interpreter's (the
    script-like tail compare). False when no entry takes the file (it then fails, unless
    a native handler takes it)."""
    matches = _binfmt_interpreters(head, name)
    if not matches:
        return False
    out.is_script = True
    out.loader_unmatchable = True
    for path, flags in matches:
        try:
            if "F" in flags:
                st_ = os.stat(path)
                inode = (st_.st_dev, st_.st_ino)
                out.fixed_interpreters.append(path)
                shown = path
            else:
                iobj = _resolver(n, st).object(AT_FDCWD, os.fsencode(path), follow=True)
                inode, shown = (iobj.st.st_dev, iobj.st.st_ino), iobj.path
                iobj.close()
        except (OSError, DecodeError):
            if first and out.unresolved is None:
                out.unresolved = path
            continue
        if out.image is None:
            out.image = inode
            if first:
                out.interpreter_path, out.interpreter_inode = shown, inode
        else:
            out.alt_images.append(inode)
    return True


def _reopen_for_reading(opath_fd: int) -> int:
    return os.open(f"/proc/self/fd/{opath_fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)


def _head(opath_fd: int) -> bytes | None:
    """The first 256 bytes of the file (what the kernel's handlers look at), or None."""
    try:
        fd = _reopen_for_reading(opath_fd)
    except OSError:
        return None
    try:
        return os.pread(fd, 256, 0)
    except OSError:
        return None
    finally:
        os.close(fd)


def _what_loads(n, st, obj, name: bytes) -> Loads:
    out = Loads()
    own = (obj.st.st_dev, obj.st.st_ino)
    if _binfmt_entries():
        # binfmt_misc's entries are tried before the ELF and '#!' handlers
        head = _head(obj.fd)
        if head is not None and _binfmt_loads(n, st, head, name, out, first=True):
            return out
    try:
        is_script, interp = _loaded_by(obj.fd)
    except OSError:
        out.unknown = True
        return out
    except NotNative as e:
        # run by the binfmt_misc entry that takes it (its interpreter is the image), or
        # by none (the exec fails: no image)
        _binfmt_loads(n, st, e.head, name, out, first=True)
        return out
    out.is_script = is_script
    if not is_script:
        out.image = own
    fd, close = obj.fd, False
    try:
        for depth in range(_MAX_INTERPRETERS + 1):
            if interp is None:
                return out                   # a static ELF, or '#!' naming nothing (fails)
            try:
                iobj = _resolver(n, st).object(AT_FDCWD, interp, follow=True)
            except DecodeError:
                if depth == 0:
                    out.unresolved = os.fsdecode(interp)
                out.image = out.loader = None    # a name the kernel will not find: it fails
                return out
            if close:
                os.close(fd)
            fd, close = iobj.fd, True
            inode = (iobj.st.st_dev, iobj.st.st_ino)
            if depth == 0:
                out.interpreter_path, out.interpreter_inode = iobj.path, inode
            if not is_script:
                out.loader = inode           # the ELF's dynamic loader
                out.loader_unmatchable = _maps_shows_another_device(fd)
                return out
            try:
                is_script, interp = _loaded_by(fd)
            except OSError:
                return out                   # unreadable: no image accepted
            except NotNative as e:
                # an interpreter binfmt_misc runs (a foreign-architecture /bin/sh)
                _binfmt_loads(n, st, e.head, os.path.basename(interp), out, first=False)
                return out
            if not is_script:
                out.image = inode            # the ELF that runs the script
        return out                           # nested too deep: the exec fails (ELOOP)
    finally:
        if close:
            os.close(fd)


UNKNOWN_INTERPRETER = "(unreadable file: what the kernel loads for it is unknown)"


class NotNative(Exception):
    """Neither a '#!' script nor an x86-64 ELF: binfmt_misc's, if any entry takes it."""

    def __init__(self, head: bytes):
        super().__init__("not a native executable")
        self.head = head


def _loaded_by(opath_fd: int) -> tuple[bool, bytes | None]:
    """(a '#!' script?, the file the kernel loads to run this one: the first word of the
    '#!' line, or the PT_INTERP of an x86-64 ELF, i.e. its dynamic loader). OSError when
    the file cannot be opened for reading; NotNative for any other format."""
    fd = _reopen_for_reading(opath_fd)
    try:
        head = os.pread(fd, 256, 0)
        if head.startswith(b"#!"):
            words = head[2:].split(b"\n", 1)[0].split()
            return True, words[0] if words else None
        if head[:6] != b"\x7fELF\x02\x01" or len(head) < 64 or head[18:20] != b"\x3e\x00":
            raise NotNative(head)                       # (not an x86-64 ELF: EM_X86_64 = 62)
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        if phentsize < 56 or phnum > 512:
            return False, None
        table = os.pread(fd, phentsize * phnum, phoff)
        for i in range(len(table) // phentsize):
            ptype, = struct.unpack_from("<I", table, i * phentsize)
            if ptype == 3:                                  # PT_INTERP
                off, = struct.unpack_from("<Q", table, i * phentsize + 8)
                size, = struct.unpack_from("<Q", table, i * phentsize + 32)
                if not 1 < size <= 4096:
                    return False, None
                name = os.pread(fd, size, off).split(b"\0", 1)[0]
                return False, name or None
        return False, None
    except NotNative:
        raise
    except (OSError, struct.error):
        return False, None
    finally:
        os.close(fd)


# ---- network ----------------------------------------------------------------------------
def _read_sockaddr(n: Notification, ptr: int, length: int) -> bytes:
    length = as_int32(length)
    if length < 0 or length > 128:
        raise DecodeError(errno.EINVAL, "bad address length")
    if length < 2:
        raise DecodeError(errno.EINVAL, "address too short")
    return read_bytes(n.tid, ptr, length)


def describe_sockaddr(addr: bytes) -> tuple[int, str, bytes | None]:
    """(family, human-readable target, unix path or None)."""
    fam = int.from_bytes(addr[:2], "little")
    if fam == AF_INET and len(addr) >= 8:
        port = int.from_bytes(addr[2:4], "big")
        return fam, f"{'.'.join(str(b) for b in addr[4:8])}:{port}", None
    if fam == AF_INET6 and len(addr) >= 24:
        import ipaddress
        port = int.from_bytes(addr[2:4], "big")
        return fam, f"[{ipaddress.IPv6Address(addr[8:24])}]:{port}", None
    if fam == AF_UNIX:
        sun = addr[2:]
        if sun[:1] == b"\0":
            return fam, "unix-abstract:@" + sun[1:].decode("utf-8", "backslashreplace"), None
        path = sun.split(b"\0", 1)[0]
        return fam, "unix:" + os.fsdecode(path), path
    return fam, f"family-{fam}", None


def decode_connect(n, spec, st) -> Decoded:
    a = n.args
    sockfd_num = as_int32(a[0])
    addr = _read_sockaddr(n, a[1], a[2])
    fam, target, upath = describe_sockaddr(addr)
    pinned = -1
    paths: tuple = ()
    if upath is not None:
        if not upath:
            raise DecodeError(errno.EINVAL, "empty unix path")
        obj = _resolver(n, st).object(AT_FDCWD, upath, follow=True)
        pinned, target = obj.fd, "unix:" + obj.path
        addr = libc.sockaddr_un(f"/proc/self/fd/{obj.fd}".encode())
        paths = (obj.path,)
    try:
        sock = _thread_fd(n.tid, sockfd_num)
    except BaseException:
        if pinned >= 0:
            os.close(pinned)
        raise
    if st.destinations is not None and _inet_socket(sock):
        if fam == AF_UNSPEC and os.fstat(sock).st_ino in st.brokered:
            os.close(sock)
            raise DecodeError(errno.EPERM, "a connection made outside the sandbox cannot be "
                              "dissolved and the socket reused (bind/listen in the host's network)")
        if fam in (AF_INET, AF_INET6):
            return _egress(n, spec, st, A.NET_CONNECT, sock, sockfd_num, addr, "connect")
    act = _act(A.NET_CONNECT, n, spec, target, paths, family=fam)
    return Decoded(act, SocketCall("connect", sock, addr=addr, pinned=pinned))


def _egress(n: Notification, spec: SyscallSpec, st: DecodeState, type_: str, sock: int,
            sockfd_num: int, addr: bytes, op: str, payload: bytes = b"", flags: int = 0) -> Decoded:
    """An inet connect/send: the destination policy decides where it may go (inside the
    sandbox's own loopback, brokered out by the supervisor, or nowhere), on the address
    bytes the supervisor copied, never on what the target's memory says later."""
    try:
        parsed = sockaddr_to_ip_port(addr)
        if parsed is None:
            raise DecodeError(errno.EINVAL, "malformed inet address")
        _fam, ip, port = parsed
        typ = libc.sockopt_int(sock, libc.SO_TYPE)
        proto = {SOCK_STREAM: "tcp", SOCK_DGRAM: "udp"}.get(typ, "other")
        ip_text = ip.compressed
        names = st.names_for(ip_text)
        if proto == "other":
            verdict = Verdict("deny", None, f"socket type {typ} is neither TCP nor UDP: not brokered")
        else:
            verdict = st.destinations.decide(ip, port, proto, names)
        kind, reason = verdict.kind, verdict.reason
        ino = os.fstat(sock).st_ino
        outside = ino in st.brokered
        if not NETWORK_CONTAINED and kind == "inside":
            kind, reason = "deny", (f"{ip_text}:{port} is the host's own address and there is no "
                                    "network namespace to keep it inside the sandbox")
        elif outside and kind == "inside":
            kind, reason = "deny", ("this socket is connected outside the sandbox; it cannot "
                                    f"carry traffic to the sandbox's own {ip_text}:{port}")
    except BaseException:
        os.close(sock)
        raise
    target = f"[{ip_text}]:{port}" if ip.version == 6 else f"{ip_text}:{port}"
    detail = {"family": AF_INET6 if ip.version == 6 else AF_INET, "proto": proto, "egress": kind,
              "egress_reason": reason}
    if verdict.spec:
        detail["egress_rule"] = verdict.spec
    if names:
        detail["names"] = sorted(names)
    if payload or op != "connect":
        detail["bytes"] = len(payload)
    act = _act(type_, n, spec, target, (), **detail)
    act.dest = (ip, port, proto, names)
    if kind == "broker" and not outside and NETWORK_CONTAINED:
        cloexec = _fd_cloexec(n.tid, sockfd_num)
        return Decoded(act, BrokeredSocket(op, sock, sockfd_num, cloexec, addr=addr,
                                           payload=payload, flags=flags))
    if op == "connect":
        return Decoded(act, SocketCall("connect", sock, addr=addr))
    if op == "fastopen":
        op = "sendto"
    return Decoded(act, SocketCall(op, sock, addr=addr, payload=payload, flags=flags))


def _fd_cloexec(tid: int, fd: int) -> bool:
    """FD_CLOEXEC of the target's fd (a per-fd flag our pidfd_getfd copy does not share)."""
    try:
        with open(f"/proc/{tid}/fdinfo/{fd}", "rb") as f:
            for line in f:
                if line.startswith(b"flags:"):
                    return bool(int(line.split()[1], 8) & os.O_CLOEXEC)
    except (OSError, ValueError):
        pass
    return True


def decode_bind(n, spec, st) -> Decoded:
    a = n.args
    addr = _read_sockaddr(n, a[1], a[2])
    fam, target, upath = describe_sockaddr(addr)
    sock = _thread_fd(n.tid, as_int32(a[0]))
    if os.fstat(sock).st_ino in st.brokered:
        os.close(sock)
        raise DecodeError(errno.EPERM, "a socket brokered outside the sandbox cannot be bound "
                          "(it would listen in the host's network)")
    if upath is not None and upath:
        try:
            p = _resolver(n, st).parent(AT_FDCWD, upath)
        except BaseException:
            os.close(sock)
            raise
        act = _act(A.NET_BIND, n, spec, "unix:" + p.path, (p.path,), family=fam)
        return Decoded(act, SocketCall("bind", sock, pinned=p.fd, bind_name=p.name, blocking=False))
    act = _act(A.NET_BIND, n, spec, target, (), family=fam)
    return Decoded(act, SocketCall("bind", sock, addr=addr, blocking=False))


def _dest_for_send(n: Notification, st: DecodeState, addr: bytes) -> tuple[str, bytes, int, tuple]:
    fam, target, upath = describe_sockaddr(addr)
    if upath:
        obj = _resolver(n, st).object(AT_FDCWD, upath, follow=True)
        return "unix:" + obj.path, libc.sockaddr_un(f"/proc/self/fd/{obj.fd}".encode()), obj.fd, (obj.path,)
    return target, addr, -1, ()


def decode_sendto(n, spec, st) -> Decoded:
    a = n.args
    length = a[2]
    if length > MAX_PAYLOAD:
        raise DecodeError(errno.EMSGSIZE, "payload over the mediation limit")
    addr = _read_sockaddr(n, a[4], a[5])
    payload = read_bytes(n.tid, a[1], length, limit=MAX_PAYLOAD)
    sockfd_num = as_int32(a[0])
    flags = as_int32(a[3])
    sock = _thread_fd(n.tid, sockfd_num)
    try:
        if st.destinations is not None:
            if _stream_safe(sock, flags):
                # the kernel never routes a stream by the address (TCP ignores it without
                # MSG_FASTOPEN, unix stream and seqpacket refuse or ignore it)
                if not st.udp_brokered:
                    os.close(sock)
                    return Decoded(None, Continue())
                act = _act(A.NET_SEND, n, spec, "(connected peer)", (), bytes=len(payload))
                return Decoded(act, SocketCall("sendto", sock, payload=payload, flags=flags))
            domain = libc.sockopt_int(sock, libc.SO_DOMAIN)
            if domain in (AF_INET, AF_INET6):
                # decided by the socket's family, not the address's: an inet datagram socket
                # sends an AF_UNSPEC address as AF_INET (or, on AF_INET6, to its peer)
                addr = _as_inet(domain, addr)
                if addr[:2] in (_FAM_INET, _FAM_INET6):
                    return _egress(n, spec, st, A.NET_SEND, sock, sockfd_num, addr,
                                   "fastopen" if flags & MSG_FASTOPEN else "sendto", payload, flags)
        target, addr, pinned, paths = _dest_for_send(n, st, addr)
    except BaseException:
        os.close(sock)
        raise
    act = _act(A.NET_SEND, n, spec, target, paths, bytes=len(payload))
    return Decoded(act, SocketCall("sendto", sock, addr=addr, payload=payload, flags=flags,
                                   pinned=pinned))


def _inet_socket(sock: int) -> bool:
    return libc.sockopt_int(sock, libc.SO_DOMAIN) in (AF_INET, AF_INET6)


def _as_inet(domain: int, addr: bytes) -> bytes:
    """The address a send on an inet socket of `domain` goes to, as the kernel reads it:
    AF_UNSPEC is AF_INET on an AF_INET socket (udp_sendmsg) and "no address" (b"": the
    connected peer) on an AF_INET6 one; anything else is returned as is."""
    if int.from_bytes(addr[:2], "little") != AF_UNSPEC:
        return addr
    return _FAM_INET + addr[2:] if domain == AF_INET else b""


def _stream_safe(sock: int, flags: int) -> bool:
    """On stream/seqpacket sockets the kernel never routes by msg_name (TCP ignores it
    without MSG_FASTOPEN; unix stream rejects it; seqpacket ignores it), so letting the
    kernel run the call cannot be redirected by rewriting memory."""
    t = libc.sockopt_int(sock, libc.SO_TYPE)
    return t in (SOCK_STREAM, SOCK_SEQPACKET) and not flags & MSG_FASTOPEN


def _inet_contained(sock: int) -> bool:
    """inet datagrams from a sandbox whose network namespace has no route out reach only
    the sandbox itself, whatever address the memory says; letting the kernel run the call
    keeps sendmmsg's per-message msg_len exact. (Brokered egress will mediate these.)"""
    return libc.sockopt_int(sock, libc.SO_DOMAIN) in (AF_INET, AF_INET6) and NETWORK_CONTAINED


# True while the sandbox's network namespace has nothing but loopback (set by the launcher).
NETWORK_CONTAINED = False


def _read_rights(n: Notification, ctl_p: int, ctllen: int) -> list[int]:
    """The target's fd numbers carried as SCM_RIGHTS in a control buffer. Any other
    ancillary data on a datagram socket is refused (it would carry the supervisor's
    credentials, or needs its own mediation)."""
    if ctllen > 65536:
        raise DecodeError(errno.ENOBUFS, "control data too large")
    raw = read_bytes(n.tid, ctl_p, ctllen)
    fds: list[int] = []
    off = 0
    while off + 16 <= len(raw):
        clen, level, typ = struct.unpack_from("<Qii", raw, off)
        if clen < 16 or off + clen > len(raw):
            raise DecodeError(errno.EINVAL, "malformed cmsghdr")
        if (level, typ) != (1, 1):          # SOL_SOCKET, SCM_RIGHTS
            raise DecodeError(errno.EPERM, "ancillary data other than SCM_RIGHTS on datagram "
                              "sockets is not mediated")
        data = raw[off + 16:off + clen]
        fds.extend(struct.unpack(f"<{len(data) // 4}i", data[:len(data) // 4 * 4]))
        off += (clen + 7) & ~7
    if len(fds) > 253:                      # SCM_MAX_FD
        raise DecodeError(errno.EINVAL, "too many fds")
    return fds


def _read_msghdr(n: Notification, ptr: int) -> tuple[bytes, bytes, int, int]:
    """(name bytes, concatenated iov payload, control ptr, controllen) of a struct msghdr."""
    raw = read_bytes(n.tid, ptr, 56)
    name_p, namelen, iov_p, iovlen, ctl_p, ctllen, _fl = struct.unpack("<QI4xQQQQi4x", raw)
    if iovlen > 1024:
        raise DecodeError(errno.EMSGSIZE, "iovlen over UIO_MAXIOV")
    name = _read_sockaddr(n, name_p, namelen) if name_p and namelen else b""
    chunks, total = [], 0
    if iovlen:
        vec = read_bytes(n.tid, iov_p, 16 * iovlen)
        for i in range(iovlen):
            base, ln = struct.unpack_from("<QQ", vec, 16 * i)
            total += ln
            if total > MAX_PAYLOAD:
                raise DecodeError(errno.EMSGSIZE, "payload over the mediation limit")
            chunks.append(read_bytes(n.tid, base, ln, limit=MAX_PAYLOAD))
    return name, b"".join(chunks), ctl_p, ctllen if ctl_p else 0


def decode_sendmsg(n, spec, st) -> Decoded:
    a = n.args
    flags = as_int32(a[2] if spec.name == "sendmsg" else a[3])
    sockfd_num = as_int32(a[0])
    sock = _thread_fd(n.tid, sockfd_num)
    stream = _stream_safe(sock, flags)
    if not st.udp_brokered and (stream or (_inet_contained(sock) and (
            st.destinations is None or
            (spec.name == "sendmmsg" and os.fstat(sock).st_ino not in st.brokered)))):
        # (a batch on a socket still inside the sandbox's namespace cannot leave it,
        # whatever its addresses say: the kernel runs it and keeps each msg_len exact)
        os.close(sock)
        return Decoded(None, Continue())
    domain = libc.sockopt_int(sock, libc.SO_DOMAIN)
    inet = domain in (AF_INET, AF_INET6)
    if st.destinations is not None and spec.name == "sendmsg" and not stream and inet:
        try:
            name, payload, _ctl_p, ctl = _read_msghdr(n, a[1])
            name = _as_inet(domain, name) if name else name
        except BaseException:
            os.close(sock)
            raise
        if name and name[:2] in (_FAM_INET, _FAM_INET6):
            if ctl:
                os.close(sock)
                raise DecodeError(errno.EPERM, "ancillary data on inet datagrams is not mediated")
            return _egress(n, spec, st, A.NET_SEND, sock, sockfd_num, name,
                           "fastopen" if flags & MSG_FASTOPEN else "sendto", payload, flags)
    try:
        msgs = []
        if spec.name == "sendmsg":
            hdrs = [a[1]]
        else:
            vlen = min(a[2] & 0xFFFFFFFF, 1024)
            hdrs = [a[1] + 64 * i for i in range(vlen)]
        targets, paths_all, pinned = [], [], []
        leaves = None                   # a message's verdict when it leaves the sandbox
        passed: list[int] = []
        for h in hdrs:
            name, payload, ctl_p, ctl = _read_msghdr(n, h)
            if stream:
                name = b""          # never routed by (see _stream_safe)
            elif name and inet:
                name = _as_inet(domain, name)
            if ctl:
                if spec.name != "sendmsg":
                    raise DecodeError(errno.EPERM, "ancillary data in sendmmsg on datagram "
                                      "sockets is not mediated")
                # fds passed along: the receiver gets the same open files, via our copies
                passed = [_thread_fd(n.tid, fd) for fd in _read_rights(n, ctl_p, ctl)]
                pinned.extend(passed)
            if name:
                leaves = _check_batch_destination(st, sock, name) or leaves
                target, addr, pin, paths = _dest_for_send(n, st, name)
                if pin >= 0:
                    pinned.append(pin)
            else:
                target, addr, paths = "(connected peer)", b"", ()
            targets.append(target)
            paths_all.extend(paths)
            msgs.append((addr, payload))
    except BaseException:
        os.close(sock)
        raise
    act = _act(A.NET_SEND, n, spec, targets[0] if targets else "", tuple(paths_all),
               bytes=sum(len(m[1]) for m in msgs), messages=len(msgs))
    if leaves is not None:
        # a batch on a socket brokered outside is egress like any send there (a
        # composition rule, e.g. sensitive-then-egress, decides it)
        act.detail["egress"] = "broker"
        if leaves.spec:
            act.detail["egress_rule"] = leaves.spec
    if passed:
        pinned = [p for p in pinned if p not in passed]
    eff = SocketCall("sendto" if spec.name == "sendmsg" else "sendmmsg", sock, passed_fds=passed,
                     addr=msgs[0][0] if msgs else b"", payload=msgs[0][1] if msgs else b"",
                     flags=flags, pinned=pinned[0] if pinned else -1, messages=msgs,
                     more_pinned=tuple(pinned[1:]),
                     msg_len_at=tuple(h + 56 for h in hdrs) if spec.name == "sendmmsg" else (),
                     tid=n.tid)
    return Decoded(act, eff)


def _check_batch_destination(st: DecodeState, sock: int, addr: bytes):
    """sendmmsg to inet addresses: each message must stay where its socket already is (the
    sandbox's loopback, or the outside destination this socket was brokered to); a batch
    that would need brokering is refused rather than half-sent. Returns the verdict of a
    message that leaves the sandbox (the batch is then egress, decided as such), else None."""
    if st.destinations is None or int.from_bytes(addr[:2], "little") not in (AF_INET, AF_INET6):
        return None
    parsed = sockaddr_to_ip_port(addr)
    if parsed is None:
        raise DecodeError(errno.EINVAL, "malformed inet address")
    _f, ip, port = parsed
    v = st.destinations.decide(ip, port, "udp", st.names_for(ip.compressed))  # (datagrams)
    outside = os.fstat(sock).st_ino in st.brokered
    if not ((v.kind == "inside" and not outside and NETWORK_CONTAINED) or
            (v.kind == "broker" and outside)):
        raise DecodeError(errno.EPERM, f"sendmmsg to {ip.compressed}:{port}: {v.reason or v.kind}"
                          " (send these one by one with sendto/sendmsg to have them decided)")
    return v if v.kind == "broker" else None


def decode_umask(n, spec, st) -> Decoded:
    st.umask_called(n.tid, n.args[0])       # (threads may share the fs struct)
    return Decoded(None, Continue())


def _s64(v: int) -> int:
    return v - (1 << 64) if v & (1 << 63) else v


HANDLERS: dict[str, Handler] = {
    "open": decode_open, "unlink": decode_unlink, "rename": decode_rename, "link": decode_link,
    "symlink": decode_symlink, "mkdir": decode_mkdir, "mknod": decode_mknod,
    "truncate": decode_truncate, "ftruncate": decode_ftruncate, "chmod": decode_chmod,
    "fchmod": decode_fchmod, "chown": decode_chown, "fchown": decode_fchown,
    "xattr": decode_xattr, "fxattr": decode_fxattr, "utime": decode_utime, "exec": decode_exec,
    "connect": decode_connect, "bind": decode_bind, "sendto": decode_sendto,
    "sendmsg": decode_sendmsg, "sendmmsg": decode_sendmsg, "umask": decode_umask,
    "fallocate": decode_fallocate,
}

# nr -> (spec, handler), built once from the table.
DISPATCH: dict[int, tuple[SyscallSpec, Handler]] = {
    nr: (spec, HANDLERS[spec.handler]) for nr, spec in BY_NR.items() if spec.handler}
