"""Launch the command confined: namespaces, masks, no-new-privs, seccomp listener.

All of the confinement happens in C (native/aarm_native.c) between clone and exec, so no
Python ever runs in a half-confined child. This module only prepares the plan, degrades
namespaces the host refuses (saying so), and hands back the listener.
"""
from __future__ import annotations

import ctypes
import os

from aarm_sandbox._native import ffi, lib

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5

NS_NAMES = {CLONE_NEWUSER: "user", CLONE_NEWPID: "pid", CLONE_NEWNS: "mount",
            CLONE_NEWIPC: "ipc", CLONE_NEWUTS: "uts", CLONE_NEWNET: "network"}


class LaunchError(Exception):
    """The sandbox could not be started; the message says which step and why."""


ALL_NAMESPACES = (CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS
                  | CLONE_NEWNET)


class LaunchPlan:
    """What to start and how to confine it. (Plain classes here, not dataclasses: this
    module is on `run`'s startup path, where each dataclass definition costs ~0.5 ms.)"""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str, bpf: bytes,
                 namespaces: int = ALL_NAMESPACES, mask_dirs: list[str] | None = None,
                 mask_files: list[str] | None = None, mount_proc: bool = True,
                 drop_caps: bool = True,
                 seccomp_flags: int = SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
                 loopback: bool = True, private_shm: bool = True,
                 bind_files: list[tuple[str, str]] | None = None, dns_stub: bool = False):
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.bpf = bpf
        self.namespaces = namespaces
        self.mask_dirs = [] if mask_dirs is None else mask_dirs
        self.mask_files = [] if mask_files is None else mask_files
        self.mount_proc = mount_proc
        self.drop_caps = drop_caps
        self.seccomp_flags = seccomp_flags
        self.loopback = loopback            # bring lo up in the new network namespace
        self.private_shm = private_shm
        # (src, dst), read-only
        self.bind_files = [] if bind_files is None else bind_files
        self.dns_stub = dns_stub    # make a UDP socket on 127.0.0.53:53 inside the netns for us
        # (dir, name): dir becomes a view of its entries at launch without name (see
        # native/aarm_native.c make_view), parents before children
        self.view_hide: list[tuple[str, str]] = []


class Sandbox:
    """The started sandbox: its init, the seccomp listener and the status pipe."""

    def __init__(self, pid: int, listener: int, status_fd: int, namespaces: int,
                 warnings: list[str], dns_stub: int = -1, nosym_root: int = -1):
        self.pid = pid                  # the sandbox init, in our pid namespace
        self.listener = listener
        self.status_fd = status_fd
        self.namespaces = namespaces
        self.warnings = warnings
        self.dns_stub = dns_stub        # our copy of the stub's socket inside the sandbox's netns
        # a detached copy of the sandbox's mount tree that follows no symlink (or -1): the
        # native fast path deletes and makes directories through it without pinning parents
        self.nosym_root = nosym_root

    def kill(self) -> None:
        """Tear down a sandbox whose command must not run (before supervision starts)."""
        try:       # first: its command (waiting in execve) dies with it, unanswered
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        self.close_nosym_root()
        for fd in (self.listener, self.status_fd, self.dns_stub):
            try:
                os.close(fd)
            except OSError:
                pass

    def close_nosym_root(self) -> None:
        if self.nosym_root >= 0:
            fd, self.nosym_root = self.nosym_root, -1
            os.close(fd)

    def wait(self) -> int:
        """Block until the command ends; return its raw wait status."""
        out = ffi.new("int *")
        r = lib.aarm_read_status(self.status_fd, out)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        if r < 0:
            raise LaunchError(f"sandbox init ended without reporting the command's status "
                              f"({os.strerror(-r)})")
        return out[0]


def disabled_namespaces(spec: str) -> int:
    """CLONE_* flags named in AARM_DISABLE_NAMESPACES (e.g. "mount,user"): for hosts where
    a namespace is known to misbehave, and to test the degraded modes."""
    by_name = {v: k for k, v in NS_NAMES.items()}
    flags = 0
    for name in filter(None, (x.strip() for x in spec.split(","))):
        if name not in by_name:
            raise LaunchError(f"AARM_DISABLE_NAMESPACES: unknown namespace {name!r} "
                              f"(known: {', '.join(by_name)})")
        flags |= by_name[name]
    return flags


def _cstr_array(items: list[bytes], keep: list) -> object:
    cs = [ffi.new("char[]", s) for s in items]
    keep.extend(cs)
    arr = ffi.new("char *[]", cs + [ffi.NULL])
    keep.append(arr)
    return arr


