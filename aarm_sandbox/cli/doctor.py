"""`aarm-sandbox doctor`: probe every kernel feature the sandbox relies on.

Each probe actually exercises the feature (in a throwaway child where it changes process
state) rather than reading version numbers, and says what degrades when it is missing.
"""
from __future__ import annotations

import json
import os
import platform
import sys


def _probe_userns() -> tuple[bool, str]:
    pid = os.fork()
    if pid == 0:
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            os._exit(0 if libc.unshare(0x10000000 | 0x40000000 | 0x00020000) == 0 else 1)
        except BaseException:
            os._exit(2)
    _, st = os.waitpid(pid, 0)
    ok = os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0
    return ok, "user+net+mount namespaces can be created" if ok else \
        "cannot create user namespaces (e.g. AppArmor restrict_unprivileged_userns or " \
        "max_user_namespaces=0): no network isolation, no credential masks"


def _probe_nosym_tree() -> tuple[bool, str]:
    """What the sandbox's init does (aarm_make_nosym_root), in a child with a mount
    namespace of its own."""
    from aarm_sandbox._native import lib
    pid = os.fork()
    if pid == 0:
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            flags = 0x00020000 | (0 if os.geteuid() == 0 else 0x10000000)   # mount (+ user)
            if libc.unshare(flags) != 0:
                os._exit(3)
            fd = lib.aarm_make_nosym_root()
            os._exit(0 if fd >= 0 else 10 + min(-fd, 200))
        except BaseException:
            os._exit(2)
    _, st = os.waitpid(pid, 0)
    code = os.WEXITSTATUS(st) if os.WIFEXITED(st) else -1
    if code == 0:
        return True, ("deletes and mkdirs in C walk a detached copy of the sandbox's mount "
                      "tree that follows no symlink (no parent pinned per call)")
    why = (os.strerror(code - 10) if code >= 10 else "no mount namespace" if code == 3
           else "probe failed")
    return False, (f"open_tree/mount_setattr refused ({why}; needs Linux 5.14): the fast path "
                   "pins each parent directory instead (~1 µs more a delete)")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def collect() -> list[dict]:
    from aarm_sandbox._native import lib
    rows: list[dict] = []

    def add(name: str, ok: bool, detail: str, required: bool = False):
        rows.append({"feature": name, "ok": bool(ok), "required": required, "detail": detail})

    add("arch", platform.machine() == "x86_64", f"{platform.machine()} (filters are x86_64)", True)
    add("kernel", True, platform.release())
    f1 = lib.aarm_seccomp_feature(1)
    add("seccomp user notification + WAIT_KILLABLE_RECV", f1 == 1,
        "listener filters install" if f1 == 1 else "unavailable: cannot supervise (nested "
        "seccomp sandbox or kernel < 5.19)", True)
    f3 = lib.aarm_seccomp_feature(3)
    add("SECCOMP_IOCTL_NOTIF_ADDFD", f3 == 1, "opens are emulated race-free" if f3 == 1 else
        "missing (kernel < 5.14): write-opens would be denied", True)
    f2 = lib.aarm_seccomp_feature(2)
    add("SYNC_WAKE_UP", f2 == 1, "same-CPU wake-ups (~2x faster decisions)" if f2 == 1 else
        "missing (kernel < 6.6): decisions ~2x slower")
    ok, detail = _probe_userns()
    add("user namespaces", ok, detail)
    try:
        fd = lib.aarm_pidfd_open(os.getpid(), 0)
        ok = fd >= 0
        if ok:
            g = lib.aarm_pidfd_getfd(fd, 0, 0)
            ok = g >= 0
            if g >= 0:
                os.close(g)
            os.close(fd)
    except Exception:  # noqa: BLE001
        ok = False
    add("pidfd_getfd", ok, "sockets/fds are operated on race-free" if ok else
        "missing (kernel < 5.6): fd-based emulation unavailable", True)
    r = lib.aarm_openat2(-100, b"/", os.O_PATH, 0, 0x10)
    if r >= 0:
        os.close(r)
    add("openat2", r >= 0, "supervisor-side resolution in the target's root" if r >= 0 else
        "missing (kernel < 5.6)", True)
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        abi = libc.syscall(444, None, 0, 1)     # landlock_create_ruleset(NULL, 0, VERSION)
    except Exception:  # noqa: BLE001
        abi = -1
    add("landlock", abi > 0, f"ABI {abi} (reserved for the static backstop)" if abi > 0 else "unavailable")
    uring = _read("/proc/sys/kernel/io_uring_disabled")
    add("io_uring closed in the filter", True, f"io_uring_disabled={uring}; the filter returns ENOSYS")
    try:
        from aarm_sandbox.intercept.filter import compile_filter
        prog = compile_filter()
        add("libseccomp", True, f"filter compiled: {len(prog) // 8} instructions", True)
    except Exception as e:  # noqa: BLE001
        add("libseccomp", False, str(e), True)
    yama = _read("/proc/sys/kernel/yama/ptrace_scope")
    from aarm_sandbox.enforce.exec_argv import ptrace_works
    ok, why = ptrace_works()
    add("ptrace", ok,
        (f"the supervisor can attach to a child: allowed execs are checked in their exec "
         f"stop, before their first instruction, and modify: append_args restarts execs "
         f"with the added arguments" if ok else f"{why}: allowed execs are checked only "
         f"after they start (a program whose path or arguments were swapped may act "
         f"first), and execs that an append_args or scrub_env rule matches are refused")
        + f"; yama ptrace_scope={yama or 'absent'}; the ptrace fallback "
        "backend is not in this release (without unotify, run refuses to start)")
    add("native fast path", hasattr(lib, "aarm_fast_new"),
        "hot allowed file operations decided in C (AARM_FAST_PATH=0 disables)"
        if os.environ.get("AARM_FAST_PATH", "1") != "0" else "disabled by AARM_FAST_PATH=0")
    add("no-symlink mount copy", *_probe_nosym_tree())
    add("journal signing key", *_signing_key())
    try:
        from aarm_sandbox.enforce.freeze import freezer_support
        method, detail = freezer_support()
        add("process-tree freeze", method != "signals", detail)
    except Exception as e:  # noqa: BLE001
        add("process-tree freeze", False, f"probe failed: {e}")
    userns = next((r for r in rows if r["feature"].startswith("user namespaces")), None)
    contained = userns["ok"] if userns else False
    add("network isolation", contained,
        "empty network namespace (loopback only); a DNS stub answers allowed names; allowed "
        "connections are made by the supervisor and handed over (ADDFD|SETFD)" if contained else
        "no network namespace: connections are decided (decision-only mediation) but the "
        "hard boundary is missing — the sandbox shares the host's network")
    return rows


