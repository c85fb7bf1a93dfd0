"""Decisions that depend on what the session already did: a sensitive read closes egress,
and a delete a MODIFY rule turns into an undoable quarantine."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import sandbox_cmd

from hostserver import HostServer

PY = sys.executable


@pytest.fixture
def server():
    s = HostServer()
    yield s
    s.close()


def _connect(port: int) -> str:
    return ("import socket\ntry:\n"
            f"    s = socket.create_connection(('127.0.0.1', {port}), timeout=5)\n"
            "    s.sendall(b'x')\n    print(s.recv(20).decode())\n"
            "except OSError as e:\n    print('denied', e.errno)\n")


@pytest.mark.parametrize("how", ["same process", "another process", "staged through a file"])
def test_a_connect_allowed_before_a_sensitive_read_is_denied_after_it(box, server, how):
    secret = box.canary("secret.txt", "TOP-SECRET\n")
    connect = _connect(server.port)
    read = f"print(len(open({str(secret)!r}).read()))\n"
    if how == "same process":
        argv = [PY, "-c", connect + read + connect]
        env = {}
    else:
        if how == "staged through a file":     # one process stages, a third one sends
            read = f"open('staged.txt', 'w').write(open({str(secret)!r}).read())\n"
            connect_after = "print(len(open('staged.txt').read()))\n" + connect
        else:
            connect_after = connect
        argv = ["sh", "-c", f'{PY} -c "$A"; {PY} -c "$B"; {PY} -c "$C"']
        env = {"A": connect, "B": read, "C": connect_after}
    r = box.run(argv, extra=["--allow-net", f"127.0.0.1:{server.port}", "--sensitive", str(secret)],
                env=env)
    assert r.stdout.count("pong:x") == 1, r.stdout + r.stderr          # before: allowed
    assert "denied 111" in r.stdout, r.stdout + r.stderr                # after: refused
    assert server.accepted == 1
    deny = [x for x in r.denied("net.connect") if x["decision"]["rule"] == "sensitive-then-egress"]
    assert deny and "sensitive" in deny[0]["decision"]["reason"]
    assert any(x["action"]["target"] == str(secret) and x.get("data_classes") == ["sensitive"]
               for x in r.receipts("file.read"))


def test_a_file_staged_by_a_tainted_session_taints_a_later_session(box, server, tmp_path):
    secret = box.canary("secret.txt", "TOP-SECRET\n")
    store = tmp_path / "context"
    first = box.run([PY, "-c", f"open('report.csv', 'w').write(open({str(secret)!r}).read())"],
                    extra=["--sensitive", str(secret), "--context-store", str(store)])
    assert first.returncode == 0, first.stderr
    connect = _connect(server.port)
    code = connect + "print(len(open('report.csv').read()))\n" + connect
    later = box.run([PY, "-c", code], extra=["--allow-net", f"127.0.0.1:{server.port}",
                                             "--context-store", str(store)])
    assert later.stdout.count("pong:x") == 1 and "denied 111" in later.stdout, later.stdout + later.stderr
    deny = later.denied("net.connect")
    assert deny and deny[0]["decision"]["rule"] == "sensitive-then-egress"
    assert any(x["action"]["target"].endswith("report.csv") and x.get("data_classes") == ["sensitive"]
               for x in later.receipts("file.read"))
    # without the store, the later session knows nothing of it (the test can fail)
    server.accepted = 0
    blind = box.run([PY, "-c", code], extra=["--allow-net", f"127.0.0.1:{server.port}"])
    assert blind.stdout.count("pong:x") == 2


def test_a_read_write_open_of_a_sensitive_file_taints_the_session(box, server, tmp_path):
    """An O_RDWR open reads as well: with `--sensitive '{workspace}/...'` the native fast
    path was handed the glob unexpanded, decided the open itself and nothing tainted (the
    secret reached the server); the same open of a file an earlier tainted session wrote
    did the same. Both are decided in Python now and taint the session, DNS included."""
    secret = box.canary("secret.txt", "TOP-SECRET\n", where="workspace")
    rdwr = "import os\nfd = os.open({!r}, os.O_RDWR)\nprint(len(os.read(fd, 100)))\n"
    connect = _connect(server.port)
    net = ["--allow-net", f"127.0.0.1:{server.port}"]
    r = box.run([PY, "-c", rdwr.format(str(secret)) + connect],
                extra=net + ["--sensitive", "{workspace}/secret.txt"])
    assert "denied 111" in r.stdout and server.accepted == 0, r.stdout + r.stderr
    assert r.denied("net.connect")[0]["decision"]["rule"] == "sensitive-then-egress"
    store = tmp_path / "context"
    first = box.run(["sh", "-c", f"cat {secret} > report.csv"],
                    extra=["--sensitive", str(secret), "--context-store", str(store)])
    assert first.returncode == 0, first.stderr
    later = box.run([PY, "-c", rdwr.format("report.csv") + connect],
                    extra=net + ["--context-store", str(store)])
    assert "denied 111" in later.stdout and server.accepted == 0, later.stdout + later.stderr
    native = box.native([PY, "-c", rdwr.format(str(secret)) + connect])
    assert "pong:x" in native.stdout                                   # the attack, natively


def test_a_datagram_batch_after_a_sensitive_read_is_egress_too(box, tmp_path):
    """sendmmsg on a UDP socket brokered before the read went out (sendto was refused):
    a batch on a brokered socket is egress, decided like a send."""
    udp = HostServer(kind=__import__("socket").SOCK_DGRAM)
    try:
        secret = box.canary("secret.txt", "TOP-SECRET\n")
        code = f"""
