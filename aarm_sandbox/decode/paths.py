"""Resolve a syscall's (dirfd, path) exactly as the kernel would for the calling thread.

Everything is resolved *through the target's own view*: its root (/proc/TID/root, which
carries the target's mount namespace with its masks and procfs), its per-thread cwd
(/proc/TID/cwd, so unshare(CLONE_FS) is honoured) and its fd table (/proc/TID/fd/N). The
result is an O_PATH fd pinned by the supervisor plus the canonical path the kernel reports
for that fd, so the decision is made on the object that the supervisor then operates on
(no second lookup by name, no TOCTOU).

Fast path: one openat2(RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS). Any symlink on the way
drops to a component walk that follows symlinks in the target's root, rewrites
/proc/self and /proc/thread-self to the target's ids, and follows procfs magic links by
opening them (the kernel hands us the very file the target would reach).
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat

from aarm_sandbox._native import lib
from aarm_sandbox.decode.memory import DecodeError

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_IN_ROOT = 0x10
O_PATH = os.O_PATH
_OPATH_FLAGS = os.O_PATH | os.O_CLOEXEC
MAX_SYMLINKS = 40


def as_int32(value: int) -> int:
    """The kernel reads int arguments as 32 bits: 0x00000000FFFFFF9C is AT_FDCWD too."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def join_path(parent: str, name: bytes) -> str:
    sname = os.fsdecode(name)
    if sname in ("", "."):
        return parent
    if sname == "..":
        return os.path.dirname(parent) or "/"
    return parent.rstrip("/") + "/" + sname if parent != "/" else "/" + sname


