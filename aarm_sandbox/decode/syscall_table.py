"""The one table of (syscall, argument condition) -> filter verdict -> semantic action.

Both the BPF filter compiler (intercept/filter.py) and the supervisor's decoder read this
table, and the golden filter tests are generated from it, so a syscall can never be
filtered one way and decoded another. Numbers are x86_64 and written out here on purpose:
the build host's headers (and libseccomp 2.5.4's name table) predate syscalls the running
kernel has (fchmodat2, setxattrat, open_tree_attr, ...), and a name we cannot resolve must
not silently fall through to ALLOW.
"""
from __future__ import annotations

import errno
from enum import Enum

from aarm_sandbox.records import FrozenRecord


class Verdict(str, Enum):
    NOTIFY = "notify"   # hand to the supervisor (SECCOMP_RET_USER_NOTIF)
    ERRNO = "errno"     # fail in the kernel with `errno`, never reaches the supervisor
    ALLOW = "allow"


# (The records are FrozenRecords, not frozen dataclasses: this module is imported by every
# `run` before the sandbox starts.)
class ArgCond(FrozenRecord):
    """One comparison on a syscall argument; ops mirror libseccomp's SCMP_CMP_*.

    Integer arguments the kernel reads as 32-bit are compared through a 32-bit mask so junk
    in the upper half cannot change the verdict (ABI-02).
    """
    __slots__ = ("arg", "op", "value", "mask")

    def __init__(self, arg: int, op: str, value: int, mask: int = 0xFFFFFFFF):
        setattr_ = object.__setattr__
        setattr_(self, "arg", arg)
        setattr_(self, "op", op)            # "masked_eq" | "eq" | "ne"
        setattr_(self, "value", value)
        setattr_(self, "mask", mask)


class FilterRule(FrozenRecord):
    """A verdict for `nr`; applies when any group in `when` matches (all conds in a group)."""
    __slots__ = ("verdict", "when", "errno")

    def __init__(self, verdict: Verdict, when: tuple[tuple[ArgCond, ...], ...] = (),
                 errno: int = 0):
        setattr_ = object.__setattr__
        setattr_(self, "verdict", verdict)
        setattr_(self, "when", when)        # () = unconditional
        setattr_(self, "errno", errno)


class SyscallSpec(FrozenRecord):
    __slots__ = ("name", "nr", "rules", "action", "handler")

    def __init__(self, name: str, nr: int, rules: tuple[FilterRule, ...], action: str = "",
                 handler: str = ""):
        setattr_ = object.__setattr__
        setattr_(self, "name", name)
        setattr_(self, "nr", nr)
        setattr_(self, "rules", rules)
        setattr_(self, "action", action)    # semantic action type for notified calls
        setattr_(self, "handler", handler)  # decode handler family (decode/handlers.py)


# --- constants the filter needs (x86_64 / generic Linux values) ---------------------------
O_WRONLY, O_RDWR, O_CREAT, O_TRUNC = 0o1, 0o2, 0o100, 0o1000
O_TMPFILE_BIT = 0o20000000           # __O_TMPFILE (O_TMPFILE also sets O_DIRECTORY)
WRITE_INTENT_BITS = (O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_TMPFILE_BIT)

CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = (CLONE_NEWTIME, CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC,
                   CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET)

SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
NETLINK_ROUTE = 0
ALLOWED_FAMILIES = {AF_UNIX, AF_INET, AF_INET6, AF_NETLINK}
SOCK_RAW, SOCK_PACKET = 3, 10
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
FS_IOC_SETFLAGS = 0x40086602
FS_IOC32_SETFLAGS = 0x40046602
FS_IOC_SETVERSION = 0x40087602
FS_IOC32_SETVERSION = 0x40047602
FS_IOC_FSSETXATTR = 0x401C5820
EXT4_IOC_SETVERSION = 0x40086604
EXT4_IOC32_SETVERSION = 0x40046604
EXT4_IOC_MIGRATE = 0x00006609
EXT4_IOC_ALLOC_DA_BLKS = 0x0000660C
FS_IOC_ENABLE_VERITY = 0x40806685
FS_IOC_SET_ENCRYPTION_POLICY = 0x800C6613
FS_IOC_ADD_ENCRYPTION_KEY = 0xC0506617
FS_IOC_REMOVE_ENCRYPTION_KEY = 0xC0406618
FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS = 0xC0406619
# Preallocation ioctls that destroy data (the fallocate punch-hole / zero-range of old), on
# a writable fd: one the sandbox inherited (stdout appended to a log) was never decided on.
FS_IOC_UNRESVSP = 0x40305829
FS_IOC_UNRESVSP64 = 0x4030582B
FS_IOC_ZERO_RANGE = 0x40305839
# /dev/loop-control, readable by uid 0 inside: adds and removes host block devices.
LOOP_CTL_ADD = 0x4C80
LOOP_CTL_REMOVE = 0x4C81
LOOP_CTL_GET_FREE = 0x4C82
# ioctls that change an inode through *any* fd the owner holds, even one opened read-only:
# the open-time decision cannot cover them, so they never reach the kernel. (Ones that
# need a capability fail anyway: the sandbox has none.) A deny-list of ioctl numbers is
# inherently incomplete for filesystems not listed here; see README "limits".
INODE_CHANGING_IOCTLS = (FS_IOC_SETFLAGS, FS_IOC32_SETFLAGS, FS_IOC_SETVERSION,
                         FS_IOC32_SETVERSION, FS_IOC_FSSETXATTR, EXT4_IOC_SETVERSION,
                         EXT4_IOC32_SETVERSION, EXT4_IOC_MIGRATE, EXT4_IOC_ALLOC_DA_BLKS,
                         FS_IOC_ENABLE_VERITY, FS_IOC_SET_ENCRYPTION_POLICY,
                         FS_IOC_ADD_ENCRYPTION_KEY, FS_IOC_REMOVE_ENCRYPTION_KEY,
                         FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS, FS_IOC_UNRESVSP,
                         FS_IOC_UNRESVSP64, FS_IOC_ZERO_RANGE, LOOP_CTL_ADD, LOOP_CTL_REMOVE,
                         LOOP_CTL_GET_FREE)
FALLOC_FL_KEEP_SIZE = 0x01
PERSONALITY_QUERY = 0xFFFFFFFF

# Highest syscall number this table knows; numbers above it up to UNKNOWN_LIMIT get ENOSYS
# so a syscall added to a future kernel starts closed, not open (ABI-03).
KNOWN_MAX_NR = 469
UNKNOWN_LIMIT = 512


def _any_bit(arg: int, bits: tuple[int, ...]) -> tuple[tuple[ArgCond, ...], ...]:
    return tuple((ArgCond(arg, "masked_eq", b, b),) for b in bits)


def _values_except(arg: int, allowed: set[int], below: int = 64,
                   width: int = 32) -> tuple[tuple[ArgCond, ...], ...]:
    """Groups matching every `width`-bit value of `arg` outside `allowed` (an allow-list
    expressed with masked_eq only: aligned power-of-two blocks below `below`, and one
    group per high bit at or above it)."""
    full = (1 << width) - 1
    groups: list[tuple[ArgCond, ...]] = []
    for b in range(below.bit_length() - 1, width):
        groups.append((ArgCond(arg, "masked_eq", 1 << b, (1 << b) & full),))
    v = 0
    while v < below:
        size = 1
        while (v % (size * 2) == 0 and v + size * 2 <= below and
               not any(v <= a < v + size * 2 for a in allowed)):
            size *= 2
        if not any(v <= a < v + size for a in allowed):
            groups.append((ArgCond(arg, "masked_eq", v, full & ~(size - 1)),))
        v += size
    return tuple(groups)


def _notify(*, when=()) -> tuple[FilterRule, ...]:
    return (FilterRule(Verdict.NOTIFY, when),)


def _errno(code: int, when=()) -> tuple[FilterRule, ...]:
    return (FilterRule(Verdict.ERRNO, when, code),)


def _spec(name: str, nr: int, rules, action: str = "", handler: str = "") -> SyscallSpec:
    return SyscallSpec(name, nr, tuple(rules), action, handler)


_OPEN_WRITE_AT1 = _any_bit(1, WRITE_INTENT_BITS)   # open(path, flags, mode)
_OPEN_WRITE_AT2 = _any_bit(2, WRITE_INTENT_BITS)   # openat(dirfd, path, flags, mode)

# Opens are special: which of them notify depends on the profile (reads are notified only
# when the profile needs to see them, e.g. ci-untrusted). filter.py expands these two.
OPEN_SYSCALLS = {"open": 1, "openat": 2}   # name -> index of the flags argument