import ctypes, os, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dst = ('127.0.0.1', {udp.port})
s.sendto(b'before', dst)
secret = open({str(secret)!r}).read().strip().encode()
class iovec(ctypes.Structure): _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]
class msghdr(ctypes.Structure): _fields_ = [('name', ctypes.c_void_p), ('namelen', ctypes.c_uint32), ('iov', ctypes.POINTER(iovec)), ('iovlen', ctypes.c_size_t), ('ctl', ctypes.c_void_p), ('ctllen', ctypes.c_size_t), ('flags', ctypes.c_int)]
class mmsghdr(ctypes.Structure): _fields_ = [('hdr', msghdr), ('len', ctypes.c_uint32)]
sa = ctypes.create_string_buffer(struct.pack('<HH4s8x', socket.AF_INET, socket.htons({udp.port}), socket.inet_aton('127.0.0.1')), 16)
data = ctypes.create_string_buffer(b'batch:' + secret)
iov = iovec(ctypes.cast(data, ctypes.c_void_p), len(data.value))
m = mmsghdr(msghdr(ctypes.cast(sa, ctypes.c_void_p), 16, ctypes.pointer(iov), 1, None, 0, 0), 0)
print('sendmmsg', libc.sendmmsg(s.fileno(), ctypes.byref(m), 1, 0))
"""
        native = box.native([PY, "-c", code])
        assert "sendmmsg 1" in native.stdout, native.stdout + native.stderr
        import time
        time.sleep(0.3)
        udp.data.clear()
        r = box.run([PY, "-c", code], extra=["--allow-net", f"udp://127.0.0.1:{udp.port}",
                                              "--sensitive", str(secret)])
        time.sleep(0.3)
        assert "sendmmsg -1" in r.stdout, r.stdout + r.stderr
        assert udp.data == [b"before"], udp.data
    finally:
        udp.close()


def test_a_directory_moved_away_still_holds_sensitive_data(box, server, tmp_path):
    """Taint followed a renamed file but not a renamed directory: `mv secrets s2; cat
    s2/key` read what `--sensitive 'WS/secrets/*'` names, untainted; and a tainted file
    moved with its directory lost its taint in the context store."""
    (box.workspace / "secrets").mkdir()
    key = box.canary("secrets/key", "DIR-SECRET\n", where="workspace")
    net = ["--allow-net", f"127.0.0.1:{server.port}"]
    code = ("import os\nos.rename('secrets', 's2')\nprint(len(open('s2/key').read()))\n"
            + _connect(server.port))
    r = box.run([PY, "-c", code], extra=net + ["--sensitive", str(key.parent) + "/*"])
    assert "denied 111" in r.stdout and server.accepted == 0, r.stdout + r.stderr
    os.rename(box.workspace / "s2", box.workspace / "secrets")
    native = box.native([PY, "-c", code])
    assert "pong:x" in native.stdout, native.stdout + native.stderr      # the attack, natively
    os.rename(box.workspace / "s2", box.workspace / "secrets")
    server.accepted = 0
    store = tmp_path / "context"
    (box.workspace / "sub").mkdir()
    first = box.run(["sh", "-c", f"cat {key} > sub/report.csv; mv sub sub3"],
                    extra=["--sensitive", str(key), "--context-store", str(store)])
    assert first.returncode == 0, first.stderr
    later = box.run([PY, "-c", "print(len(open('sub3/report.csv').read()))\n" + _connect(server.port)],
                    extra=net + ["--context-store", str(store)])
    assert "denied 111" in later.stdout and server.accepted == 0, later.stdout + later.stderr


@pytest.mark.parametrize("glob, setup, move, read", [
    # a glob whose fixed part ends mid-name
    ("{workspace}/sec*/key", "secrets", "os.rename('secrets', 's2')", "s2/key"),
    # two renames: the second moves what the first put below it
    ("{workspace}/secrets/*", "secrets", "os.mkdir('x'); os.rename('secrets', 'x/s'); os.rename('x', 'y')",
     "y/s/key"),
    # an exchange leaves the data where the other name was
    ("{workspace}/secrets/*", "secrets",
     "open('a', 'w').close(); import ctypes; ctypes.CDLL(None).renameat2(-100, b'a', -100, b'secrets/key', 2)",
     "a"),
    # a hard link
    ("{workspace}/secrets/*", "secrets", "os.link('secrets/key', 'k')", "k"),
])
def test_sensitive_data_renamed_or_linked_away_still_closes_egress(box, server, glob, setup, move, read):
    """Labels follow renames and links through aliases (the glob decides on the name the
    data had): before, each of these read the secret untainted and sent it."""
    (box.workspace / setup).mkdir()
    (box.workspace / setup / "key").write_text("SECRET\n")
    code = f"import os\n{move}\nprint(len(open({read!r}).read()))\n" + _connect(server.port)
    r = box.run([PY, "-c", code], extra=["--allow-net", f"127.0.0.1:{server.port}", "--sensitive", glob])
    assert "denied 111" in r.stdout and server.accepted == 0, r.stdout + r.stderr
    native_dir = box.root / "native"
    (native_dir / setup).mkdir(parents=True)
    (native_dir / setup / "key").write_text("SECRET\n")
    native = box.native([PY, "-c", code], cwd=native_dir)
    assert "pong:x" in native.stdout, native.stdout + native.stderr      # the attack, natively


def test_renaming_a_directory_no_glob_can_match_into_leaves_egress_open(box, server):
    """The other way: `**/*.pem` made every directory rename in the workspace count as
    sensitive, and egress closed with no .pem read anywhere."""
    (box.workspace / "build.tmp").mkdir()
    (box.workspace / "build.tmp" / "out.txt").write_text("artifact\n")
    code = "import os\nos.rename('build.tmp', 'build')\nprint(len(open('build/out.txt').read()))\n" + \
        _connect(server.port)
    r = box.run([PY, "-c", code], extra=["--allow-net", f"127.0.0.1:{server.port}",
                                          "--sensitive", "{workspace}/**/*.pem"])
    assert "pong:x" in r.stdout, r.stdout + r.stderr


def test_names_stop_resolving_after_a_sensitive_read(box, server):
    secret = box.canary("secret.txt", "TOP-SECRET\n")
    code = f"""
import dns.resolver
r = dns.resolver.Resolver()
print("before", r.resolve("localhost", "A")[0].address)
open({str(secret)!r}).read()
try:
    r.resolve("localhost", "A")
    print("after resolved")