def _spawn(plan: LaunchPlan, namespaces: int) -> tuple[int, int, int, str, int, int]:
    keep: list = []
    cfg = ffi.new("struct aarm_spawn_config *")
    cfg.argv = _cstr_array([os.fsencode(a) for a in plan.argv], keep)
    cfg.envp = _cstr_array([os.fsencode(f"{k}={v}") for k, v in plan.env.items()], keep)
    cwd = ffi.new("char[]", os.fsencode(plan.cwd))
    keep.append(cwd)
    cfg.cwd = cwd
    bpf = ffi.new("char[]", plan.bpf)
    keep.append(bpf)
    cfg.bpf = bpf
    cfg.bpf_len = len(plan.bpf) // 8
    cfg.seccomp_flags = plan.seccomp_flags
    cfg.clone_flags = namespaces
    cfg.outer_uid = os.geteuid()
    cfg.outer_gid = os.getegid()
    mounts = bool(namespaces & CLONE_NEWNS)
    cfg.mask_dirs = _cstr_array([os.fsencode(p) for p in plan.mask_dirs], keep) if mounts else ffi.NULL
    cfg.mask_files = _cstr_array([os.fsencode(p) for p in plan.mask_files], keep) if mounts else ffi.NULL
    cfg.mount_proc = int(plan.mount_proc and mounts and bool(namespaces & CLONE_NEWPID))
    cfg.drop_caps = int(plan.drop_caps)
    cfg.loopback_up = int(plan.loopback)
    cfg.private_shm = int(plan.private_shm)
    if mounts and plan.view_hide:
        cfg.view_hide = _cstr_array([os.fsencode(p) for pair in plan.view_hide for p in pair], keep)
    if mounts and plan.bind_files:
        cfg.bind_files = _cstr_array([os.fsencode(p) for pair in plan.bind_files for p in pair], keep)
    dns = ffi.new("int *", -1)
    keep.append(dns)
    if plan.dns_stub:
        cfg.out_dns_stub = dns
    nosym = ffi.new("int *", -1)
    keep.append(nosym)
    cfg.out_nosym_root = nosym
    listener = ffi.new("int *", -1)
    status = ffi.new("int *", -1)
    err = ffi.new("char[]", 4096)
    pid = lib.aarm_spawn(cfg, listener, status, err, 4096)
    return (pid, listener[0], status[0], ffi.string(err).decode("utf-8", "replace"), dns[0],
            nosym[0])


def launch(plan: LaunchPlan) -> Sandbox:
    """Start the sandbox; if the host refuses namespaces, drop them one group at a time,
    each with a warning (never silently)."""
    attempts = [plan.namespaces,
                plan.namespaces & ~CLONE_NEWUSER,                      # root without userns
                plan.namespaces & ~(CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS),
                0]
    warnings: list[str] = []
    last = ""
    seen = set()
    for ns in attempts:
        if ns in seen:
            continue
        seen.add(ns)
        pid, listener, status, msg, dns, nosym = _spawn(plan, ns)
        if pid > 0:
            missing = plan.namespaces & ~ns
            if missing:
                names = ", ".join(v for k, v in NS_NAMES.items() if missing & k)
                warnings.append(f"the host refused {names} namespace(s) ({last}); running with "
                                f"reduced isolation — see `aarm-sandbox doctor`")
            warnings.extend(line[len("warning: "):] if line.startswith("warning: ") else line
                            for line in msg.splitlines() if line.strip())
            return Sandbox(pid, listener, status, ns, warnings, dns, nosym)
        last = msg
        if not _namespace_failure(msg):
            break
    raise LaunchError(last or "sandbox launch failed")


def _namespace_failure(msg: str) -> bool:
    m = msg.lower()
    return any(k in m for k in ("clone", "uid_map", "gid_map", "setgroups", "namespace", "mount"))


# ---- supervisor self-hardening ----------------------------------------------------------
_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def drop_effective_capabilities() -> bool:
    """Run the supervisor's emulated file operations with the sandbox's authority.

    As root, the sandboxed tree has no capabilities; if the supervisor kept
    CAP_DAC_OVERRIDE & co. in its effective set, an emulated open would succeed where the
    target's own would fail. Permitted caps stay, so later stages can raise what they need.
    Must run before any other thread starts (capabilities are per thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    hdr = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.syscall(125, ctypes.byref(hdr), data) != 0:     # capget
        return False
    if not (data[0].effective or data[1].effective):
        return True
    data[0].effective = 0
    data[1].effective = 0
    return libc.syscall(126, ctypes.byref(hdr), data) == 0   # capset