def _signing_key() -> tuple[bool, str]:
    from aarm_sandbox.journal import keys
    path = keys.key_dir() / keys.PRIVATE_NAME
    if not path.exists():
        return True, f"none yet: the first `run` (or `aarm-sandbox keygen`) creates {path}"
    try:
        key = keys.load_private(path)
    except keys.KeyFileError as e:
        return False, f"{e} (journals would be written unsigned)"
    return True, f"{path} ({keys.key_id(key.public_key())}); verifiers need `aarm-sandbox keys export`"


def doctor(as_json: bool = False) -> int:
    rows = collect()
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        try:
            from rich.console import Console
            from rich.table import Table
            t = Table(title="aarm-sandbox doctor")
            t.add_column("feature")
            t.add_column("status")
            t.add_column("detail")
            for r in rows:
                status = "[green]ok[/]" if r["ok"] else ("[red]MISSING[/]" if r["required"] else "[yellow]degraded[/]")
                t.add_row(r["feature"], status, r["detail"])
            Console().print(t)
        except ImportError:
            for r in rows:
                status = "ok" if r["ok"] else ("MISSING" if r["required"] else "degraded")
                print(f"{r['feature']:50} {status:9} {r['detail']}")
    missing = [r for r in rows if r["required"] and not r["ok"]]
    if missing:
        print("aarm-sandbox cannot enforce on this host: " + ", ".join(r["feature"] for r in missing),
              file=sys.stderr)
        return 1
    return 0