except dns.resolver.NXDOMAIN:
    print("after nxdomain")
"""
    r = box.run([PY, "-c", code], extra=["--allow-net", "localhost:80", "--sensitive", str(secret)])
    assert "before 127.0.0.1" in r.stdout and "after nxdomain" in r.stdout, r.stdout + r.stderr


UNDOABLE = """id: undoable
extends: default
rules:
  - id: quarantine-deletes
    actions: [file.delete]
    paths: [workspace]
    decision: modify
    modify: quarantine
    reason: deletes in the workspace are undoable
"""


def _tree(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            out[str(p.relative_to(root))] = (st.st_mode, st.st_mtime_ns,
                                              None if p.is_dir() else p.read_bytes())
    return out


def test_rm_rf_under_a_quarantine_rule_is_undone_by_restore(box, tmp_path):
    profile = tmp_path / "undoable.yaml"
    profile.write_text(UNDOABLE)
    tree = box.workspace / "project"
    (tree / "src/deep").mkdir(parents=True)
    (tree / "src/deep/data.bin").write_bytes(bytes(range(256)) * 10)
    (tree / "README").write_text("hello\n")
    os.chmod(tree / "README", 0o640)
    os.symlink("README", tree / "link")
    os.utime(tree / "src/deep", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    before = _tree(tree)
    r = box.run(["rm", "-rf", "project"], profile=str(profile))
    assert r.returncode == 0, r.stderr
    assert not tree.exists()
    mods = [x for x in r.receipts("file.delete") if x["decision"]["result"] == "modify"]
    assert len(mods) == len(before) + 1
    assert all(m["action"]["modified"].get("trash") for m in mods if not m["action"]["directory"])
    session = r.records[0]["session_id"]
    p = subprocess.run(sandbox_cmd() + ["restore", session], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert _tree(tree) == before
    again = subprocess.run(sandbox_cmd() + ["restore", session], capture_output=True, text=True)
    assert _tree(tree) == before and again.returncode in (0, 1)


SEMANTIC = """id: semantic
extends: default
rules:
  - id: no-force-push
    actions: [vcs.push.force]
    decision: deny
    reason: force-pushing rewrites shared history
  - id: no-ddl
    actions: [db.ddl]
    decision: deny
    reason: schema changes need a migration review
"""


@pytest.mark.parametrize("argv", [
    ["sh", "-c", "git push --force origin main; echo ran"],
    ["env", "GIT_TRACE=0", "sh", "-c", "git push -f origin main; echo ran"],
    ["sh", "-c", "echo main | xargs git push --force origin; echo ran"],
    [PY, "-c", "import os; os.system('git push --force origin main'); print('ran')"],
    ["sh", "-c", "sqlite3 app.db 'DROP TABLE users'; echo ran"],
    # spellings the tools accept (a prefix of --force-with-lease, config, a quote psql
    # and sqlite3 do not escape)
    ["sh", "-c", "git push --force-w origin main; echo ran"],
    ["sh", "-c", "git -c remote.origin.mirror=true push origin; echo ran"],
    # the same configuration through git's environment: set by a launcher, or by the
    # program itself before it runs the command (read from the exec's envp)
    ["env", "GIT_CONFIG_COUNT=1", "GIT_CONFIG_KEY_0=remote.origin.mirror", "GIT_CONFIG_VALUE_0=true",
     "sh", "-c", "git push origin; echo ran"],
    [PY, "-c", "import os; os.environ.update(GIT_CONFIG_COUNT='1', "
               "GIT_CONFIG_KEY_0='remote.origin.mirror', GIT_CONFIG_VALUE_0='true'); "
               "os.system('git push origin; echo ran')"],
    # booleans as git reads them, aliases
    ["env", "GIT_CONFIG_COUNT=1", "GIT_CONFIG_KEY_0=remote.origin.mirror", "GIT_CONFIG_VALUE_0=2",
     "sh", "-c", "git push origin; echo ran"],
    ["sh", "-c", "git -c 'alias.p=push --force' p origin main; echo ran"],
    ["sh", "-c", "sqlite3 app.db \"SELECT 'a\\'; DROP TABLE users; -- '\"; echo ran"],
])
def test_the_dangerous_inner_command_is_classified_through_launchers(box, tmp_path, argv):
    profile = tmp_path / "semantic.yaml"
    profile.write_text(SEMANTIC)
    native = box.native(argv)
    assert "ran" in native.stdout                     # natively the command runs
    r = box.run(argv, profile=str(profile))
    assert "ran" not in r.stdout, r.stdout + r.stderr
    denied = r.denied("process.exec")
    assert denied, r.stderr
    sem = denied[0]["action"]["semantic"]
    assert any(s["type"] in ("vcs.push.force", "db.ddl") for s in sem)
    assert denied[0]["decision"]["rule"] in ("no-force-push", "no-ddl")


def test_semantic_classification_stays_off_for_profiles_without_such_rules(box):
    r = box.run(["sh", "-c", "true"])
    assert r.returncode == 0
    assert "semantic" not in r.receipts("process.exec")[0]["action"]


WINDOWED = """id: windowed
extends: default
rules:
  - id: burst-delete
    actions: [file.delete]
    paths: [workspace]
    count_over: 3
    within_seconds: 1
    decision: deny
    reason: more than 3 deletions within a second
"""


# The same brake as default's only count rule for deletes (same id): the native fast path
# keeps it with a budget whose units come back as counts leave the window.
WINDOWED_ONLY = WINDOWED.replace("id: burst-delete", "id: mass-delete")


@pytest.mark.parametrize("text", [WINDOWED, WINDOWED_ONLY], ids=["python", "fast-path-budget"])
def test_a_count_in_a_time_window_trips_on_bursts_and_recovers(box, tmp_path, text):
    profile = tmp_path / "w.yaml"
    profile.write_text(text)
    for i in range(6):
        (box.workspace / f"f{i}").write_text("x")
    code = """
import os, time
for i in range(5):
    try:
        os.unlink(f"f{i}"); print("deleted", i)
    except OSError as e:
        print("refused", i, e.errno)
