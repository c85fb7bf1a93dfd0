"""Integration tests for the native launcher (aarm_sandbox._native).

These run real sandboxes: user/mount/pid/ipc/uts/net namespaces, a seccomp
filter with a user-notification listener, and a supervisor side played by
the test itself.  The filter used here is hand-written BPF that notifies
mkdir/mkdirat and allows everything else.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _import_native():
    try:
        from aarm_sandbox._native import ffi, lib  # noqa: F401

        return ffi, lib
    except ImportError:
        pass
    # Try an in-place development build (needs only gcc + cffi).
    builder = os.path.join(ROOT, "native", "build_native.py")
    if os.path.exists(builder):
        subprocess.run([sys.executable, builder], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            from aarm_sandbox._native import ffi, lib  # noqa: F401

            return ffi, lib
        except ImportError:
            pass
    pytest.skip("aarm_sandbox._native is not built: run `pip install -e .` "
                "or `python3 native/build_native.py`", allow_module_level=True)


ffi, lib = _import_native()

# ---------------------------------------------------------------------------
# constants and the test filter

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
ALL_NS = (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC
          | CLONE_NEWUTS | CLONE_NEWNET)

AUDIT_ARCH_X86_64 = 0xC000003E
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
NR_MKDIR = 83
NR_MKDIRAT = 258

BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_RET_K = 0x06


def _insn(code, jt, jf, k):
    return struct.pack("<HBBI", code, jt, jf, k)


def make_filter() -> bytes:
    return b"".join([
        _insn(BPF_LD_W_ABS, 0, 0, 4),                      # A = arch
        _insn(BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        _insn(BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        _insn(BPF_LD_W_ABS, 0, 0, 0),                      # A = nr
        _insn(BPF_JEQ_K, 2, 0, NR_MKDIR),
        _insn(BPF_JEQ_K, 1, 0, NR_MKDIRAT),
        _insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        _insn(BPF_RET_K, 0, 0, SECCOMP_RET_USER_NOTIF),
    ])


assert lib.AARM_CLONE_NEWUSER == CLONE_NEWUSER
assert lib.AARM_SECCOMP_RET_USER_NOTIF == SECCOMP_RET_USER_NOTIF

# ---------------------------------------------------------------------------
# helpers


class Sandbox:
    """One running sandbox; stdout/stderr of the command go to pipes."""

    def __init__(self, argv, *, flags=ALL_NS, cwd="/", mask_dirs=(),
                 mask_files=(), mount_proc=False, drop_caps=True, env=None,
                 seccomp_flags=0, redirect=True):
        keep = []

        def cstr_array(items):
            if items is None:
                return ffi.NULL
            cs = [ffi.new("char[]", os.fsencode(s)) for s in items]
            keep.extend(cs)
            arr = ffi.new("char *[]", cs + [ffi.NULL])
            keep.append(arr)
            return arr

        if env is None:
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C"}
        envp = [f"{k}={v}" for k, v in env.items()]
        prog = make_filter()
        bpf = ffi.new("char[]", prog)
        keep.append(bpf)
        cwd_c = ffi.new("char[]", os.fsencode(cwd))
        keep.append(cwd_c)

        cfg = ffi.new("struct aarm_spawn_config *")
        cfg.argv = cstr_array(argv)
        cfg.envp = cstr_array(envp)
        cfg.cwd = cwd_c
        cfg.bpf = bpf
        cfg.bpf_len = len(prog) // 8
        cfg.seccomp_flags = seccomp_flags
        cfg.clone_flags = flags
        cfg.outer_uid = os.geteuid()
        cfg.outer_gid = os.getegid()
        cfg.mask_dirs = cstr_array(list(mask_dirs)) if mask_dirs else ffi.NULL
        cfg.mask_files = cstr_array(list(mask_files)) if mask_files else ffi.NULL
        cfg.mount_proc = int(mount_proc)
        cfg.drop_caps = int(drop_caps)

        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        saved = [os.dup(0), os.dup(1), os.dup(2)]
        listener = ffi.new("int *", -1)
        status_fd = ffi.new("int *", -1)
        errbuf = ffi.new("char[]", 4096)
        # redirect=False leaves the process-wide stdio alone (thread-safe)
        try:
            if redirect:
                os.dup2(null, 0)
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
            self.pid = lib.aarm_spawn(cfg, listener, status_fd, errbuf, 4096)
        finally:
            for i, fd in enumerate(saved):
                if redirect:
                    os.dup2(fd, i)
                os.close(fd)
            os.close(null)
            os.close(out_w)
            os.close(err_w)
        self.message = ffi.string(errbuf).decode()
        self._out_r, self._err_r = out_r, err_r
        if self.pid < 0:
            os.close(out_r)
            os.close(err_r)
            raise OSError(self.message)
        self.listener = listener[0]
        self.status_fd = status_fd[0]
        self.status = None
        self.stdout = self.stderr = b""

    @property
    def warnings(self):
        return [w for w in self.message.splitlines() if w]

    def recv(self, timeout=10.0):
        r, _, _ = select.select([self.listener], [], [], timeout)
        assert r, "no seccomp notification within %ss" % timeout
        n = ffi.new("struct aarm_notif *")
        rc = lib.aarm_notif_recv(self.listener, n)
        assert rc == 0, os.strerror(-rc)
        return n

    def respond(self, n, val=0, error=0, flags=0):
        rc = lib.aarm_notif_send(self.listener, n.id, val, error, flags)
        assert rc == 0, os.strerror(-rc)

    def close_listener(self):
        if self.listener >= 0:
            os.close(self.listener)
            self.listener = -1

    def wait(self, timeout=20.0):
        r, _, _ = select.select([self.status_fd], [], [], timeout)
        assert r, "command did not finish within %ss" % timeout
        st = ffi.new("int *")
        rc = lib.aarm_read_status(self.status_fd, st)
        assert rc == 0, os.strerror(-rc)
        self.status = st[0]
        _, init_status = os.waitpid(self.pid, 0)
        assert os.WIFEXITED(init_status) and os.WEXITSTATUS(init_status) == 0
        self.stdout = _read_all(self._out_r)
        self.stderr = _read_all(self._err_r)
        os.close(self.status_fd)
        self.close_listener()
        return self.status

    def kill(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def _read_all(fd):
    chunks = []
    while True:
        b = os.read(fd, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(fd)
    return b"".join(chunks)


def run(argv, **kw):
    """Run a command in a sandbox that answers nothing (no mkdir expected)."""
    sb = Sandbox(argv, **kw)
    try:
        sb.wait()
    finally:
        sb.kill()
    return sb


@pytest.fixture
def tmp_world():
    d = tempfile.mkdtemp(prefix="aarm-native-test-")
    os.chmod(d, 0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------
# seccomp notification flow


def test_mkdir_denied_by_supervisor(tmp_world):
    target = os.path.join(tmp_world, "X")
    sb = Sandbox(["/bin/sh", "-c", f"mkdir {target}; echo $?"])
    try:
        n = sb.recv()
        assert n.data.nr in (NR_MKDIR, NR_MKDIRAT)
        assert n.data.arch == AUDIT_ARCH_X86_64
        assert n.pid > 0
        assert lib.aarm_notif_id_valid(sb.listener, n.id) == 0
        # the path argument can be read from the target's memory
        buf = ffi.new("char[]", 4096)
        addr = n.data.args[0] if n.data.nr == NR_MKDIR else n.data.args[1]
        ln = lib.aarm_read_cstr(n.pid, addr, buf, 4096)
        assert ln == len(target)
        assert ffi.string(buf) == target.encode()
        sb.respond(n, 0, -errno.EPERM, 0)
        assert lib.aarm_notif_id_valid(sb.listener, n.id) == -errno.ENOENT
        st = sb.wait()
    finally:
        sb.kill()
    assert os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0
    assert sb.stdout.strip() == b"1"
    assert b"Operation not permitted" in sb.stderr
    assert not os.path.exists(target)


@pytest.mark.parametrize("sflags", [0, 1 << 5], ids=["plain", "wait-killable-recv"])
def test_mkdir_continue(tmp_world, sflags):
    target = os.path.join(tmp_world, "Y")
    sb = Sandbox(["/bin/sh", "-c", f"mkdir {target}; echo $?"], seccomp_flags=sflags)
    assert not sb.warnings, sb.warnings
    try:
        n = sb.recv()
        assert n.data.nr in (NR_MKDIR, NR_MKDIRAT)
        sb.respond(n, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE)
        sb.wait()
    finally:
        sb.kill()
    assert sb.stdout.strip() == b"0"
    assert os.path.isdir(target)


def test_mkdir_emulated_success(tmp_world):
    """The supervisor can also fake success without the syscall running."""
    target = os.path.join(tmp_world, "Z")
    sb = Sandbox(["/bin/sh", "-c", f"mkdir {target}; echo $?"])
    try:
        sb.respond(sb.recv(), 0, 0, 0)
        sb.wait()
    finally:
        sb.kill()
    assert sb.stdout.strip() == b"0"
    assert not os.path.exists(target)


def test_fail_closed_when_supervisor_goes_away(tmp_world):
    target = os.path.join(tmp_world, "X")
    sb = Sandbox(["/bin/sh", "-c", f"mkdir {target}; echo $?; mkdir {target}2; echo $?"])
    try:
        sb.recv()                    # pending notification, never answered
        sb.close_listener()          # supervisor dies
        sb.wait()
    finally:
        sb.kill()
    assert sb.stdout.split() == [b"1", b"1"]
    assert b"Function not implemented" in sb.stderr
    assert not os.path.exists(target)
    assert not os.path.exists(target + "2")


# ---------------------------------------------------------------------------
# confinement properties

STATUS_SCRIPT = (
    "echo pid=$$; "
    "grep -E '^(NoNewPrivs|CapEff|CapPrm|CapBnd|CapAmb|CapInh|Seccomp):' /proc/self/status; "
    # not via $(...): the shell would hold the substitution pipe open
    "echo fds-begin; ls /proc/$$/fd"
)


def _parse_status(out: bytes):
    vals = {}
    in_fds = False
    for line in out.decode().splitlines():
        if in_fds:
            vals["fds"].append(int(line))
        elif line == "fds-begin":
            in_fds = True
            vals["fds"] = []
        elif line.startswith("pid="):
            vals["pid"] = line[4:]
        elif ":" in line:
            k, v = line.split(":", 1)
            vals[k] = v.strip()
    return vals


@pytest.mark.parametrize("flags", [ALL_NS, CLONE_NEWNS | CLONE_NEWPID],
                         ids=["userns", "no-userns"])
def test_identity_caps_and_fds(flags):
    if not flags & CLONE_NEWUSER and os.geteuid() != 0:
        pytest.skip("needs root without a user namespace")
    sb = run(["/bin/sh", "-c", STATUS_SCRIPT], flags=flags, mount_proc=True)
    assert not sb.warnings, sb.warnings
    assert sb.status == 0, sb.stderr
    v = _parse_status(sb.stdout)
    assert v["pid"] == "2"                   # init is 1, the command is 2
    assert v["NoNewPrivs"] == "1"
    assert v["Seccomp"] == "2"
    for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh"):
        assert int(v[k], 16) == 0, (k, v[k])
    assert v["fds"] == [0, 1, 2]             # no listener, no socket leaked


def test_without_drop_caps_root_in_userns_keeps_caps():
    sb = run(["/bin/sh", "-c", STATUS_SCRIPT], mount_proc=True, drop_caps=False)
    v = _parse_status(sb.stdout)
    assert int(v["CapEff"], 16) != 0
    assert v["NoNewPrivs"] == "1"


def test_exit_status_propagation():
    assert os.WEXITSTATUS(run(["/bin/sh", "-c", "exit 7"]).status) == 7
    st = run(["/bin/sh", "-c", "kill -9 $$"]).status
    assert os.WIFSIGNALED(st) and os.WTERMSIG(st) == signal.SIGKILL


def test_exec_failure_reports_127_and_126(tmp_world):
    sb = run(["no-such-command-aarm"])
    assert os.WEXITSTATUS(sb.status) == 127
    assert b"aarm-sandbox: cannot run no-such-command-aarm" in sb.stderr
    noexec = os.path.join(tmp_world, "noexec")
    with open(noexec, "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod(noexec, 0o644)
    sb = run([noexec])
    assert os.WEXITSTATUS(sb.status) == 126


def test_path_search_uses_target_env(tmp_world):
    script = os.path.join(tmp_world, "hello-aarm")
    with open(script, "w") as f:
        f.write("#!/bin/sh\necho hi from $0\n")
    os.chmod(script, 0o755)
    sb = run(["hello-aarm"], env={"PATH": f"/nonexistent:{tmp_world}:/bin"})
    assert sb.status == 0, sb.stderr
    assert sb.stdout.strip() == f"hi from {script}".encode()


def test_cwd_and_env():
    sb = run(["/bin/sh", "-c", "pwd; echo $FOO"], cwd="/usr",
             env={"PATH": "/bin:/usr/bin", "FOO": "bar"})
    assert sb.stdout.split() == [b"/usr", b"bar"]


def test_signal_forwarding():
    sb = Sandbox(["/bin/sh", "-c", "trap 'echo got-term; exit 3' TERM; "
                  "echo ready; while :; do sleep 0.05; done"])
    try:
        # wait for the trap to be installed
        buf = b""
        while b"ready" not in buf:
            r, _, _ = select.select([sb._out_r], [], [], 10)
            assert r
            buf += os.read(sb._out_r, 100)
        os.kill(sb.pid, signal.SIGTERM)
        st = sb.wait()
    finally:
        sb.kill()
    assert os.WEXITSTATUS(st) == 3
    assert b"got-term" in buf + sb.stdout


def test_spawn_errors():
    with pytest.raises(OSError, match="chdir /nonexistent-aarm"):
        Sandbox(["/bin/true"], cwd="/nonexistent-aarm")
    with pytest.raises(OSError, match="masking needs a mount namespace"):
        Sandbox(["/bin/true"], flags=0, mask_files=["/etc/hostname"])
    with pytest.raises(OSError, match="argv"):
        Sandbox([])


def test_init_killed_gives_epipe():
    sb = Sandbox(["/bin/sh", "-c", "sleep 30"])
    os.kill(sb.pid, signal.SIGKILL)
    os.waitpid(sb.pid, 0)
    st = ffi.new("int *")
    assert lib.aarm_read_status(sb.status_fd, st) == -errno.EPIPE
    os.close(sb.status_fd)
    sb.close_listener()
    os.close(sb._out_r)
    os.close(sb._err_r)


# ---------------------------------------------------------------------------
# masking


def test_mask_file_and_dir(tmp_world):
    secret = os.path.join(tmp_world, "secret.txt")
    with open(secret, "w") as f:
        f.write("secret\n")
    sdir = os.path.join(tmp_world, "secrets")
    os.mkdir(sdir)
    with open(os.path.join(sdir, "key"), "w") as f:
        f.write("secret\n")
    script = (f"cat {secret}; echo rc=$?; ls -A {sdir}; echo ls=$?; "
              f"cat {sdir}/key; echo rc2=$?; "
              f"echo x > {secret}; echo w=$?; "
              f"(: > {sdir}/new) 2>/dev/null; echo w2=$?")
    sb = run(["/bin/sh", "-c", script], mask_files=[secret, "/nonexistent-aarm/f"],
             mask_dirs=[sdir, "/nonexistent-aarm-dir"])
    assert sb.status == 0, sb.stderr
    out = sb.stdout.decode()
    assert "secret" not in out.replace(sdir, "").replace(secret, "")
    lines = out.split()
    assert "rc=0" in lines and "ls=0" in lines
    assert "rc2=1" in lines
    assert "w=0" in lines                       # writes go to /dev/null
    assert "w2=0" not in lines                  # masked dir is read-only
    # outside the sandbox nothing changed
    with open(secret) as f:
        assert f.read() == "secret\n"


# ---------------------------------------------------------------------------
# memory helpers and feature probes


def test_read_cstr_edge_cases():
    pid = os.getpid()
    buf = ffi.new("char[]", 256)
    s = ctypes.create_string_buffer(b"hello world")
    assert lib.aarm_read_cstr(pid, ctypes.addressof(s), buf, 256) == 11
    assert ffi.string(buf) == b"hello world"
    long = ctypes.create_string_buffer(b"A" * 100)
    assert lib.aarm_read_cstr(pid, ctypes.addressof(long), buf, 50) == -errno.ENAMETOOLONG
    assert lib.aarm_read_cstr(pid, ctypes.addressof(long), buf, 101) == 100
    assert lib.aarm_read_cstr(pid, 0, buf, 256) == -errno.EFAULT
    empty = ctypes.create_string_buffer(b"")
    assert lib.aarm_read_cstr(pid, ctypes.addressof(empty), buf, 256) == 0

    # a string ending right before an unreadable page
    page = mmap.PAGESIZE
    m = mmap.mmap(-1, 2 * page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    m[page - 4:page] = b"abc\0"
    assert libc.mprotect(base + page, page, 0) == 0
    assert lib.aarm_read_cstr(pid, base + page - 4, buf, 256) == 3
    assert ffi.string(buf) == b"abc"
    m[page - 3:page] = b"xyz"                   # no NUL before the hole
    assert lib.aarm_read_cstr(pid, base + page - 3, buf, 256) == -errno.EFAULT
    # lengths around the short first read (256 bytes), and a string running into the
    # hole after more than one read
    big = ffi.new("char[]", 4096)
    for n in (254, 255, 256, 257, 600, page - 300):
        m[page - 300 - n:page - 300] = b"p" * n
        m[page - 300] = 0
        assert lib.aarm_read_cstr(pid, base + page - 300 - n, big, 4096) == n, n
        assert ffi.string(big) == b"p" * n
    m[page - 1000:page] = b"q" * 1000
    assert lib.aarm_read_cstr(pid, base + page - 1000, big, 4096) == -errno.EFAULT
    assert libc.mprotect(base + page, page, mmap.PROT_READ | mmap.PROT_WRITE) == 0
    del base
    m.close()


def test_read_mem():
    s = ctypes.create_string_buffer(b"0123456789")
    buf = ffi.new("char[]", 10)
    assert lib.aarm_read_mem(os.getpid(), ctypes.addressof(s), buf, 10) == 10
    assert ffi.buffer(buf)[:] == b"0123456789"
    assert lib.aarm_read_mem(os.getpid(), 0, buf, 10) == -errno.EFAULT


def test_seccomp_features():
    assert [lib.aarm_seccomp_feature(i) for i in (1, 2, 3)] == [1, 1, 1]
    assert lib.aarm_seccomp_feature(0) == -errno.EINVAL


def test_syscall_wrappers(tmp_world):
    AT_FDCWD = -100
    p = os.path.join(tmp_world, "f").encode()
    fd = lib.aarm_openat2(AT_FDCWD, p, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC,
                          0o600, 0)
    assert fd >= 0
    os.close(fd)
    dfd = os.open(tmp_world, os.O_DIRECTORY | os.O_RDONLY)
    try:
        assert lib.aarm_openat2(dfd, b"../etc/passwd", os.O_RDONLY, 0,
                                lib.AARM_RESOLVE_BENEATH) == -errno.EXDEV
    finally:
        os.close(dfd)
    q = os.path.join(tmp_world, "g").encode()
    assert lib.aarm_linkat(AT_FDCWD, p, AT_FDCWD, q, 0) == 0
    assert lib.aarm_renameat2(AT_FDCWD, p, AT_FDCWD, q,
                              lib.AARM_RENAME_NOREPLACE) == -errno.EEXIST
    times = ffi.new("int64_t[4]", [1000, 0, 2000, lib.AARM_UTIME_OMIT])
    assert lib.aarm_utimensat(AT_FDCWD, q, times, 0) == 0
    assert os.stat(q).st_atime == 1000
    pidfd = lib.aarm_pidfd_open(os.getpid(), 0)
    assert pidfd >= 0
    fd2 = lib.aarm_pidfd_getfd(pidfd, 0, 0)
    assert fd2 >= 0
    os.close(fd2)
    assert lib.aarm_pidfd_send_signal(pidfd, 0) == 0
    os.close(pidfd)
    assert lib.aarm_set_dumpable(1) == 0


# ---------------------------------------------------------------------------
# unprivileged run

UNPRIV_SCRIPT = textwrap.dedent(r"""
    import errno, os, sys
    sys.path.insert(0, os.environ["AARM_TEST_DIR"])
    import test_native_launcher as t
    target = os.path.join(os.environ["AARM_WORLD"], "X")
    sb = t.Sandbox(["/bin/sh", "-c", "mkdir %s; echo $?; id -u; echo $$" % target],
                   mount_proc=True)
    n = sb.recv()
    assert n.data.nr in (t.NR_MKDIR, t.NR_MKDIRAT), n.data.nr
    sb.respond(n, 0, -errno.EPERM, 0)
    st = sb.wait()
    print("status", st, "warnings", sb.warnings)
    assert os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0, st
    out = sb.stdout.split()
    assert out == [b"1", str(os.getuid()).encode(), b"2"], (out, sb.stderr)
    assert not os.path.exists(target)
    sb2 = t.Sandbox(["/bin/sh", "-c", t.STATUS_SCRIPT], mount_proc=True)
    sb2.wait()
    v = t._parse_status(sb2.stdout)
    assert v["NoNewPrivs"] == "1" and int(v["CapEff"], 16) == 0, v
    assert v["fds"] == [0, 1, 2], v
    print("UNPRIV-OK")