class ParentRef:
    """The pinned directory an operation happens in, and the final name inside it. (The
    records here are plain slotted classes: this module is on the startup path.)"""
    __slots__ = ("fd", "name", "path", "trailing_slash")

    def __init__(self, fd: int, name: bytes, path: str, trailing_slash: bool):
        self.fd = fd
        self.name = name            # as the kernel will use it (trailing slash kept in `name_for_op`)
        self.path = path            # canonical path of name inside the directory
        self.trailing_slash = trailing_slash

    @property
    def name_for_op(self) -> bytes:
        return self.name + b"/" if self.trailing_slash else self.name

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ObjectRef:
    """A pinned O_PATH fd of the object a following lookup reaches."""
    __slots__ = ("fd", "path", "st")

    def __init__(self, fd: int, path: str, st: os.stat_result):
        self.fd = fd
        self.path = path
        self.st = st

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Resolver:
    """Path resolution for one notification's calling thread.

    `session_root` is an O_PATH fd of the sandbox's root directory, shared by every task:
    chroot, pivot_root, mount, setns and unshare(CLONE_NEWNS) never reach the kernel (the
    filter denies them), so no sandboxed task can have another root. Without it (-1) the
    calling thread's /proc/TID/root is opened each time."""

    __slots__ = ("tid", "session_root", "via_fd_flags")

    def __init__(self, tid: int, session_root: int = -1):
        self.tid = tid
        self.session_root = session_root
        # Set when the last component was a /proc/PID/fd/N magic link: the open flags of
        # that existing fd (a reopen cannot gain access the fd does not already carry).
        self.via_fd_flags: int | None = None

    # ----- base directories ------------------------------------------------------------
    def base_fd(self, dirfd_arg: int, path: bytes) -> int:
        """A new fd the caller owns and closes."""
        if path.startswith(b"/"):
            if self.session_root >= 0:
                return os.dup(self.session_root)
            return self._open_proc(f"/proc/{self.tid}/root")
        dirfd = as_int32(dirfd_arg)
        if dirfd == AT_FDCWD:
            return self._open_proc(f"/proc/{self.tid}/cwd")
        if dirfd < 0:
            raise DecodeError(errno.EBADF, f"bad dirfd {dirfd}")
        return self._open_proc(f"/proc/{self.tid}/fd/{dirfd}", bad_errno=errno.EBADF)

    def root_fd(self) -> int:
        if self.session_root >= 0:
            return os.dup(self.session_root)
        return self._open_proc(f"/proc/{self.tid}/root")

    @staticmethod
    def _open_proc(p: str, bad_errno: int = errno.ESRCH) -> int:
        try:
            return os.open(p, _OPATH_FLAGS)
        except OSError as e:
            raise DecodeError(bad_errno if e.errno == errno.ENOENT else e.errno, f"open {p}") from None

    # ----- parent + last component (operations that do not follow the last name) ------
    def parent(self, dirfd_arg: int, path: bytes) -> ParentRef:
        if not path:
            raise DecodeError(errno.ENOENT, "empty path")
        trailing = path.endswith(b"/") and path.strip(b"/") != b""
        stripped = path.rstrip(b"/")
        if not stripped:                     # "/" itself
            base = self.base_fd(dirfd_arg, b"/")
            return ParentRef(base, b".", fd_path(base), False)
        head, _sep, name = stripped.rpartition(b"/")
        absolute = path.startswith(b"/")
        walked = False
        if absolute and self.session_root >= 0:      # the shared root: no private copy
            dfd, walked = self._lookup_dir(self.session_root, head or b"/", True)
        else:
            base = self.base_fd(dirfd_arg, path)
            if head == b"" and not absolute:
                dfd = base
            else:
                try:
                    dfd, walked = self._lookup_dir(base, head or b"/", absolute)
                finally:
                    os.close(base)
        try:
            if absolute and not walked and _clean(stripped):
                # Absolute, no "." / ".." / "//", reached without meeting a symlink: the
                # text already is the canonical path of what was reached (no readlink).
                return ParentRef(dfd, name, os.fsdecode(stripped), trailing)
            return ParentRef(dfd, name, join_path(fd_path(dfd), name), trailing)
        except BaseException:
            os.close(dfd)
            raise

    def lookup_dir(self, base: int, rel: bytes, absolute: bool) -> int:
        """The directory `rel` names relative to `base` (absolute: `base` is the root)."""
        return self._lookup_dir(base, rel, absolute)[0]

    def _lookup_dir(self, base: int, rel: bytes, absolute: bool) -> tuple[int, bool]:
        """(fd, walked): walked is True when symlinks had to be followed on the way."""
        resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | (RESOLVE_IN_ROOT if absolute else 0)
        fd = lib.aarm_openat2(base, rel, _OPATH_FLAGS | os.O_DIRECTORY, 0, resolve)
        if fd >= 0:
            return fd, False
        if -fd != errno.ELOOP:
            raise DecodeError(-fd, f"resolve {rel!r}")
        fd = self._follow_in_root(rel, _OPATH_FLAGS | os.O_DIRECTORY) if absolute else -1
        if fd < 0:
            fd = self._walk(base, rel, follow_last=True, absolute=absolute)
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            os.close(fd)
            raise DecodeError(errno.ENOTDIR, f"{rel!r} is not a directory")
        return fd, True

    # ----- whole object (operations that follow, or explicitly do not follow, the last) --
    def object(self, dirfd_arg: int, path: bytes, follow: bool, empty_ok: bool = False) -> ObjectRef:
        if not path:
            if not empty_ok:
                raise DecodeError(errno.ENOENT, "empty path")
            return self._object_ref(self.base_fd(dirfd_arg, b""))
        absolute = path.startswith(b"/")
        flags = _OPATH_FLAGS | (0 if follow else os.O_NOFOLLOW)
        if absolute and self.session_root >= 0:
            # The shared root needs no private copy (two syscalls), and a clean absolute
            # path reached without a symlink is its own canonical text (no readlink), as
            # in parent().
            fd = lib.aarm_openat2(self.session_root, path, flags, 0,
                                  RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_IN_ROOT)
            if fd >= 0:
                clean = _clean(path) and not path.endswith(b"/")
                return self._object_ref(fd, os.fsdecode(path) if clean else None)
            if -fd != errno.ELOOP:
                raise DecodeError(-fd, f"resolve {path!r}")
            fd = self._follow_in_root(path, flags)
            if fd < 0:
                fd = self._walk(self.session_root, path, follow_last=follow, absolute=True)
            return self._object_ref(fd)
        base = self.base_fd(dirfd_arg, path)
        try:
            resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | (RESOLVE_IN_ROOT if absolute else 0)
            fd = lib.aarm_openat2(base, path, flags, 0, resolve)
            if fd < 0:
                if -fd != errno.ELOOP:
                    raise DecodeError(-fd, f"resolve {path!r}")
                fd = self._walk(base, path, follow_last=follow, absolute=absolute)
        finally:
            os.close(base)
        return self._object_ref(fd)

    @staticmethod
    def _object_ref(fd: int, path: str | None = None) -> ObjectRef:
        try:
            return ObjectRef(fd, fd_path(fd) if path is None else path, os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise

    def _follow_in_root(self, path: bytes, flags: int) -> int:
        """An absolute path with symlinks on the way, resolved by the kernel itself from the
        session root (symlinks followed inside it, no magic link), or -1 for the component
        walk: on any error (the walk answers it exactly), and when the object reached is on
        the sandbox's procfs (/proc/self there would have been the supervisor's, not the
        caller's; any path through /proc that leaves it does so by a magic link, refused).
        One syscall instead of an open and an fstat per component: an exec's dynamic loader
        (/lib64/ld-linux-x86-64.so.2, two symlinks deep) walked ~20 of them."""
        if self.session_root < 0:
            return -1
        fd = lib.aarm_openat2(self.session_root, path, flags, 0,
                              RESOLVE_NO_MAGICLINKS | RESOLVE_IN_ROOT)
        if fd < 0:
            return -1
        try:
            if os.fstat(fd).st_dev != _session_proc_dev(self.session_root):
                return fd
        except OSError:
            pass
        os.close(fd)
        return -1

    # ----- slow path: component walk with the target's symlink semantics ---------------
    def _walk(self, base: int, path: bytes, follow_last: bool, absolute: bool) -> int:
        root = self.root_fd()
        try:
            root_st = os.fstat(root)
            cur = os.dup(root if absolute else base)
            comps = [c for c in path.split(b"/") if c]
            trailing = path.endswith(b"/")
            links = 0
            proc_dev = None
            while comps:
                comp = comps.pop(0)
                last = not comps
                if comp == b".":
                    continue
                if comp == b"..":
                    st = os.fstat(cur)
                    if (st.st_dev, st.st_ino) == (root_st.st_dev, root_st.st_ino):
                        continue
                    nxt = os.open(b"..", _OPATH_FLAGS, dir_fd=cur)
                    os.close(cur)
                    cur = nxt
                    continue
                try:
                    nxt = os.open(comp, _OPATH_FLAGS | os.O_NOFOLLOW, dir_fd=cur)
                except OSError as e:
                    os.close(cur)
                    raise DecodeError(e.errno, f"walk {comp!r}") from None
                st = os.fstat(nxt)
                if not stat.S_ISLNK(st.st_mode) or (last and not follow_last and not trailing):
                    os.close(cur)
                    cur = nxt
                    continue
                links += 1
                if links > MAX_SYMLINKS:
                    os.close(nxt); os.close(cur)
                    raise DecodeError(errno.ELOOP, "too many symlinks")
                if proc_dev is None:
                    proc_dev = self._proc_dev(root)
                if st.st_dev == proc_dev:
                    # procfs resolves "self" for the *reader*; we read on the target's behalf.
                    if comp == b"self":
                        os.close(nxt)
                        comps[:0] = [self._ns_ids()[0]]
                        continue
                    if comp == b"thread-self":
                        os.close(nxt)
                        tg, t = self._ns_ids()
                        comps[:0] = [tg, b"task", t]
                        continue
                    target = _readlinkat_empty(nxt)
                    if not (target == b"self" or target.startswith(b"self/")):
                        # A magic link: open it and let the kernel hand us its file.
                        os.close(nxt)
                        try:
                            magic = os.open(comp, _OPATH_FLAGS, dir_fd=cur)
                        except OSError as e:
                            os.close(cur)
                            raise DecodeError(e.errno, f"magic link {comp!r}") from None
                        self.via_fd_flags = _fd_flags(cur, comp, magic) if last else None
                        os.close(cur)
                        cur = magic
                        continue
                else:
                    target = _readlinkat_empty(nxt)
                os.close(nxt)
                comps[:0] = [c for c in target.split(b"/") if c]
                if target.startswith(b"/"):
                    os.close(cur)
                    cur = os.dup(root)
            return cur
        finally:
            os.close(root)

    def _proc_dev(self, root: int) -> int:
        try:
            fd = os.open(b"proc", _OPATH_FLAGS | os.O_DIRECTORY, dir_fd=root)
        except OSError:
            return -1
        try:
            return os.fstat(fd).st_dev
        finally:
            os.close(fd)

    def _ns_ids(self) -> tuple[bytes, bytes]:
        """The calling thread's (tgid, tid) as seen in its own pid namespace."""
        tg = t = None
        with open(f"/proc/{self.tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"NStgid:"):
                    tg = line.split()[-1]
                elif line.startswith(b"NSpid:"):
                    t = line.split()[-1]
        if tg is None or t is None:
            raise DecodeError(errno.ESRCH, "no namespace ids")
        return tg, t


_proc_devs: dict[int, int] = {}


def _session_proc_dev(session_root: int) -> int:
    """st_dev of the sandbox's /proc, per session root fd (one a session, pinned for its
    whole life); -2 when it has none, which no object's st_dev equals."""
    dev = _proc_devs.get(session_root)
    if dev is None:
        try:
            fd = os.open(b"proc", _OPATH_FLAGS | os.O_DIRECTORY, dir_fd=session_root)
        except OSError:
            dev = -2
        else:
            try:
                dev = os.fstat(fd).st_dev
            finally:
                os.close(fd)
        _proc_devs[session_root] = dev
    return dev


_libc = ctypes.CDLL(None, use_errno=True)
_libc.readlinkat.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t)
_libc.readlinkat.restype = ctypes.c_ssize_t


def fs_magic(fd: int) -> int | None:
    """The file system type (f_type of fstatfs, the first field of struct statfs) of fd's
    file, an O_PATH fd too; None when it cannot be read."""
    buf = ctypes.create_string_buffer(128)
    if _libc.fstatfs(fd, buf) != 0:
        return None
    return int.from_bytes(buf.raw[:8], "little", signed=True)


def _fd_flags(fd_dir: int, name: bytes, opened: int) -> int | None:
    """Open flags of fd `name` whose /proc/PID/fd directory is `fd_dir`, provided that fd
    still is the file `opened` (our O_PATH open of the magic link): the same mount and
    inode in its fdinfo as in ours. The target can dup2 another fd onto that number between
    our open and this read (a read-only fd of a file outside, then a writable one of its
    own): its access would then be judged for the wrong file. None: not such a directory,
    unreadable, or another file by now."""
    if not name.isdigit():
        return None
    theirs = _fdinfo(b"../fdinfo/" + name, fd_dir)
    ours = _fdinfo(b"/proc/self/fdinfo/%d" % opened, None)
    if theirs is None or ours is None or theirs[1:] != ours[1:] or None in theirs[1:]:
        return None
    return theirs[0]


def _fdinfo(path: bytes, dir_fd: int | None) -> tuple[int, int | None, int | None] | None:
    """(flags, mnt_id, ino) from an fdinfo file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        fields = dict(line.split(b":", 1) for line in os.read(fd, 4096).splitlines() if b":" in line)
        mnt, ino = fields.get(b"mnt_id"), fields.get(b"ino")
        return (int(fields[b"flags"].strip(), 8), None if mnt is None else int(mnt.strip()),
                None if ino is None else int(ino.strip()))
    except (OSError, ValueError, KeyError):
        return None
    finally:
        os.close(fd)
    return None


def _clean(path: bytes) -> bool:
    return b"//" not in path and b"/./" not in path and b"/../" not in path \
        and not path.endswith((b"/.", b"/.."))


def _readlinkat_empty(fd: int) -> bytes:
    """readlinkat(fd, "") reads the symlink an O_PATH|O_NOFOLLOW fd refers to."""
    buf = ctypes.create_string_buffer(4097)
    n = _libc.readlinkat(fd, b"", buf, 4096)
    if n < 0:
        raise DecodeError(ctypes.get_errno(), "readlinkat")
    return buf.raw[:n]