time.sleep(1.3)
os.unlink("f5"); print("deleted 5")
"""
    r = box.run([PY, "-c", code], profile=str(profile))
    assert [l for l in r.stdout.splitlines() if l.startswith("deleted")] == \
        ["deleted 0", "deleted 1", "deleted 2", "deleted 5"], r.stdout + r.stderr
    assert "refused 3 13" in r.stdout and "refused 4 13" in r.stdout
    rule = "burst-delete" if text is WINDOWED else "mass-delete"
    assert [x["decision"]["rule"] for x in r.denied("file.delete")] == [rule] * 2
    if text is WINDOWED_ONLY:
        # three units spent in C; the first delete after the window goes to Python, which
        # takes the expired counts' units back (on the decision thread, where the engine
        # reads the window) and allows it
        assert [x.get("fast_path") for x in r.receipts("file.delete", "allow")] == [True] * 3 + [None]


FIRST_TIME = """id: first-time
extends: default
rules:
  - id: new-program
    actions: [process.exec]
    paths: ["/usr/bin/**"]
    first_time: true
    decision: deny
    reason: a program this workspace never ran before
"""


def test_first_time_programs_are_told_apart_from_ones_the_workspace_ran_before(box, tmp_path):
    profile = tmp_path / "f.yaml"
    profile.write_text(FIRST_TIME)
    store = tmp_path / "ctx"
    warm = box.run(["/usr/bin/od", "-An", "-c", "/dev/null"], extra=["--context-store", str(store)])
    assert warm.returncode == 0, warm.stderr                     # default profile: recorded
    seen = box.run(["/usr/bin/od", "-An", "-c", "/dev/null"], profile=str(profile),
                   extra=["--context-store", str(store)])
    assert seen.returncode == 0, seen.stderr
    new = box.run(["/usr/bin/cksum", "/dev/null"], profile=str(profile),
                  extra=["--context-store", str(store)])
    assert new.returncode != 0
    assert new.denied("process.exec")[0]["decision"]["rule"] == "new-program"


NEEDS_TICKET = """id: needs-ticket
extends: default
rules:
  - id: deploy-needs-ticket
    actions: [file.write, file.create]
    paths: ["{workspace}/deploy/**"]
    requires_context: [ticket]
    decision: allow
    reason: deploy manifests change production
"""


def test_a_rule_that_needs_missing_context_defers_and_the_context_releases_it(box, tmp_path):
    profile = tmp_path / "t.yaml"
    profile.write_text(NEEDS_TICKET)
    (box.workspace / "deploy").mkdir()
    write = ["sh", "-c", "echo v2 > deploy/app.yaml && echo written"]
    # (held until its deadline: nobody adds the context; see test_approvals for `context add`)
    held = box.run(write, profile=str(profile), extra=["--approval-timeout", "1"])
    assert "written" not in held.stdout
    [rec] = held.receipts("file.create")
    d = rec["decision"]
    assert d["rule"] == "deploy-needs-ticket" and d["result"] == "defer"
    assert d["approval"]["answer"] == "timeout" and rec["outcome"]["executed"] is False
    assert "waiting for context ticket" in d["reason"]
    ok = box.run(write, profile=str(profile), extra=["--context", "ticket=OPS-12"])
    assert "written" in ok.stdout, ok.stderr
    assert ok.records[0]["context"] == {"ticket": "OPS-12"}
    bad = box.run(["true"], extra=["--context", "no-equals"])
    assert bad.returncode == 125 and "KEY=VALUE" in bad.stderr


def _modify_profile(tmp_path, transform: str) -> str:
    p = tmp_path / f"{transform}.yaml"
    p.write_text(f"""id: {transform}
extends: default
rules:
  - id: protect-config
    actions: [file.write]
    paths: ["{{workspace}}/settings.conf"]
    decision: modify
    modify: {transform}
    reason: settings.conf is shared
""")
    return str(p)


def test_a_write_to_a_protected_file_goes_to_a_private_copy(box, tmp_path):
    target = box.workspace / "settings.conf"
    target.write_text("original\n")
    code = "f = open('settings.conf', 'a'); f.write('agent change\\n'); f.close(); print('wrote')"
    native_copy = tmp_path / "n.conf"
    native_copy.write_text("original\n")
    r = box.run([PY, "-c", code], profile=_modify_profile(tmp_path, "private_copy"))
    assert "wrote" in r.stdout, r.stderr
    assert target.read_text() == "original\n"                  # untouched
    m = [x for x in r.receipts("file.write") if x["decision"]["result"] == "modify"][0]
    copy = Path(m["action"]["modified"]["copy"])
    assert copy.read_text() == "original\nagent change\n"
    assert not str(copy).startswith(str(box.workspace))


def test_a_write_open_turned_read_only_cannot_change_the_file(box, tmp_path):
    target = box.workspace / "settings.conf"
    target.write_text("original\n")
    code = ("import os\nfd = os.open('settings.conf', os.O_WRONLY | os.O_TRUNC)\n"
            "try:\n    os.write(fd, b'x')\nexcept OSError as e:\n    print('write refused', e.errno)\n")
    r = box.run([PY, "-c", code], profile=_modify_profile(tmp_path, "read_only"))
    assert "write refused 9" in r.stdout, r.stdout + r.stderr      # EBADF: a read-only fd
    assert target.read_text() == "original\n"                       # not even truncated


SCRUB = """id: scrub
extends: default
rules:
  - id: clean-env
    actions: [process.exec]
    paths: ["/usr/bin/env"]
    decision: modify
    modify: scrub_env
    reason: tools get no secrets or loader hooks