SYSCALLS: tuple[SyscallSpec, ...] = (
    # ---- opens (flags-masked; see OPEN_SYSCALLS) ----
    _spec("open", 2, _notify(when=_OPEN_WRITE_AT1), "file.open", "open"),
    _spec("openat", 257, _notify(when=_OPEN_WRITE_AT2), "file.open", "open"),
    _spec("creat", 85, _notify(), "file.open", "open"),
    _spec("openat2", 437, _errno(errno.ENOSYS)),          # flags hidden in a struct: glibc falls back
    _spec("open_by_handle_at", 304, _errno(errno.EPERM)),
    # ---- deletes, renames, links, directories, nodes ----
    _spec("unlink", 87, _notify(), "file.delete", "unlink"),
    _spec("unlinkat", 263, _notify(), "file.delete", "unlink"),
    _spec("rmdir", 84, _notify(), "file.delete", "unlink"),
    _spec("rename", 82, _notify(), "file.rename", "rename"),
    _spec("renameat", 264, _notify(), "file.rename", "rename"),
    _spec("renameat2", 316, _notify(), "file.rename", "rename"),
    _spec("link", 86, _notify(), "file.link", "link"),
    _spec("linkat", 265, _notify(), "file.link", "link"),
    _spec("symlink", 88, _notify(), "file.symlink", "symlink"),
    _spec("symlinkat", 266, _notify(), "file.symlink", "symlink"),
    _spec("mkdir", 83, _notify(), "file.mkdir", "mkdir"),
    _spec("mkdirat", 258, _notify(), "file.mkdir", "mkdir"),
    _spec("mknod", 133, _notify(), "file.mknod", "mknod"),
    _spec("mknodat", 259, _notify(), "file.mknod", "mknod"),
    # ---- content and metadata changes ----
    _spec("truncate", 76, _notify(), "file.truncate", "truncate"),
    _spec("ftruncate", 77, _notify(), "file.truncate", "ftruncate"),
    # fallocate that destroys data (punch hole, collapse, zero, insert: any mode bit but
    # KEEP_SIZE) is decided like a truncate of the fd's file; plain preallocation is not
    _spec("fallocate", 285, _notify(when=_any_bit(1, tuple(1 << b for b in range(1, 32)))),
          "file.truncate", "fallocate"),
    _spec("chmod", 90, _notify(), "file.chmod", "chmod"),
    _spec("fchmod", 91, _notify(), "file.chmod", "fchmod"),
    _spec("fchmodat", 268, _notify(), "file.chmod", "chmod"),
    _spec("fchmodat2", 452, _notify(), "file.chmod", "chmod"),
    _spec("chown", 92, _notify(), "file.chown", "chown"),
    _spec("fchown", 93, _notify(), "file.chown", "fchown"),
    _spec("lchown", 94, _notify(), "file.chown", "chown"),
    _spec("fchownat", 260, _notify(), "file.chown", "chown"),
    _spec("setxattr", 188, _notify(), "file.xattr", "xattr"),
    _spec("lsetxattr", 189, _notify(), "file.xattr", "xattr"),
    _spec("fsetxattr", 190, _notify(), "file.xattr", "fxattr"),
    _spec("removexattr", 197, _notify(), "file.xattr", "xattr"),
    _spec("lremovexattr", 198, _notify(), "file.xattr", "xattr"),
    _spec("fremovexattr", 199, _notify(), "file.xattr", "fxattr"),
    _spec("setxattrat", 463, _errno(errno.ENOSYS)),       # glibc falls back to setxattr
    _spec("removexattrat", 466, _errno(errno.ENOSYS)),
    _spec("utime", 132, _notify(), "file.utime", "utime"),
    _spec("utimes", 235, _notify(), "file.utime", "utime"),
    _spec("futimesat", 261, _notify(), "file.utime", "utime"),
    _spec("utimensat", 280, _notify(), "file.utime", "utime"),
    _spec("file_setattr", 469, _errno(errno.ENOSYS)),
    # umask is tracked so files the supervisor creates get the target's mode bits.
    _spec("umask", 95, _notify(), "", "umask"),
    # ---- exec ----
    _spec("execve", 59, _notify(), "process.exec", "exec"),
    _spec("execveat", 322, _notify(), "process.exec", "exec"),
    # ---- network ----
    _spec("connect", 42, _notify(), "net.connect", "connect"),
    _spec("bind", 49, _notify(), "net.bind", "bind"),
    _spec("sendto", 44, _notify(when=((ArgCond(4, "ne", 0, 0xFFFFFFFFFFFFFFFF),),)),
          "net.send", "sendto"),
    _spec("sendmsg", 46, _notify(), "net.send", "sendmsg"),
    _spec("sendmmsg", 307, _notify(), "net.send", "sendmmsg"),
    # ---- socket families: unix, inet, inet6 and route netlink (what libc and the
    # sandbox's own tools need); packet, raw, vsock, xdp, alg, other netlink... closed ----
    _spec("socket", 41, (
        FilterRule(Verdict.ERRNO, _values_except(0, ALLOWED_FAMILIES) + (
            (ArgCond(0, "eq", AF_NETLINK), ArgCond(2, "ne", NETLINK_ROUTE)),), errno.EAFNOSUPPORT),
        FilterRule(Verdict.ERRNO, tuple(
            (ArgCond(0, "eq", fam), ArgCond(1, "masked_eq", typ, 0xF))
            for fam in (AF_INET, AF_INET6) for typ in (SOCK_RAW, SOCK_PACKET)), errno.EPERM),
    )),
    _spec("socketpair", 53, _errno(errno.EAFNOSUPPORT, _values_except(0, {AF_UNIX}))),
    # ---- side doors: closed in the kernel ----
    _spec("io_uring_setup", 425, _errno(errno.ENOSYS)),
    _spec("io_uring_enter", 426, _errno(errno.ENOSYS)),
    _spec("io_uring_register", 427, _errno(errno.ENOSYS)),
    _spec("clone3", 435, _errno(errno.ENOSYS)),           # libc falls back to clone (inspectable)
    _spec("clone", 56, _errno(errno.EPERM, _any_bit(0, NAMESPACE_FLAGS))),
    _spec("unshare", 272, _errno(errno.EPERM, _any_bit(0, NAMESPACE_FLAGS))),
    _spec("setns", 308, _errno(errno.EPERM)),
    _spec("seccomp", 317, _errno(errno.EPERM, _any_bit(1, (SECCOMP_FILTER_FLAG_NEW_LISTENER,)))),
    _spec("ptrace", 101, _errno(errno.EPERM)),
    _spec("process_vm_readv", 310, _errno(errno.EPERM)),
    _spec("process_vm_writev", 311, _errno(errno.EPERM)),
    _spec("process_madvise", 440, _errno(errno.EPERM)),
    _spec("pidfd_getfd", 438, _errno(errno.EPERM)),
    _spec("bpf", 321, _errno(errno.EPERM)),
    _spec("perf_event_open", 298, _errno(errno.EPERM)),
    _spec("userfaultfd", 323, _errno(errno.EPERM)),
    _spec("kexec_load", 246, _errno(errno.EPERM)),
    _spec("kexec_file_load", 320, _errno(errno.EPERM)),
    _spec("init_module", 175, _errno(errno.EPERM)),
    _spec("finit_module", 313, _errno(errno.EPERM)),
    _spec("delete_module", 176, _errno(errno.EPERM)),
    _spec("mount", 165, _errno(errno.EPERM)),
    _spec("umount2", 166, _errno(errno.EPERM)),
    _spec("pivot_root", 155, _errno(errno.EPERM)),
    _spec("chroot", 161, _errno(errno.EPERM)),
    _spec("open_tree", 428, _errno(errno.EPERM)),
    _spec("move_mount", 429, _errno(errno.EPERM)),
    _spec("fsopen", 430, _errno(errno.EPERM)),
    _spec("fsconfig", 431, _errno(errno.EPERM)),
    _spec("fsmount", 432, _errno(errno.EPERM)),
    _spec("fspick", 433, _errno(errno.EPERM)),
    _spec("mount_setattr", 442, _errno(errno.EPERM)),
    _spec("open_tree_attr", 467, _errno(errno.EPERM)),
    _spec("personality", 135, _errno(errno.EPERM, (
        (ArgCond(0, "ne", PERSONALITY_QUERY), ArgCond(0, "ne", 0)),))),
    _spec("iopl", 172, _errno(errno.EPERM)),
    _spec("ioperm", 173, _errno(errno.EPERM)),
    _spec("uselib", 134, _errno(errno.EPERM)),
    _spec("keyctl", 250, _errno(errno.EPERM)),
    _spec("add_key", 248, _errno(errno.EPERM)),
    _spec("request_key", 249, _errno(errno.EPERM)),
    _spec("lsm_set_self_attr", 460, _errno(errno.EPERM)),
    _spec("ioctl", 16, _errno(errno.EPERM, (
        (ArgCond(1, "masked_eq", TIOCSTI),),
        (ArgCond(1, "masked_eq", TIOCLINUX),),
    ) + tuple((ArgCond(1, "masked_eq", c),) for c in INODE_CHANGING_IOCTLS))),
)

BY_NR: dict[int, SyscallSpec] = {s.nr: s for s in SYSCALLS}
BY_NAME: dict[str, SyscallSpec] = {s.name: s for s in SYSCALLS}
NOTIFIED: frozenset[int] = frozenset(
    s.nr for s in SYSCALLS if any(r.verdict is Verdict.NOTIFY for r in s.rules))