""")


def test_unprivileged_user(tmp_world):
    """Same flow as root, but from uid 65534 (needs unprivileged userns)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged uid")
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("setpriv not available")
    import _cffi_backend
    from aarm_sandbox import _native

    # The interpreter running the tests may live under /root (0700): stage a
    # world-readable copy of what the child needs and use a system python.
    pythons = [sys.executable, "/usr/bin/python3"]
    stage = os.path.join(tmp_world, "stage")
    os.makedirs(os.path.join(stage, "aarm_sandbox"))
    open(os.path.join(stage, "aarm_sandbox", "__init__.py"), "w").close()
    shutil.copy(_native.__file__, os.path.join(stage, "aarm_sandbox"))
    shutil.copy(_cffi_backend.__file__, stage)
    shutil.copy(os.path.abspath(__file__), os.path.join(stage, "test_native_launcher.py"))
    # a stub pytest module is enough for importing this file
    with open(os.path.join(stage, "pytest.py"), "w") as f:
        f.write("def skip(*a, **k):\n    raise SystemExit('skip')\n"
                "def fixture(f=None, **k):\n    return f if f else (lambda g: g)\n"
                "class mark:\n    @staticmethod\n    def parametrize(*a, **k):\n"
                "        return lambda f: f\n"
                "def raises(*a, **k):\n    raise NotImplementedError\n")
    for dirpath, dirnames, filenames in os.walk(stage):
        os.chmod(dirpath, 0o755)
        for fn in filenames:
            os.chmod(os.path.join(dirpath, fn), 0o755)
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    last = None
    for py in pythons:
        if not os.path.exists(py):
            continue
        check = subprocess.run(
            [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", py,
             "-c", f"import sys; assert '%d.%d' % sys.version_info[:2] == '{ver}'"],
            capture_output=True, cwd="/")
        if check.returncode != 0:
            last = check
            continue
        env = {"PATH": "/usr/bin:/bin", "AARM_TEST_DIR": stage,
               "AARM_WORLD": tmp_world, "PYTHONPATH": stage,
               "PYTHONDONTWRITEBYTECODE": "1"}
        res = subprocess.run(
            [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", py,
             "-c", UNPRIV_SCRIPT],
            capture_output=True, cwd="/", env=env, timeout=120)
        print(res.stdout.decode())
        assert res.returncode == 0 and b"UNPRIV-OK" in res.stdout, (
            res.stdout.decode() + res.stderr.decode())
        return
    pytest.skip(f"no python {ver} usable as uid 65534: {last and last.stderr!r}")


def test_concurrent_spawns_from_threads():
    """aarm_spawn is called from a multi-threaded process (no GIL held)."""
    import threading

    results = []

    def worker(i):
        sb = Sandbox(["/bin/sh", "-c", f"exit {i}"], mount_proc=True,
                     redirect=False)
        sb.wait()
        results.append((i, os.WEXITSTATUS(sb.status)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [(i, i) for i in range(8)]