"""


def test_exec_env_scrubbing_removes_secrets_and_loader_hooks(box, tmp_path):
    profile = tmp_path / "s.yaml"
    profile.write_text(SCRUB)
    env = {"GITHUB_TOKEN": "ghp_secret", "LD_PRELOAD": "/tmp/evil.so", "KEEP_ME": "yes",
           "AWS_SECRET_ACCESS_KEY": "abc"}
    argv = [PY, "-c", "import os; os.execv('/usr/bin/env', ['env'])"]
    native = box.native(argv, env={**env, "LD_PRELOAD": ""})
    assert "GITHUB_TOKEN=ghp_secret" in native.stdout            # natively it is passed on
    r = box.run(argv, profile=str(profile), env=env)
    assert r.returncode == 0, r.stderr
    assert "KEEP_ME=yes" in r.stdout
    for name in ("GITHUB_TOKEN", "LD_PRELOAD", "AWS_SECRET_ACCESS_KEY"):
        assert name not in r.stdout
    m = [x for x in r.receipts("process.exec") if x["decision"]["result"] == "modify"][0]
    removed = set(m["action"]["modified"]["removed"])
    assert {"AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "LD_PRELOAD"} <= removed
    assert "KEEP_ME" not in removed


# a kept variable that a thread flips into a removed one (GITHUB_TOKEX <-> GITHUB_TOKEN)
# after the supervisor scrubbed the array, until the kernel copies it
ENV_RACE = r"""
import ctypes, os, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
leaked = 0
for i in range(int(sys.argv[1])):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(w, 1)
        s = ctypes.create_string_buffer(b"GITHUB_TOKEX=leak")
        argv = (ctypes.c_void_p * 2)(ctypes.cast(ctypes.c_char_p(b"env"), ctypes.c_void_p).value, None)
        envp = (ctypes.c_void_p * 2)(ctypes.addressof(s), None)
        def flip():
            while True:
                s[11] = b"N"; s[11] = b"X"
        threading.Thread(target=flip, daemon=True).start()
        libc.execve(b"/usr/bin/env", argv, envp)
        os._exit(99)
    os.close(w)
    out = b""
    while chunk := os.read(r, 4096):
        out += chunk
    os.close(r)
    os.waitpid(pid, 0)
    leaked += b"GITHUB_TOKEN=leak" in out
print(f"leaked {leaked}")
"""


def test_a_scrubbed_variable_written_back_by_another_thread_never_reaches_the_program(box, tmp_path):
    """The scrub rewrites the envp array in the target's memory; a thread flipping a kept
    string into a removed name before the kernel copied it passed the name on (6 of 30
    execs). The new program's environment is checked in its exec stop, before it runs:
    with the name back, it is killed there."""
    profile = tmp_path / "s.yaml"
    profile.write_text(SCRUB)
    native = box.native([PY, "-c", ENV_RACE, "30"])
    assert "leaked 0" not in native.stdout, native.stdout          # the flip works natively
    r = box.run([PY, "-c", ENV_RACE, "30"], profile=str(profile))
    assert "leaked 0" in r.stdout, r.stdout + r.stderr[-2000:]
    modified = [x for x in r.receipts("process.exec") if x["decision"]["result"] == "modify"]
    assert len(modified) == 30, r.stderr[-2000:]
    killed = [e for e in r.records if e.get("type") == "enforcement" and "scrub_env" in e.get("reason", "")]
    leaked_past_scrub = [x for x in modified if "GITHUB_TOKEN" not in x["action"]["modified"]["removed"]]
    assert len(killed) <= len(leaked_past_scrub)     # only a flipped string is ever killed


def test_the_scrub_check_follows_an_exec_made_by_a_thread_that_is_not_the_leader(box, tmp_path):
    """A non-leader's exec takes over the leader's id: the check waited for the old id,
    found none, and let the program run unchecked (3-7 of 30 leaked). It now waits for
    its own tracee, whatever its id."""
    profile = tmp_path / "s.yaml"
    profile.write_text(SCRUB)
    race = ENV_RACE.replace("        libc.execve(b\"/usr/bin/env\", argv, envp)\n",
                            "        t = threading.Thread(target=libc.execve, args=(b\"/usr/bin/env\", argv, envp))\n"
                            "        t.start(); t.join()\n")
    assert race != ENV_RACE
    native = box.native([PY, "-c", race, "30"])
    assert "leaked 0" not in native.stdout, native.stdout
    r = box.run([PY, "-c", race, "30"], profile=str(profile))
    assert "leaked 0" in r.stdout, r.stdout + r.stderr[-2000:]


SCRUB_ALL = SCRUB.replace('paths: ["/usr/bin/env"]', 'paths: ["/**"]')       # every exec


def test_an_exec_that_fails_under_the_scrub_check_leaves_the_thread_as_it_was(box, tmp_path):
    """An exec the kernel refuses after it was continued (a script without '#!': ENOEXEC)
    kept its thread traced for 30 s: the shell fallback's exec that follows was refused
    (already traced), and SIGTRAP went undelivered. The tracing ends when the call
    returns."""
    profile = tmp_path / "s.yaml"
    profile.write_text(SCRUB_ALL)
    script = box.workspace / "noshebang"
    script.write_text("echo hello from sh\n")
    script.chmod(0o755)
    code = ("import os, signal, subprocess\n"
            "got = []\n"
            "signal.signal(signal.SIGTRAP, lambda *a: got.append(1))\n"
            "try:\n    os.execv('./noshebang', ['noshebang'])\nexcept OSError as e:\n    print('exec', e.strerror)\n"
            "os.kill(os.getpid(), signal.SIGTRAP)\n"
            "print('SIGTRAP handled', bool(got))\n"
            "print(subprocess.run(['env', './noshebang'], capture_output=True, text=True).stdout.strip())\n")
    native = box.native([PY, "-c", code])
    r = box.run([PY, "-c", code], profile=str(profile))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout == native.stdout, (native.stdout, r.stdout, r.stderr[-2000:])
    assert "hello from sh" in r.stdout and "SIGTRAP handled True" in r.stdout


APPEND = """id: append
extends: default
rules:
  - id: dry-run-first
    actions: [process.exec]
    paths: ["/usr/bin/env"]
    decision: modify
    modify: append_args
    append_args: ["--dry-run", "two words"]
    reason: this tool runs only as a dry run
"""

# env runs its arguments as a command: here a python that prints what it was given (the
# system one: an unprivileged user can run it)
ARGS_PRINTER = ["/usr/bin/python3", "-c", "import os, sys; os.execv('/usr/bin/env', "
                "['env', sys.executable, '-c', 'import sys; print(sys.argv[1:])'])"]


TOUCH_C = """id: touch-c
extends: default
rules:
  - id: touch-no-create
    actions: [process.exec]
    paths: ["/usr/bin/touch"]
    decision: modify
    modify: append_args
    append_args: ["-c"]
    reason: touch never creates files
"""

# argv already ends with "-c", and a thread flips that string to "-a" after the decision
TOUCH_RACE = r"""
import ctypes, os, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
made = 0
for i in range(int(sys.argv[1])):
    name = f"new{i}".encode()
    pid = os.fork()
    if pid == 0:
        s = ctypes.create_string_buffer(b"-c")
        argv = (ctypes.c_void_p * 4)(ctypes.cast(ctypes.c_char_p(b"touch"), ctypes.c_void_p).value,
                                     ctypes.cast(ctypes.c_char_p(name), ctypes.c_void_p).value,
                                     ctypes.addressof(s), None)
        def flip():
            while True:
                s[1] = b"a"; s[1] = b"c"
        threading.Thread(target=flip, daemon=True).start()
        libc.execve(b"/usr/bin/touch", argv, None)
        os._exit(99)
    os.waitpid(pid, 0)
    made += os.path.exists(name)
print(f"created {made}")
"""


def test_an_argv_ending_with_the_appended_arguments_is_still_checked_before_it_runs(box):
    """Such an exec used to be continued and checked only after the exec: a thread flipping
    the string meanwhile let `touch` create files in 7 of 30 runs. It is restarted like
    any other, and the restart's tracer checks the program in its exec stop."""
    profile = box.root / "touch.yaml"
    profile.write_text(TOUCH_C)
    native_dir = box.root / "native-touch"
    native_dir.mkdir()
    native = box.native([PY, "-c", TOUCH_RACE, "30"], cwd=native_dir)
    assert "created 0" not in native.stdout, native.stdout          # the flip works natively
    r = box.run([PY, "-c", TOUCH_RACE, "30"], profile=str(profile))
    assert "created 0" in r.stdout, r.stdout + r.stderr[-2000:]


APPEND_REFUSED_RESTART = """id: append-tool
extends: default
rules:
  - id: no-restart-of-a
    actions: [process.exec]
    paths: ["{workspace}/tool"]
    argv: "tool a -c"
    decision: deny
    reason: the restart of the first call is refused
  - id: dash-c
    actions: [process.exec]
    paths: ["{workspace}/tool"]
    decision: modify
    modify: append_args
    append_args: ["-c"]
    reason: always with -c
"""


def test_after_a_refused_restart_the_next_exec_is_not_taken_for_the_restart(box):
    """A restarted exec that never reached its modify decision (refused here; a decode
    error does the same) left its thread marked as restarting: the thread's next exec
    within 2 s, already ending with the arguments, was continued as "the restart itself",
    with no tracer to check it in its exec stop. The mark goes when the restart ends."""
    profile = box.root / "ap.yaml"
    profile.write_text(APPEND_REFUSED_RESTART)
    tool = box.workspace / "tool"
    tool.write_text("echo hi\n")                 # no '#!': every exec of it fails (ENOEXEC)
    tool.chmod(0o755)
    code = ("import os\n"
            "for argv in (['tool', 'a'], ['tool', 'b', '-c']):\n"
            "    try:\n        os.execv('./tool', argv)\n"
            "    except OSError as e:\n        print(argv, e.strerror)\n")
    r = box.run([PY, "-c", code], profile=str(profile))
    execs = [(x["action"].get("argv"), x["decision"]["result"],
              (x["action"].get("modified") or {}).get("restarted"))
             for x in r.receipts("process.exec") if x["action"]["target"] == str(tool)]
    assert execs[:2] == [(["tool", "a"], "modify", True), (["tool", "a", "-c"], "deny", None)], execs
    assert (["tool", "b", "-c"], "modify", True) in execs, execs        # restarted, traced


def test_exec_arguments_are_appended_by_restarting_the_exec(any_user_box):
    """modify: append_args: the exec of /usr/bin/env is made again with --dry-run and
    "two words" at the end of its argv (restarted through ptrace with a new array), so
    env passes them on to the program it runs; natively nothing is added. As root and
    unprivileged (the supervisor may ptrace what runs in the user namespace it made)."""
    box = any_user_box
    profile = box.root / "a.yaml"
    profile.write_text(APPEND)
    os.chmod(profile, 0o644)
    native = box.native(ARGS_PRINTER)
    assert native.stdout.strip() == "[]", native.stdout + native.stderr
    r = box.run(ARGS_PRINTER, profile=str(profile))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['--dry-run', 'two words']", r.stdout + r.stderr
    execs = [x for x in r.receipts("process.exec") if x["action"]["target"] == "/usr/bin/env"]
    assert [x["decision"]["result"] for x in execs] == ["modify", "modify"], execs
    first, second = execs
    assert first["action"]["modified"]["restarted"] is True
    assert first["action"]["argv"][-1] != "two words"
    assert second["action"]["argv"][-2:] == ["--dry-run", "two words"]
    assert "restarted" not in second["action"]["modified"]
    key = ([] if box.uid is None else      # signed with the unprivileged user's own key
           ["--key", str(box.root / "home/.config/aarm-sandbox/keys/journal-ed25519.pub")])
    v = subprocess.run(sandbox_cmd() + ["journal", "verify", *key, str(r.journal_path)],
                       capture_output=True, text=True, timeout=60)
    assert v.returncode == 0, v.stdout + v.stderr


ARGV_RACER = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static pid_t main_tid;
static char **argv_orig;
enum { ARGC = 4 };
/* Knowing how the supervisor lays out the restarted exec's argv (enforce/exec_argv.py:
 * 8 KiB below the stack pointer, the added strings, then the array), wait for the main
 * thread's first execve to be held, compute where the new array will be and keep cutting
 * it back to the original arguments from before it is written until the exec is over. */
static void *racer(void *unused)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/self/task/%d/syscall", (int)main_tid);
    for (;;) {
        int fd = open(path, O_RDONLY);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0)
            continue;
        buf[n] = 0;
        long nr;
        unsigned long a[6], sp, pc;
        if (sscanf(buf, "%ld %lx %lx %lx %lx %lx %lx %lx %lx", &nr, &a[0], &a[1], &a[2], &a[3],
                   &a[4], &a[5], &sp, &pc) == 9 && nr == 59 && a[1] == (unsigned long)argv_orig) {
            unsigned long strings = sizeof("--dry-run") + sizeof("two words");
            unsigned long size = strings + 16 + 8 * (ARGC + 2 + 1);
            unsigned long base = (sp - 8192 - size) & ~15UL;
            volatile unsigned long *arr = (volatile unsigned long *)((base + strings + 15) & ~15UL);
            for (;;)
                arr[ARGC] = 0;
        }
    }
    return unused;
}
int main(int argc, char **argv)
{
    char *args[] = { "env", argv[1], "-c", "import sys; print(sys.argv[1:])", NULL };
    main_tid = gettid();
    argv_orig = args;
    pthread_t t;
    pthread_create(&t, NULL, racer, NULL);
    usleep(2000);
    execv("/usr/bin/env", args);
    perror("execv");
    return 3;
}
"""


def test_a_thread_cutting_the_appended_arguments_never_gets_the_program_run_without_them(
        box, tmp_path, compile_c):
    """A second thread finds the restarted exec's new argv (in /proc/self/task/N/syscall)
    and keeps cutting it back while the kernel copies it. Whatever it wins, the program
    never runs without the arguments: the restarted exec is denied when the supervisor
    reads a cut array, and a program loaded with one is killed in its exec stop, before
    its first instruction (the supervisor traces the exec). Natively it runs without them.
    (A check only after the exec lost this race once in CI: the program printed "[]".)"""
    prog = compile_c("argv_racer", ARGV_RACER)
    profile = tmp_path / "a.yaml"
    profile.write_text(APPEND)
    native = box.native([prog, PY])
    assert native.stdout.strip() == "[]", native.stdout + native.stderr
    outcomes = set()
    for _ in range(5):
        r = box.run([prog, PY], profile=str(profile))
        assert "[]" not in r.stdout, r.stdout + r.stderr
        if r.stdout.strip() == "['--dry-run', 'two words']":
            outcomes.add("ran with them")
        elif r.returncode == 128 + 9:
            assert any(x.get("type") == "enforcement" and "killed" in x.get("reason", "")
                       for x in r.records), r.records
            outcomes.add("killed")
        else:
            assert r.returncode == 3 and "execv" in r.stderr, (r.returncode, r.stdout, r.stderr)
            outcomes.add("exec denied")
    print('argv race outcomes:', sorted(outcomes))
    assert outcomes, outcomes


def test_append_args_needs_its_arguments_and_an_exec_rule(tmp_path):
    for body, complaint in (("    modify: append_args\n", "append_args"),
                            ("    modify: scrub_env\n    append_args: [x]\n", "append_args"),
                            ("    modify: append_args\n    append_args: [x]\n    actions: [file.delete]\n",
                             "process.exec")):
        p = tmp_path / "bad.yaml"
        p.write_text("id: bad\nextends: default\nrules:\n  - id: r\n    decision: modify\n"
                     + (body if "actions" in body else body + "    actions: [process.exec]\n"))
        r = subprocess.run(sandbox_cmd() + ["profiles", "check", str(p)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 125 and complaint in r.stderr + r.stdout, (body, r.stderr)


def test_a_forbidden_action_stays_denied_whatever_the_context(box, tmp_path, server):
    """credential-store is a hard deny: no declared context, allowed destination, taint or
    earlier history turns it into anything else."""
    probe = Path(os.path.expanduser("~")) / ".git-credentials"
    if probe.exists():
        pytest.skip("~/.git-credentials exists here: the test would need to touch it")
    code = f"open({str(probe)!r}, 'w').write('https://u:p@example.com')"
    for extra in ([], ["--context", "ticket=OPS-1", "--context", "override=yes"],
                  ["--allow-net", f"127.0.0.1:{server.port}"]):
        r = box.run([PY, "-c", code], extra=extra)
        assert r.returncode != 0 and not probe.exists()
        d = r.denied()
        assert d and d[0]["decision"]["rule"] == "credential-store", r.stderr
    native = box.native([PY, "-c", code])            # natively the write goes through
    assert native.returncode == 0 and probe.exists()
    probe.unlink()


MATCHERS = """id: matchers
extends: default
data_classes:
  pii: ["{workspace}/data/customers*"]
rules:
  - id: keep-pii
    actions: [file.delete]
    touches: [pii]
    decision: deny
    reason: customer data is not deleted by agents
  - id: no-python-in-gen
    actions: [file.create, file.write]
    paths: ["{workspace}/gen/**"]
    programs: ["*/python3*"]
    decision: deny
    reason: gen/ is written by the build, not by scripts
  - id: no-force-push
    actions: [process.exec]
    argv: "git push *--force*"
    decision: deny
    reason: force pushes rewrite shared history
"""


def test_rules_match_on_data_classes_the_acting_program_and_argv(box, tmp_path):
    profile = tmp_path / "m.yaml"
    profile.write_text(MATCHERS)
    (box.workspace / "data").mkdir()
    (box.workspace / "gen").mkdir()
    for name in ("customers.csv", "other.csv"):
        (box.workspace / "data" / name).write_text("x\n")
    script = ("rm data/customers.csv; rm data/other.csv; echo sh > gen/a.txt; "
              f"{PY} -c \"open('gen/b.txt', 'w').write('py')\"; git push --force origin main; "
              "git push origin main; true")
    r = box.run(["sh", "-c", script], profile=str(profile))
    assert (box.workspace / "data/customers.csv").exists()
    assert not (box.workspace / "data/other.csv").exists()
    assert (box.workspace / "gen/a.txt").exists() and not (box.workspace / "gen/b.txt").exists()
    rules = [x["decision"]["rule"] for x in r.records if x["type"] == "receipt"
             and x["decision"]["result"] == "deny"]
    assert rules.count("keep-pii") == 1 and rules.count("no-python-in-gen") == 1
    # (a denied exec is retried by the shell on every PATH entry that has git)
    forced = [x for x in r.denied("process.exec") if x["decision"]["rule"] == "no-force-push"]
    assert forced and all("--force" in x["action"]["argv"] for x in forced)
    assert not [x for x in r.denied("process.exec") if "--force" not in x["action"]["argv"]]
    pii = [x for x in r.receipts("file.delete") if x["action"]["target"].endswith("customers.csv")][0]
    assert pii["data_classes"] == ["pii"]


DEST_SETS = """id: dest-sets
extends: default
destination_sets:
  partners: ["127.0.0.1:{port}"]
data_classes:
  pii: ["{{workspace}}/customers.csv"]
rules:
  - id: pii-only-to-partners
    actions: [net.connect]
    session_has: [pii]
    outside_destinations: [partners]
    leaves_sandbox: true
    decision: deny
    errno: ECONNREFUSED
    reason: customer data may only go to partners
"""


def test_after_reading_a_class_egress_outside_a_named_set_is_denied(box, tmp_path):
    partner, other = HostServer(), HostServer()
    try:
        profile = tmp_path / "d.yaml"
        profile.write_text(DEST_SETS.format(port=partner.port))
        (box.workspace / "customers.csv").write_text("alice\n")
        code = ("import os\nopen('customers.csv', 'a').close()\n"      # a write: touches pii
                + _connect(partner.port) + _connect(other.port))
        r = box.run([PY, "-c", code], profile=str(profile),
                    extra=["--allow-net", f"127.0.0.1:{partner.port}",
                           "--allow-net", f"127.0.0.1:{other.port}"])
        assert r.stdout.count("pong:x") == 1 and "denied 111" in r.stdout, r.stdout + r.stderr
        assert partner.accepted == 1 and other.accepted == 0
        assert r.denied("net.connect")[0]["decision"]["rule"] == "pii-only-to-partners"
    finally:
        partner.close()
        other.close()


DIR_RULE = """id: dir-rule
extends: default
rules:
  - id: keep-secret
    actions: [file.*]
    paths: ["{workspace}/secret/**"]
    decision: deny
    reason: the secret tree stays where it is
"""


def test_a_deny_rule_on_a_tree_also_holds_the_directory_itself(box, tmp_path):
    """`D/**` covers D: renaming the directory would otherwise carry the whole protected
    tree somewhere no rule names (it did, before the rule's prefix pre-test became D)."""
    profile = tmp_path / "d.yaml"
    profile.write_text(DIR_RULE)
    (box.workspace / "secret").mkdir()
    (box.workspace / "secret" / "k").write_text("key")
    r = box.run(["sh", "-c", "mv secret moved; rmdir secret; true"], profile=str(profile))
    assert (box.workspace / "secret" / "k").read_text() == "key"
    assert not (box.workspace / "moved").exists()
    assert {x["decision"]["rule"] for x in r.denied()} == {"keep-secret"}, r.denied()
    native = box.native(["sh", "-c", "mv secret moved"])
    assert native.returncode == 0 and (box.workspace / "moved" / "k").exists()


MASS_DELETE = r"""
import os
for i in range(300):                 # the session's own files: deleting them never counts
    open(f"own{i}", "w").close()
    os.unlink(f"own{i}")
out = []
for i in range(105):
    try:
        os.unlink(f"p{i}")
        out.append("deleted")
    except OSError as e:
        out.append(str(e.errno))
    if i % 10 == 0 and i < 100:      # (past the limit every delete is held, own or not)
        open(f"t{i}", "w").close()
        os.unlink(f"t{i}")
print(" ".join(out))
"""


RENAME_THEN_DELETE = """
import os
os.mkdir('junk')
for i in range(105):
    os.rename(f'p{i}', f'junk/p{i}')
    try:
        os.unlink(f'junk/p{i}')
        print('deleted')
    except OSError as e:
        print(e.errno)
"""


def test_files_renamed_before_they_are_deleted_still_count_as_mass_deletion(box):
    """A rename marked its destination as the session's own file, and deleting those never
    counts: moving each file aside first deleted every file with no step-up.
    What a rename moves keeps its origin."""
    for i in range(105):
        (box.workspace / f"p{i}").write_text("x")
    r = box.run([PY, "-c", RENAME_THEN_DELETE])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["deleted"] * 100 + [str(errno.EACCES)] * 5, r.stdout + r.stderr
    assert [x["decision"]["rule"] for x in r.denied("file.delete")] == ["mass-delete"] * 5


@pytest.mark.parametrize("fast_path", ["on", "off"])
def test_mass_deletion_steps_up_after_exactly_100_with_or_without_the_fast_path(box, fast_path):
    """The native fast path keeps `mass-delete` with a budget of units (count_budget): it
    must stop at the very delete Python stops at, however many of the session's own files
    (which never count) it removed in between, and still take most deletes itself."""
    for i in range(105):
        (box.workspace / f"p{i}").write_text("x")
    r = box.run([PY, "-c", MASS_DELETE], env={"AARM_FAST_PATH": "1" if fast_path == "on" else "0"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["deleted"] * 100 + [str(errno.EACCES)] * 5, r.stdout + r.stderr
    assert sorted(p.name for p in box.workspace.iterdir()) == sorted(f"p{i}" for i in range(100, 105))
    assert [x["decision"]["rule"] for x in r.denied("file.delete")] == ["mass-delete"] * 5
    native = [x for x in r.receipts("file.delete", "allow") if x.get("fast_path")]
    if fast_path == "on":
        assert len(native) > 300, len(native)       # not every delete went to Python
    else:
        assert not native
