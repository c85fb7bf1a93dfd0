"""TOCTOU and path-resolution escapes (threat catalog A: TOC-01; B: PATH-01..04).

Every test runs a real attack program (tests/attacks/c/toctou_paths.c) twice:

* natively (`box.native`): the attack must damage its canary, which proves the attack is
  real and that the test would notice a bypass;
* under the real supervisor (`box.run`): the canary outside the workspace must be intact
  (sha256 / existence), the journal must hold a deny receipt naming the object the
  kernel would really have touched, and no receipt may have allowed an operation on it.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

C_SOURCE = Path(__file__).with_name("c") / "toctou_paths.c"
STRESS = os.environ.get("AARM_STRESS") == "1"
RACE_ITERS = 2000
STRESS_ITERS = 100_000
# Natively the races loop until the victim is hit, bounded by time: a starved flipper (the
# machine may be busy) can leave the buffer in one state for a while, so a fixed count is
# not a reliable demonstration.
NATIVE_RACE_SECONDS = 3.0
NATIVE_RACE_ITERS = 10**8

# Race iteration counts: 2000 normally; 10^5 in the stress variant (AARM_STRESS=1).
RACE_PARAMS = [
    pytest.param(RACE_ITERS, id="2000"),
    pytest.param(STRESS_ITERS, id="stress-100000", marks=[
        pytest.mark.stress,
        pytest.mark.skipif(not STRESS, reason="set AARM_STRESS=1 for the 10^5-iteration races")]),
]


def _race_budget(iters: int) -> tuple[float, float]:
    """(seconds the program may loop, subprocess timeout) for a sandboxed race."""
    return (30.0, 90.0) if iters <= RACE_ITERS else (900.0, 1200.0)


# --------------------------------------------------------------------------------------
# helpers
@pytest.fixture(scope="session")
def prog(compile_c) -> str:
    return compile_c("toctou_paths", C_SOURCE.read_text())


@pytest.fixture(scope="session")
def _unpriv_runner_ok() -> str | None:
    """None if the sandbox command runs as the unprivileged user, else why not."""
    import subprocess
    import sys
    if os.environ.get("AARM_SANDBOX_BIN"):
        return None
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            sys.executable, "-c", "import pydantic, aarm_sandbox._native"],
                           capture_output=True, text=True, cwd="/")
    if probe.returncode == 0:
        return None
    return ("the unprivileged user cannot import the sandbox from this interpreter: run "
            "scripts/setup and set AARM_SANDBOX_BIN=/opt/aarm-sandbox-venv/bin/aarm-sandbox")


@pytest.fixture
def user_box(any_user_box, _unpriv_runner_ok):
    """any_user_box (root and uid 65534), skipping the unprivileged half when only the
    source tree is available (setpriv'd python cannot import root's site-packages)."""
    if any_user_box.uid is not None and _unpriv_runner_ok:
        pytest.skip(_unpriv_runner_ok)
    return any_user_box


def sha256(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


class Canary:
    """A file whose existence and content must survive the sandboxed attack."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.content = self.path.read_bytes()
        self.digest = sha256(self.path)

    def intact(self) -> bool:
        return self.path.is_file() and not self.path.is_symlink() and sha256(self.path) == self.digest

    def state(self) -> str:
        if not self.path.exists():
            return "missing"
        return f"content={self.path.read_bytes()[:60]!r}"


def own(box, p: Path) -> Path:
    """Give a file made by the test to the box's user (unprivileged variants)."""
    if box.uid is not None:
        os.lchown(p, box.uid, box.uid)
    return p


def mkfile(box, p: Path, content: str = "workspace file\n") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(content)
    return own(box, p)


def mkdir(box, p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return own(box, p)


def mksymlink(box, p: Path, target: Path | str) -> Path:
    if p.is_symlink() or p.exists():
        p.unlink()
    os.symlink(str(target), p)
    return own(box, p)


def cleanup(*paths: Path) -> None:
    """Remove what a native run left behind (so the sandboxed run starts clean)."""
    for p in paths:
        if p.is_symlink() or p.is_file():
            p.unlink()


def victim(box, name: str = "victim") -> Canary:
    return Canary(box.canary(name, f"canary {name}: must survive the attack\n"))


def outside_snapshot(box) -> dict[str, str]:
    out = {}
    for root, dirs, files in os.walk(box.outside):
        for f in files + dirs:
            p = Path(root, f)
            rel = str(p.relative_to(box.outside))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = sha256(p) if p.is_file() else "special"
    return out


def steps(stdout: str) -> dict[str, tuple[int, str]]:
    """step=<name> rc=<n> errno=<E> lines -> {name: (rc, errno)} (last one wins)."""
    out = {}
    for m in re.finditer(r"^step=(\S+) rc=(-?\d+) errno=(\S+)$", stdout, re.M):
        out[m.group(1)] = (int(m.group(2)), m.group(3))
    return out


def race_summary(stdout: str) -> dict[str, int]:
    m = re.search(r"^race (.*)$", stdout, re.M)
    assert m, f"no race summary in output:\n{stdout}"
    return {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}


def touches(rec: dict, path: Path | str) -> bool:
    a = rec["action"]
    p = str(path)
    return p in (a.get("target"), a.get("destination"), a.get("source"))


def explain(res) -> str:
    rec = [f"{r['decision']['result']} {r['action']['type']} {r['action']['target']}"
           f" dst={r['action'].get('destination')} src={r['action'].get('source')}"
           for r in res.receipts()][-15:]
    errs = [r for r in res.records if r.get("type") == "error"][-5:]
    return (f"rc={res.returncode}\nstdout:\n{res.stdout[-1500:]}\nstderr:\n{res.stderr[-1500:]}\n"
            f"receipts (last 15):\n" + "\n".join(rec) + f"\nerrors: {errs}")


def assert_no_internal_errors(res) -> None:
    bad = [r for r in res.records if r.get("type") == "error" and "supervisor error" in r.get("reason", "")]
    assert not bad, f"supervisor internal errors: {bad[:3]}"


def assert_blocked(res, canary: Canary, target: Path | str, action_type: str | None = None) -> None:
    """The canary is intact, a deny receipt names `target`, nothing touching it was allowed."""
    assert canary.intact(), f"canary {canary.path} damaged: {canary.state()}\n{explain(res)}"
    denies = [r for r in res.denied(action_type) if touches(r, target)]
    assert denies, f"no deny receipt naming {target} ({action_type})\n{explain(res)}"
    allowed = [r for r in res.receipts(result="allow") if touches(r, target)]
    assert not allowed, f"allowed operations on {target}: {allowed[:3]}"
    assert_no_internal_errors(res)


def write_profile(box, name: str, text: str) -> str:
    p = box.root / f"{name}.yaml"
    p.write_text(text)
    os.chmod(p, 0o644)
    return str(p)


def race_profile(box) -> str:
    """The default profile without its mass-deletion brake: the races delete workspace/ok
    thousands of times, and after 100 deletions `mass-delete` would deny the *allowed* half
    of the race too, which would no longer test TOCTOU at all."""
    return write_profile(box, "race", """\
id: toctou-race
extends: default
description: default, mass-delete threshold raised for the race tests
rules:
  - id: mass-delete
    actions: [file.delete]
    paths: [workspace]
    count_over: 100000000
    decision: step_up
""")


def _deny_socket_profile(box) -> str:
    # The default profile allows every connect; this one denies sockets outside.
    return write_profile(box, "deny-socket", f"""\
id: deny-outside-socket
extends: default
rules:
  - id: no-outside-socket
    actions: [net.connect]
    paths: ["{box.outside}/**"]
    decision: deny
    reason: the outside socket is off limits
""")


# ======================================================================================
# 1. TOC-01: a second thread (or a MAP_SHARED process) swaps unlinkat's path buffer
@pytest.mark.parametrize("iters", RACE_PARAMS)
@pytest.mark.parametrize("flipper", ["thread", "fork"])
def test_thread_swapping_unlink_path_cannot_delete_outside_file(user_box, prog, flipper, iters):
    box = user_box
    ok = box.workspace / "ok"
    v = victim(box)

    nat = box.native([prog, "race-unlink", str(ok), str(v.path), str(NATIVE_RACE_ITERS),
                      str(NATIVE_RACE_SECONDS), flipper])
    s = race_summary(nat.stdout)
    assert s["victim_hit"] == 1 and not v.path.exists(), f"native race did not delete the victim: {nat.stdout}"

    v = victim(box)
    seconds, timeout = _race_budget(iters)
    res = box.run([prog, "race-unlink", str(ok), str(v.path), str(iters), str(seconds), flipper],
                  profile=race_profile(box), timeout=timeout)
    assert res.returncode == 0, explain(res)
    s = race_summary(res.stdout)
    assert s["iterations"] == iters and s["victim_hit"] == 0, explain(res)
    assert s["done"] > 0, f"the allowed half of the race never ran: {s}"
    assert s["denied"] > 0, f"the supervisor never saw the swapped path: {s}"
    assert_blocked(res, v, v.path, "file.delete")


# 2a. TOC-01: the same for open(O_WRONLY|O_TRUNC)
@pytest.mark.parametrize("iters", RACE_PARAMS)
@pytest.mark.parametrize("flipper", ["thread", "fork"])
def test_thread_swapping_open_path_cannot_truncate_outside_file(box, prog, flipper, iters):
    ok = mkfile(box, box.workspace / "ok")
    v = victim(box)

    nat = box.native([prog, "race-open", str(ok), str(v.path), str(NATIVE_RACE_ITERS),
                      str(NATIVE_RACE_SECONDS), flipper])
    assert race_summary(nat.stdout)["victim_hit"] == 1 and not v.intact(), nat.stdout

    v = victim(box)
    seconds, timeout = _race_budget(iters)
    res = box.run([prog, "race-open", str(ok), str(v.path), str(iters), str(seconds), flipper],
                  timeout=timeout)
    assert res.returncode == 0, explain(res)
    s = race_summary(res.stdout)
    assert s["iterations"] == iters and s["victim_hit"] == 0, explain(res)
    assert s["done"] > 0 and s["denied"] > 0, s
    assert ok.read_text().startswith("PWNED"), "the allowed open never wrote the workspace file"
    assert_blocked(res, v, v.path, "file.write")


# 2c. TOC-01 / EXEC-01: execve's path flips between an allowed program and a denied copy
def _exec_race_setup(box, prog) -> tuple[Path, Path, Path]:
    """Two copies of the attack program (same name length), one the profile denies, and
    the directory where the denied copy leaves a mark each time it runs."""
    ok, denied = box.workspace / "okprog_", box.workspace / "deniedp"
    for p in (ok, denied):
        shutil.copy(prog, p)
        os.chmod(p, 0o755)
        if box.uid is not None:
            os.chown(p, box.uid, box.uid)
    marks = box.workspace / "marks"
    marks.mkdir()
    if box.uid is not None:
        os.chown(marks, box.uid, box.uid)
    return ok, denied, marks


_DENY_COPY_RULE = """\
  - id: no-denied-copy
    actions: [process.exec]
    paths: ["{workspace}/deniedp"]
    decision: deny
    reason: this copy may not run
"""


def _exec_stop_kills(res, s: dict, why: str) -> None:
    """One enforcement record per child killed in its exec stop, each saying why."""
    killed = [r for r in res.records if r.get("type") == "enforcement" and
              "killed in its exec stop" in r.get("reason", "")]
    assert len(killed) == s["killed"], f"{s} {killed[:2]}\n{explain(res)}"
    assert all(why in r["reason"] for r in killed), killed[:2]
    assert_no_internal_errors(res)


def _exec_race(box, prog, profile_rules: str, iters: int, flipper: str):
    """Natively the denied copy must run at least once; under the profile it never does.
    Returns the sandboxed run and its race summary."""
    ok, denied, marks = _exec_race_setup(box, prog)
    race = [prog, "race-exec", str(ok), str(denied), str(iters), "20", flipper, str(marks)]
    nat = box.native(race)
    assert any(marks.iterdir()), f"natively the denied copy never ran: {nat.stdout}"
    for m in marks.iterdir():
        m.unlink()
    profile = write_profile(box, "exec-race", "id: exec-race\nextends: default\nrules:\n" +
                            profile_rules)
    res = box.run([str(ok)] + race[1:5] + ["60"] + race[6:], profile=profile, timeout=120)
    assert res.returncode == 0, explain(res)
    s = race_summary(res.stdout)
    assert s["iterations"] == iters, explain(res)
    assert not any(marks.iterdir()), f"the denied copy ran: {sorted(marks.iterdir())[:3]}\n{explain(res)}"
    assert s["refused"] > 0, f"the supervisor never saw the denied path: {s}"
    _exec_stop_kills(res, s, "a different file than the one decided on")
    return res, s


@pytest.mark.parametrize("flipper", ["thread", "fork"])
def test_an_exec_whose_path_is_swapped_is_killed_before_the_denied_program_runs(
        user_box, prog, flipper):
    """The kernel reads execve's path again after the decision. The check of what it
    loaded used to run after the exec, from another thread: the denied copy had run and
    left its mark by then (68 marks in 300 execs). Each allowed exec is now held in its
    exec stop and killed there if another file was loaded."""
    _, s = _exec_race(user_box, prog, _DENY_COPY_RULE, 300, flipper)
    assert s["killed"] > 0, f"no exec was caught with the swapped path: {s}"


def test_a_restarted_exec_whose_path_is_swapped_is_killed_in_its_exec_stop(user_box, prog):
    """An append_args rule makes the exec again (restarted with the new argv) under a
    tracer of its own, which checked only the appended arguments in the exec stop; the
    file loaded was checked after the exec. The restart's tracer now runs the restarted
    exec's checks too: a path swapped to the denied copy is killed before it runs."""
    _, s = _exec_race(user_box, prog, _DENY_COPY_RULE + """\
  - id: add-an-argument
    actions: [process.exec]
    paths: ["{workspace}/okprog_"]
    decision: modify
    modify: append_args
    append_args: [extra]
    reason: okprog_ runs with one more argument
""", 100, "thread")
    assert s["ran"] > 0, f"the allowed, restarted half of the race never ran: {s}"


def test_scripts_whose_interpreter_is_a_script_or_missing_never_let_a_swapped_program_run(
        box, prog):
    """A '#!' script runs as its interpreter chain's last ELF; an interpreter that is a
    script itself, or missing, made the check accept any image at all (the denied copy
    raced in ran ~65 of 300 times). The chain is resolved at the decision now, and the
    image in the exec stop must be its end (none, when the chain cannot run)."""
    ok, denied, marks = _exec_race_setup(box, prog)
    inner = box.workspace / "inner.sh"
    inner.write_text("#!/bin/sh\nexit 0\n")
    inner.chmod(0o755)
    for name, line in (("scripty", f"#!{inner}\n"), ("scriptx", "#!/nonexistent/sh\n")):
        script = box.workspace / name
        script.write_text(line)
        script.chmod(0o755)
        race = [prog, "race-exec", str(script), str(denied), "150", "20", "thread", str(marks)]
        box.native(race)
        assert any(marks.iterdir()), f"natively the denied copy never ran against {name}"
        for m in marks.iterdir():
            m.unlink()
        profile = write_profile(box, f"deny-copy-{name}",
                                "id: deny-copy\nextends: default\nrules:\n" + _DENY_COPY_RULE)
        res = box.run([str(ok)] + race[1:5] + ["60"] + race[6:], profile=profile, timeout=120)
        s = race_summary(res.stdout)
        assert s["iterations"] == 150, explain(res)
        assert not any(marks.iterdir()), f"{name}: the denied copy ran: {s}\n{explain(res)}"
        _exec_stop_kills(res, s, "a different file than the one decided on")


TINY_LOADER = r"""
static long sc3(long n, long a, long b, long c)
{
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
}
void _start(void)
{
    static const char mark[] = "MARK";
    sc3(2, (long)mark, 0101 | 01000, 0644);        /* open(O_WRONLY|O_CREAT|O_TRUNC) */
    sc3(60, 0, 0, 0);
    for (;;);
}
"""


def test_an_elf_whose_dynamic_loader_name_is_rewritten_is_killed_in_its_exec_stop(box, prog):
    """The decision judges the dynamic loader an ELF names (PT_INTERP); a program that may
    write the ELF rewrote that name between the decision and the exec, and the kernel
    loaded a denied loader. The loader mapped in the exec stop (AT_BASE) must now be the
    one decided on."""
    ws = box.workspace
    shutil.copy("/lib64/ld-linux-x86-64.so.2", ws / "okld")
    marks = ws / "marks"
    marks.mkdir()
    (ws / "tiny.c").write_text(TINY_LOADER.replace("MARK", str(marks / "ran")))
    subprocess.run(["gcc", "-O2", "-nostdlib", "-static-pie", "-fPIE", "-o", str(ws / "nold"),
                    str(ws / "tiny.c")], check=True)
    (ws / "okelf.c").write_text("int main(void) { return 0; }\n")
    subprocess.run(["gcc", "-O2", f"-Wl,--dynamic-linker={ws / 'okld'}", "-o", str(ws / "okelf"),
                    str(ws / "okelf.c")], check=True)
    off = (ws / "okelf").read_bytes().find(str(ws / "okld").encode())
    assert off > 0
    race = [prog, "race-interp", str(ws / "okelf"), str(off), str(ws / "okld"), str(ws / "nold"),
            "200", "20"]
    box.native(race)
    assert any(marks.iterdir()), "natively the rewritten loader never ran"
    for m in marks.iterdir():
        m.unlink()
    profile = write_profile(box, "deny-loader", """\
id: deny-loader
extends: default
rules:
  - id: no-denied-loader
    actions: [process.exec]
    paths: ["{workspace}/nold"]
    decision: deny
    reason: this loader may not run
""")
    res = box.run(race[:-1] + ["60"], profile=profile, timeout=120)
    s = race_summary(res.stdout)
    assert s["iterations"] == 200, explain(res)
    assert not any(marks.iterdir()), f"the denied loader ran: {s}\n{explain(res)}"
    assert s["refused"] > 0, f"the decision never read the denied name: {s}"
    _exec_stop_kills(res, s, "a different file than the one decided on")


def test_a_restarted_exec_decided_as_another_program_keeps_execs_held_in_their_stop(box, prog):
    """A restart (append_args) whose restarted exec was decided as another, plainly allowed
    program was tried as a fresh ptrace attach, which failed (traced already) and counted
    as "ptrace refused here": three of them turned the exec-stop checks off for the whole
    session. Such an exec is now checked by the restart's own tracer, and a refusal only
    counts once a probe shows the environment refuses ptrace."""
    ok, denied, marks = _exec_race_setup(box, prog)
    ta, tb = box.workspace / "taprogx", box.workspace / "tbprogx"
    for p in (ta, tb):
        shutil.copy(prog, p)
        p.chmod(0o755)
    flip = f"{prog} race-exec {ta} {tb} 60 30 thread {marks}"
    swap = f"{prog} race-exec {ok} {denied} 200 60 thread {marks}"
    box.native(["sh", "-c", swap])
    assert any(marks.iterdir()), "natively the denied copy never ran"
    for m in marks.iterdir():
        m.unlink()
    profile = write_profile(box, "restart-flip", "id: restart-flip\nextends: default\nrules:\n"
                            + _DENY_COPY_RULE + """\
  - id: add-an-argument
    actions: [process.exec]
    paths: ["{workspace}/taprogx"]
    decision: modify
    modify: append_args
    append_args: [extra]
    reason: taprogx runs with one more argument
""")
    res = box.run(["sh", "-c", f"{flip} && {swap}"], profile=profile, timeout=150)
    assert res.returncode == 0, explain(res)
    assert "ptrace is refused" not in res.stderr, res.stderr[-2000:]
    assert not any(marks.iterdir()), f"the denied copy ran\n{explain(res)}"
    assert_no_internal_errors(res)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_an_empty_argv_filled_in_after_the_decision_is_killed_in_its_exec_stop(box, prog):
    """An exec with an empty argv classifies as nothing; a process sharing the array set
    argv[0] (and so the whole argv) after the decision read it, and `git push -f` ran
    past a vcs.push.force deny. The exec of a classified tool now runs only with the argv
    decided on: an empty one reaches the program as one empty argument."""
    git = shutil.which("git")
    _force_push_race(box, [prog, "race-argv0", git, "40", "{secs}", "push", "-f", "origin",
                           "main"], 40)


NO_PTRACE = r"""
/* no_ptrace ERRNO CMD...: run CMD with ptrace(2) failing with ERRNO, as a container
 * runtime's seccomp profile or an LSM refuses it. */
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    unsigned err = (unsigned)atoi(argv[1]);
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_ptrace, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | err),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof f / sizeof f[0], f };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
        return 125;
    execvp(argv[2], argv + 2);
    return 127;
}
"""


@pytest.mark.parametrize("err", [1, 13], ids=["EPERM", "EACCES"])
def test_where_ptrace_is_refused_execs_run_and_are_watched_after_they_start(box, compile_c, err):
    """yama and Landlock refuse ptrace with EPERM, SELinux and AppArmor with EACCES: either
    way a probe finds it refused once, the session says so, and execs run (checked after
    they start) instead of being refused one by one."""
    wrapper = [compile_c("no_ptrace", NO_PTRACE), str(err)]
    res = box.run(["sh", "-c", "for i in 1 2 3 4 5; do /bin/true; done; ls / >/dev/null && echo fine"],
                  wrapper=wrapper)
    assert res.returncode == 0 and "fine" in res.stdout, explain(res)
    assert res.stderr.count("ptrace refused") == 1, res.stderr
    assert not [r for r in res.records if r.get("type") == "enforcement"], explain(res)


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t",
                           "-c", "init.defaultBranch=main", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def _git_diverged_remote(ws: Path) -> None:
    """A repository in ws whose origin (ws/remote.git) holds a main branch that the local
    main does not descend from: only a forced push replaces it."""
    _git("init", "-q", "--bare", "remote.git", cwd=ws)
    _git("init", "-q", cwd=ws)
    (ws / ".git" / "info" / "exclude").write_text("remote.git\n")
    (ws / "f").write_text("a\n")
    _git("add", "f", cwd=ws)
    _git("commit", "-qm", "A", cwd=ws)
    _git("remote", "add", "origin", "./remote.git", cwd=ws)
    (ws / "f").write_text("x\n")
    _git("commit", "-qam", "X", cwd=ws)
    _git("push", "-q", "origin", "main", cwd=ws)
    _git("reset", "-q", "--hard", "HEAD~1", cwd=ws)
    (ws / "f").write_text("b\n")
    _git("commit", "-qam", "B", cwd=ws)


def _force_push_race(box, race: list[str], iters: int) -> dict:
    """Natively the race forces a push to ws/remote.git; under a vcs.push.force deny it
    never does, and every exec caught is killed in its exec stop. Returns the summary."""
    ws = box.workspace
    _git_diverged_remote(ws)
    x = _git("rev-parse", "main", cwd=ws / "remote.git")
    box.native([a.replace("{secs}", "20") for a in race])
    assert _git("rev-parse", "main", cwd=ws / "remote.git") != x, "natively no push was forced"
    _git("update-ref", "refs/heads/main", x, cwd=ws / "remote.git")
    res = box.run([a.replace("{secs}", "60") for a in race], profile=_no_force_profile(box),
                  timeout=120)
    s = race_summary(res.stdout)
    assert s["iterations"] == iters, explain(res)
    assert _git("rev-parse", "main", cwd=ws / "remote.git") == x, f"a push was forced: {s}"
    _exec_stop_kills(res, s, "other arguments than the ones decided on")
    return s


def _no_force_profile(box) -> str:
    return write_profile(box, "no-force", """\
id: no-force
extends: default
rules:
  - id: no-force-push
    actions: [vcs.push.force]
    decision: deny
    reason: no force pushes
""")


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_a_classified_tool_killed_in_its_exec_stop_when_its_arguments_were_rewritten(box, prog):
    """`git push -q` is allowed, `git push -f` is not (vcs.push.force). A thread flipping
    -q into -f after the classification read the argv used to force the push through
    (the remote branch rewritten). The program now runs only with the argv classified."""
    git = shutil.which("git")
    s = _force_push_race(box, [prog, "race-argv", git, "-q", "-f", "30", "{secs}", "thread",
                               "push", "-q", "origin", "main"], 30)
    assert s["refused"] > 0 and s["ran"] > 0, f"both halves of the race must occur: {s}"


def test_an_exec_a_rule_judged_by_its_argv_is_killed_if_the_argv_was_rewritten(box, prog):
    """A rule with an argv pattern judges the arguments read while the exec waited; the
    kernel reads them again. `rm -f DIR` (refused by rm: a directory) flipped into
    `rm -r DIR` after the decision removed DIR past a rule denying `rm -r`. The program
    now runs only with the argv decided on."""
    victim = box.workspace / "victim"
    (victim / "sub").mkdir(parents=True)
    race = [prog, "race-argv", "/usr/bin/rm", "-f", "-r", "30", "{secs}", "thread", "-f", "victim"]
    box.native([a.replace("{secs}", "20") for a in race])
    assert not victim.exists(), "natively the flipped rm -r never ran"
    (victim / "sub").mkdir(parents=True)

    profile = write_profile(box, "no-rm-r", """\
id: no-rm-r
extends: default
rules:
  - id: no-recursive-rm
    actions: [process.exec]
    argv: "/usr/bin/rm -r*"
    decision: deny
    reason: no recursive removal
""")
    res = box.run([a.replace("{secs}", "60") for a in race], profile=profile, timeout=120)
    s = race_summary(res.stdout)
    assert s["iterations"] == 30, explain(res)
    assert victim.is_dir(), f"rm -r ran: {s}\n{explain(res)}"
    assert s["refused"] > 0 and s["ran"] > 0, f"both halves of the race must occur: {s}"
    _exec_stop_kills(res, s, "other arguments than the ones decided on")


def test_a_classified_tool_that_is_a_script_runs_with_its_own_arguments(box):
    """A '#!' script's program is its interpreter, whose argv the kernel builds as
    interpreter, script path, then the script's arguments: the check in the exec stop
    compares those arguments (a `git` that is a shell script was killed as "rewritten")."""
    tool = box.workspace / "git"
    tool.write_text('#!/bin/sh\necho "script git: $*"\n')
    tool.chmod(0o755)
    profile = _no_force_profile(box)
    res = box.run(["./git", "status", "-s"], profile=profile)
    assert res.returncode == 0 and "script git: status -s" in res.stdout, explain(res)
    assert not [r for r in res.records if r.get("type") == "enforcement"], explain(res)
    res = box.run(["./git", "push", "--force", "origin", "main"], profile=profile)
    assert "script git" not in res.stdout and res.denied("process.exec"), explain(res)


# 2b. TOC-01: the connect() sockaddr flips between an allowed and a denied unix socket
class _Listener:
    """A unix stream server outside the sandbox that counts the connections it accepts."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o777)
        self.sock.listen(1024)
        self.sock.settimeout(0.05)
        self.accepted = 0
        self._stop = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                if self._stop:
                    return
                continue
            except OSError:
                return
            self.accepted += 1
            c.close()

    def wait_for(self, n: int, timeout: float = 3.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.accepted < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.accepted >= n

    def close(self):
        """Stop once the backlog is empty (queued connections are still counted)."""
        self._stop = True
        self.thread.join(5)
        self.sock.close()


@pytest.mark.parametrize("iters", RACE_PARAMS)
def test_thread_swapping_sockaddr_cannot_connect_to_denied_socket(box, prog, iters):
    ok_sock = box.workspace / "ok.sock"
    denied_sock = box.outside / "denied.sock"
    profile = _deny_socket_profile(box)
    nat_srv = _Listener(denied_sock)
    try:
        nat = box.native([prog, "race-connect", str(ok_sock), str(denied_sock), str(NATIVE_RACE_ITERS),
                          str(NATIVE_RACE_SECONDS)])
    finally:
        nat_srv.close()
    s = race_summary(nat.stdout)
    assert s["reached_denied"] >= 1 and nat_srv.accepted >= 1, (nat.stdout, nat_srv.accepted)

    denied_sock.unlink()
    srv = _Listener(denied_sock)
    seconds, timeout = _race_budget(iters)
    try:
        res = box.run([prog, "race-connect", str(ok_sock), str(denied_sock), str(iters), str(seconds)],
                      profile=profile, timeout=timeout)
    finally:
        srv.close()
    assert res.returncode == 0, explain(res)
    s = race_summary(res.stdout)
    assert srv.accepted == 0, f"the denied server accepted {srv.accepted} connections\n{explain(res)}"
    assert s["iterations"] == iters and s["reached_denied"] == 0, explain(res)
    assert s["connected"] > 0 and s["ok_accepts"] > 0, f"the allowed half never connected: {s}"
    target = f"unix:{denied_sock}"
    denies = [r for r in res.denied("net.connect") if r["action"]["target"] == target]
    assert denies, f"no deny receipt naming {target}\n{explain(res)}"
    assert not [r for r in res.receipts("net.connect", "allow") if r["action"]["target"] == target]
    assert_no_internal_errors(res)


@pytest.mark.parametrize("path", ["sock-link", "dirlink/denied.sock",
                                  "/proc/self/cwd/../outside/denied.sock",
                                  "/proc/thread-self/root{outside}/denied.sock"])
def test_symlinked_or_proc_path_to_denied_socket_cannot_connect(box, prog, path):
    denied_sock = box.outside / "denied.sock"
    mksymlink(box, box.workspace / "sock-link", denied_sock)
    mksymlink(box, box.workspace / "dirlink", box.outside)
    path = path.replace("{outside}", str(box.outside))
    srv = _Listener(denied_sock)
    try:
        nat = box.native([prog, "path-op", "connect", str(box.workspace), path])
        assert steps(nat.stdout)["connect"] == (0, "0"), nat.stdout
        assert srv.wait_for(1), "the native connect never reached the server"
        native_count = srv.accepted
        res = box.run([prog, "path-op", "connect", str(box.workspace), path],
                      profile=_deny_socket_profile(box))
    finally:
        srv.close()
    assert native_count >= 1
    assert srv.accepted == native_count, f"the denied server got a connection\n{explain(res)}"
    assert steps(res.stdout).get("connect") in ((-1, "EPERM"), (-1, "ECONNREFUSED")), explain(res)
    target = f"unix:{denied_sock}"
    assert [r for r in res.denied("net.connect") if r["action"]["target"] == target], explain(res)
    assert_no_internal_errors(res)


# ======================================================================================
# 3. PATH-01: symlink swap races
@pytest.mark.parametrize("iters", RACE_PARAMS)
def test_symlink_swap_race_cannot_truncate_outside_file(box, prog, iters):
    ok = mkfile(box, box.workspace / "ok")
    v = victim(box)
    mksymlink(box, box.workspace / "link", ok)
    mksymlink(box, box.workspace / "link_alt", v.path)

    nat = box.native([prog, "symlink-race-open", str(v.path), str(NATIVE_RACE_ITERS), str(NATIVE_RACE_SECONDS)])
    assert race_summary(nat.stdout)["victim_hit"] == 1 and not v.intact(), nat.stdout

    v = victim(box)
    mksymlink(box, box.workspace / "link", ok)
    mksymlink(box, box.workspace / "link_alt", v.path)
    seconds, timeout = _race_budget(iters)
    res = box.run([prog, "symlink-race-open", str(v.path), str(iters), str(seconds)], timeout=timeout)
    assert res.returncode == 0, explain(res)
    s = race_summary(res.stdout)
    assert s["iterations"] == iters and s["victim_hit"] == 0, explain(res)
    assert s["swaps"] > 0 and s["done"] > 0 and s["denied"] > 0, s
    assert_blocked(res, v, v.path, "file.write")


@pytest.mark.parametrize("iters", RACE_PARAMS)
@pytest.mark.parametrize("layout", ["two-symlinks", "dir-and-symlink"])
def test_directory_symlink_swap_race_cannot_delete_outside_file(box, prog, layout, iters):
    """two-symlinks: dirlink -> workspace/d and dirlink_alt -> outside/ are exchanged.
    dir-and-symlink: a real directory and a symlink to outside/ trade places, so the
    supervisor's lookup alternates between its symlink-free fast path and its walk."""
    v = victim(box)
    box.canary("bystander", "another outside file\n")

    def setup():
        for n in ("dirlink", "dirlink_alt"):
            p = box.workspace / n
            if p.is_symlink():
                p.unlink()
            elif p.is_dir():
                for f in p.iterdir():
                    f.unlink()
                p.rmdir()
        if layout == "two-symlinks":
            mksymlink(box, box.workspace / "dirlink", mkdir(box, box.workspace / "d"))
        else:
            mkdir(box, box.workspace / "dirlink")
        mksymlink(box, box.workspace / "dirlink_alt", box.outside)
    create = "d/victim" if layout == "two-symlinks" else "dirlink/victim"

    setup()
    nat = box.native([prog, "dirlink-race-unlink", str(v.path), str(NATIVE_RACE_ITERS),
                      str(NATIVE_RACE_SECONDS), create])
    assert race_summary(nat.stdout)["victim_hit"] == 1 and not v.path.exists(), nat.stdout

    v = victim(box)
    setup()
    before = outside_snapshot(box)
    seconds, timeout = _race_budget(iters)
    res = box.run([prog, "dirlink-race-unlink", str(v.path), str(iters), str(seconds), create],
                  profile=race_profile(box), timeout=timeout)
    assert res.returncode == 0, explain(res)
    s = race_summary(res.stdout)
    assert s["iterations"] == iters and s["victim_hit"] == 0, explain(res)
    assert s["swaps"] > 0 and s["done"] > 0 and s["denied"] > 0, s
    assert outside_snapshot(box) == before, "files outside the workspace changed"
    assert_blocked(res, v, v.path, "file.delete")


@pytest.mark.parametrize("op,action_type", [
    ("create", "file.create"), ("mkdir", "file.mkdir"), ("mkfifo", "file.mknod"),
    ("symlink", "file.symlink"), ("link-evil", "file.link"), ("bind", "net.bind")])
def test_directory_symlink_cannot_plant_files_outside(box, prog, op, action_type):
    """workspace/dirlink -> outside/: creating anything under dirlink/ lands outside."""
    mkfile(box, box.workspace / "evil", "evil\n")
    mksymlink(box, box.workspace / "dirlink", box.outside)
    planted = box.outside / "planted"
    nat = box.native([prog, "path-op", op, str(box.workspace), "dirlink/planted"])
    assert steps(nat.stdout)[op][0] >= 0 and (planted.exists() or planted.is_symlink()), nat.stdout
    if planted.is_dir() and not planted.is_symlink():
        planted.rmdir()
    else:
        planted.unlink()

    before = outside_snapshot(box)
    res = box.run([prog, "path-op", op, str(box.workspace), "dirlink/planted"])
    assert steps(res.stdout).get(op, (None,))[0] == -1, explain(res)
    assert not planted.exists() and not planted.is_symlink(), f"{op} planted a file outside"
    assert outside_snapshot(box) == before
    denies = [r for r in res.denied(action_type) if r["action"]["target"].endswith(str(planted))]
    assert denies, explain(res)
    assert_no_internal_errors(res)


# ======================================================================================
# 4. PATH-02: a dirfd on a directory outside the workspace; AT_FDCWD as a 32-bit value
DIRFD_OPS = {
    # op: (action type of the deny, how native damage shows)
    "unlinkat": ("file.delete", "gone"),
    "openat-trunc": ("file.write", "changed"),
    "renameat": ("file.rename", "gone"),
    "renameat-into-workspace": ("file.rename", "gone"),
    "renameat-over": ("file.rename", "changed"),
    "fdcwd32-unlinkat": ("file.delete", "gone"),
    "fdcwd32-openat-trunc": ("file.write", "changed"),
    "junkfd-unlinkat": ("file.delete", "gone"),
}


@pytest.mark.parametrize("op", list(DIRFD_OPS))
def test_dirfd_outside_workspace_cannot_modify_outside_file(box, prog, op):
    action_type, damage = DIRFD_OPS[op]
    mkfile(box, box.workspace / "evil", "evil replacement\n")
    v = victim(box)
    nat = box.native([prog, "dirfd", str(box.outside), op])
    assert steps(nat.stdout).get(op, (-1,))[0] >= 0, nat.stdout
    assert (not v.path.exists()) if damage == "gone" else (v.path.exists() and not v.intact()), nat.stdout

    cleanup(box.outside / "renamed", box.workspace / "stolen")
    mkfile(box, box.workspace / "evil", "evil replacement\n")
    v = victim(box)
    res = box.run([prog, "dirfd", str(box.outside), op])
    assert steps(res.stdout).get(op) == (-1, "EACCES"), explain(res)
    assert not (box.outside / "renamed").exists() and not (box.workspace / "stolen").exists()
    assert_blocked(res, v, v.path, action_type)


@pytest.mark.parametrize("iters", RACE_PARAMS)
@pytest.mark.parametrize("mode", ["cwd-race-unlink", "dirfd-race-unlink"])
def test_thread_changing_cwd_or_dirfd_cannot_redirect_unlink_outside(box, prog, mode, iters):
    """A second thread chdir()s (or dup2()s a dirfd) between the workspace and outside/
    while the main thread unlinks the relative name "victim": neither call is notified,
    so the cwd/dirfd changes while the supervisor decides."""
    v = victim(box)
    argv = [prog, mode, str(box.workspace), str(box.outside), str(v.path)]
    nat = box.native(argv + [str(NATIVE_RACE_ITERS), str(NATIVE_RACE_SECONDS)])
    assert race_summary(nat.stdout)["victim_hit"] == 1 and not v.path.exists(), nat.stdout

    v = victim(box)
    seconds, timeout = _race_budget(iters)
    res = box.run(argv + [str(iters), str(seconds)], profile=race_profile(box), timeout=timeout)
    assert res.returncode == 0, explain(res)
    s = race_summary(res.stdout)
    assert s["iterations"] == iters and s["victim_hit"] == 0, explain(res)
    assert s["swaps"] > 0 and s["done"] > 0 and s["denied"] > 0, s
    assert_blocked(res, v, v.path, "file.delete")


def test_thread_with_private_fd_table_cannot_unlink_through_outside_dirfd(box, prog):
    """unshare(CLONE_FILES): the thread's fd 100 is outside/, the leader's fd 100 is the
    workspace (with a decoy "victim"). Resolving through the leader's fd table would
    decide on, and delete, the decoy."""
    v = victim(box)
    nat = box.native([prog, "thread-files", str(box.outside), str(box.workspace)])
    assert steps(nat.stdout)["unlinkat"][0] == 0 and not v.path.exists(), nat.stdout

    v = victim(box)
    decoy = Canary(mkfile(box, box.workspace / "victim", "decoy in the workspace\n"))
    res = box.run([prog, "thread-files", str(box.outside), str(box.workspace)])
    assert steps(res.stdout).get("unshare-files") == (0, "0"), explain(res)
    assert steps(res.stdout).get("unlinkat") == (-1, "EACCES"), explain(res)
    assert decoy.intact(), "the leader's fd table was used for the thread's dirfd"
    assert_blocked(res, v, v.path, "file.delete")


# 5. PATH-02: a thread with its own fs struct (unshare(CLONE_FS)) and its own cwd
@pytest.mark.parametrize("op,action_type", [("unlink", "file.delete"), ("open-trunc", "file.write"),
                                            ("rename", "file.rename")])
def test_thread_with_private_cwd_cannot_modify_outside_file(box, prog, op, action_type):
    v = victim(box)
    nat = box.native([prog, "thread-cwd", str(box.outside), op])
    assert steps(nat.stdout)[op][0] >= 0 and not v.intact(), nat.stdout

    cleanup(box.outside / "renamed")
    v = victim(box)
    # A decoy with the same name where the leader's cwd is: resolving the thread's relative
    # path against the leader's cwd (/proc/PID/cwd) would decide on this file instead.
    decoy = Canary(mkfile(box, box.workspace / "victim", "decoy in the workspace\n"))
    res = box.run([prog, "thread-cwd", str(box.outside), op])
    assert steps(res.stdout).get("unshare-fs") == (0, "0"), explain(res)
    assert steps(res.stdout).get(op) == (-1, "EACCES"), explain(res)
    assert f"main-cwd={box.workspace}" in res.stdout
    assert decoy.intact(), "the leader's cwd was used to resolve the thread's path"
    assert not (box.outside / "renamed").exists()
    assert_blocked(res, v, v.path, action_type)


# ======================================================================================
# 6. PATH-03: /proc/self/cwd/.. and friends
PROC_PATHS = [
    ("unlink", "/proc/self/cwd/../../outside/victim", "file.delete"),
    ("open-trunc", "/proc/self/cwd/../../outside/victim", "file.write"),
    ("truncate", "/proc/self/cwd/../../outside/victim", "file.truncate"),
    ("unlink", "/proc/thread-self/cwd/../../outside/victim", "file.delete"),
    ("unlink", "/proc/{pid}/cwd/../../outside/victim", "file.delete"),
    ("open-trunc", "/proc/self/root{victim}", "file.write"),
    ("rename-away", "/proc/self/cwd/../../outside/victim", "file.rename"),
]


@pytest.mark.parametrize("op,path,action_type", PROC_PATHS,
                         ids=[f"{o}:{p}" for o, p, _ in PROC_PATHS])
def test_proc_self_cwd_dotdot_cannot_reach_outside_file(box, prog, op, path, action_type):
    sub = mkdir(box, box.workspace / "sub")
    v = victim(box)
    path = path.replace("{victim}", str(v.path))
    nat = box.native([prog, "path-op", op, str(sub), path])
    assert steps(nat.stdout)[op][0] >= 0 and not v.intact(), nat.stdout

    cleanup(sub / "stolen")
    v = victim(box)
    res = box.run([prog, "path-op", op, str(sub), path])
    assert steps(res.stdout).get(op) == (-1, "EACCES"), explain(res)
    assert not (sub / "stolen").exists()
    assert_blocked(res, v, v.path, action_type)


FD_PREFIXES = ["/proc/self/fd/", "/dev/fd/", "/proc/thread-self/fd/", "/proc/{pid}/fd/",
               "/proc/{pid}/task/{tid}/fd/"]


# every prefix with O_WRONLY|O_TRUNC; O_RDWR on two of them (the resolution is the same)
FD_CASES = [(p, h, "wronly-trunc") for p in FD_PREFIXES for h in ("rdonly", "opath")] + \
           [(p, h, "rdwr") for p in FD_PREFIXES[:2] for h in ("rdonly", "opath")]


@pytest.mark.parametrize("prefix,how,mode", FD_CASES, ids=[f"{m}:{h}:{p}" for p, h, m in FD_CASES])
def test_reopening_readonly_fd_through_magic_link_cannot_write_outside_file(box, prog, prefix, how, mode):
    """open(victim, O_RDONLY or O_PATH) is not a change and is not even notified; the
    reopen through the magic link asks for write access to the same inode."""
    v = victim(box)
    nat = box.native([prog, "fd-reopen", str(v.path), how, prefix, mode])
    assert steps(nat.stdout)["reopen"][0] >= 0 and not v.intact(), nat.stdout

    v = victim(box)
    res = box.run([prog, "fd-reopen", str(v.path), how, prefix, mode])
    assert steps(res.stdout).get("open-victim", (-1,))[0] >= 0, explain(res)
    assert steps(res.stdout).get("reopen") == (-1, "EACCES"), explain(res)
    assert_blocked(res, v, v.path, "file.write")


# The reopen of /proc/self/fd/N is judged as the fd when the fd already grants the access
# asked for. A second thread flips fd N between a read-only fd of a file outside and a
# read-write fd of the program's own file: the object and the fd's access must come from
# the same fd (they used to be read one after the other: 2 tries sufficed).
FD_FLIP_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
static int fd_ro, fd_rw;
static volatile int stop;
static void *flip(void *a) {
    (void)a;
    while (!stop) { dup2(fd_ro, 50); dup2(fd_rw, 50); }
    return 0;
}
int main(int argc, char **argv) {
    fd_ro = open(argv[1], O_RDONLY);
    fd_rw = open(argv[2], O_RDWR | O_CREAT, 0644);
    if (fd_ro < 0 || fd_rw < 0) { perror("open"); return 2; }
    struct stat vst;
    fstat(fd_ro, &vst);
    pthread_t t;
    pthread_create(&t, 0, flip, 0);
    time_t end = time(0) + strtol(argv[3], 0, 10);
    int tries = 0, wrote = 0;
    while (time(0) < end && !wrote) {
        int fd = open("/proc/self/fd/50", O_WRONLY | O_APPEND);
        tries++;
        if (fd < 0) continue;
        struct stat st;
        fstat(fd, &st);
        if (st.st_ino == vst.st_ino && st.st_dev == vst.st_dev)
            wrote = write(fd, "PWNED\n", 6) == 6;
        close(fd);
    }
    stop = 1;
    pthread_join(t, 0);
    printf("tries=%d wrote=%d\n", tries, wrote);
    return 0;
}
"""


@pytest.mark.parametrize("fast_path", ["1", "0"])
def test_flipping_the_fd_behind_a_magic_link_reopen_cannot_write_outside_file(box, compile_c, fast_path):
    flipper = compile_c("fd_flip_reopen", FD_FLIP_C)
    v = victim(box)
    nat = box.native([flipper, str(v.path), str(box.workspace / "mine"), "3"])
    assert "wrote=1" in nat.stdout and not v.intact(), nat.stdout + nat.stderr

    v = victim(box)
    res = box.run([flipper, str(v.path), str(box.workspace / "mine"), "3"],
                  env={"AARM_FAST_PATH": fast_path})
    assert "wrote=0" in res.stdout, explain(res)
    assert v.intact(), explain(res)
    assert not [r for r in res.receipts(result="allow") if touches(r, v.path)], explain(res)


def test_truncating_an_inherited_log_through_dev_stdout_is_denied(box):
    """stdout appended to a log outside the workspace (CI): writing to it through
    /dev/stdout is the fd's own access, emptying it is not. `> /dev/stderr` on a pipe
    still works (O_TRUNC does nothing to a pipe)."""
    import subprocess
    from conftest import sandbox_cmd
    script = "true > /dev/stdout; echo after; echo to-stderr > /dev/stderr"
    log = box.outside / "ci.log"
    log.write_text("earlier output\n")
    with open(log, "a") as out:
        subprocess.run(["sh", "-c", script], stdout=out, stderr=subprocess.PIPE, cwd=box.workspace)
    assert log.read_text() == "after\n", "natively the log is emptied"

    log.write_text("earlier output\n")
    journal = box.root / "journal" / "dev-stdout.jsonl"
    with open(log, "a") as out:
        p = subprocess.run(sandbox_cmd() + ["run", "--workspace", str(box.workspace), "--journal",
                                            str(journal), "--", "sh", "-c", script],
                           stdout=out, stderr=subprocess.PIPE, text=True, cwd=box.workspace)
    assert log.read_text() == "earlier output\nafter\n", p.stderr
    assert "to-stderr" in p.stderr
    assert "denied file.write" in p.stderr and "outside-workspace" in journal.read_text()


# ======================================================================================
# 7. PATH-04: hardlinks, renames and symlinks into or over protected files
@pytest.mark.parametrize("how", ["link", "linkat-proc", "linkat-empty"])
def test_hardlink_of_outside_file_cannot_be_written_through(user_box, prog, how):
    box = user_box
    alias = box.workspace / "alias"
    v = victim(box)
    nat = box.native([prog, "link-write", str(v.path), str(alias), how])
    st = steps(nat.stdout)
    assert st.get("write", (-1,))[0] > 0 and not v.intact(), nat.stdout
    alias.unlink()

    v = victim(box)
    res = box.run([prog, "link-write", str(v.path), str(alias), how])
    st = steps(res.stdout)
    link_step = "link" if how == "link" else "linkat"
    assert st.get(link_step) == (-1, "EACCES"), explain(res)
    assert st.get("open-alias") == (-1, "ENOENT"), explain(res)
    assert not alias.exists() and v.path.stat().st_nlink == 1
    assert_blocked(res, v, v.path, "file.link")


@pytest.mark.parametrize("call", ["rename", "renameat2"])
def test_rename_workspace_file_over_outside_file_is_denied(user_box, prog, call):
    box = user_box
    evil = mkfile(box, box.workspace / "evil", "evil replacement\n")
    v = victim(box)
    argv = [prog, "rename", str(evil), str(v.path)] + (["0"] if call == "renameat2" else [])
    nat = box.native(argv)
    assert v.path.read_text() == "evil replacement\n", nat.stdout

    evil = mkfile(box, box.workspace / "evil", "evil replacement\n")
    v = victim(box)
    res = box.run(argv)
    assert steps(res.stdout).get(call) == (-1, "EACCES"), explain(res)
    assert evil.read_text() == "evil replacement\n"
    assert_blocked(res, v, v.path, "file.rename")


def test_rename_exchange_with_outside_file_is_denied(user_box, prog):
    box = user_box
    mine = mkfile(box, box.workspace / "mine", "workspace content\n")
    v = victim(box)
    argv = [prog, "rename", str(mine), str(v.path), "2"]       # RENAME_EXCHANGE
    nat = box.native(argv)
    assert steps(nat.stdout)["renameat2"][0] == 0 and v.path.read_text() == "workspace content\n", nat.stdout

    mine = mkfile(box, box.workspace / "mine", "workspace content\n")
    v = victim(box)
    res = box.run(argv)
    assert steps(res.stdout).get("renameat2") == (-1, "EACCES"), explain(res)
    assert mine.read_text() == "workspace content\n"
    assert_blocked(res, v, v.path, "file.rename")


def test_symlink_in_workspace_pointing_outside_cannot_be_written_through(user_box, prog):
    box = user_box
    sl = box.workspace / "sl"
    v = victim(box)
    nat = box.native([prog, "symlink-write", str(v.path), str(sl), "trunc"])
    assert steps(nat.stdout).get("write", (-1,))[0] > 0 and not v.intact(), nat.stdout
    sl.unlink()

    v = victim(box)
    res = box.run([prog, "symlink-write", str(v.path), str(sl), "trunc"])
    st = steps(res.stdout)
    assert st.get("symlink") == (0, "0"), "creating a symlink inside the workspace is allowed"
    assert st.get("open-link") == (-1, "EACCES"), explain(res)
    assert_blocked(res, v, v.path, "file.write")


def test_dangling_symlink_in_workspace_cannot_create_outside_file(user_box, prog):
    box = user_box
    sl = box.workspace / "dl"
    newfile = box.outside / "planted"
    nat = box.native([prog, "symlink-write", str(newfile), str(sl), "creat"])
    assert steps(nat.stdout).get("write", (-1,))[0] > 0 and newfile.exists(), nat.stdout
    newfile.unlink()
    sl.unlink()

    res = box.run([prog, "symlink-write", str(newfile), str(sl), "creat"])
    st = steps(res.stdout)
    assert st.get("symlink") == (0, "0")
    assert st.get("open-link", (0,))[0] == -1, explain(res)
    assert not newfile.exists(), "a file was created outside the workspace"
    assert not [r for r in res.receipts(result="allow") if touches(r, newfile)]
    # Refused before any decision: either a deny receipt or a journaled refusal.
    refused = [r for r in res.denied() if touches(r, newfile)] or [
        r for r in res.records if r.get("type") == "error" and r.get("syscall") in ("open", "openat")]
    assert refused, explain(res)
    assert_no_internal_errors(res)


def test_renaming_workspace_into_session_tmpdir_cannot_destroy_it(box, prog):
    """PATH-04 (rename an undenied ancestor): the workspace directory itself and the
    session's private TMPDIR are both writable, and the TMPDIR is removed when the session
    ends, so rename(workspace, $TMPDIR/gone) would destroy the whole project with one
    allowed rename (and not one file.delete for the `mass-delete` brake to count)."""
    for i in range(200):
        mkfile(box, box.workspace / "src" / f"f{i}.py", f"precious {i}\n")
    cmd = ["sh", "-c", f'exec {prog} rename {box.workspace} "$TMPDIR/gone"']
    nat_tmp = mkdir(box, box.root / "native-tmp")
    nat = box.native(cmd, env={"TMPDIR": str(nat_tmp)}, cwd=box.root)
    assert steps(nat.stdout)["rename"] == (0, "0") and not box.workspace.exists(), nat.stdout
    os.rename(nat_tmp / "gone", box.workspace)

    res = box.run(cmd)
    assert_no_internal_errors(res)
    left = sorted(p.name for p in (box.workspace / "src").glob("*.py")) if box.workspace.exists() else []
    assert len(left) == 200, (f"{200 - len(left)} workspace files destroyed; "
                              f"rename step: {steps(res.stdout).get('rename')}\n{explain(res)}")
    assert steps(res.stdout).get("rename", (0,))[0] == -1, explain(res)
    assert [r for r in res.denied("file.rename") if r["action"]["target"] == str(box.workspace)], explain(res)


# Persistence points inside the workspace (.git/hooks, .git/config) are protected by path
# rules in the default profile (`git-hook`, `git-config`: step_up, which denies without an
# approver). These attacks rebuild the protected names instead of writing them.
EVIL_HOOK = "#!/bin/sh\necho PWNED hook\n"
EVIL_CONFIG = '[core]\n\tfsmonitor = "touch /tmp/PWNED-by-fsmonitor; false"\n'


def _reset_repo(box) -> tuple[Canary, Canary]:
    """workspace/.git with a hook and a config (as before the session), plus the agent's
    prepared replacements newhooks/ and fakegit/."""
    import shutil
    for n in (".git", "oldhooks", "oldgit", "newhooks", "fakegit", "evilgit"):
        p = box.workspace / n
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.exists():
            shutil.rmtree(p)
    git = mkdir(box, box.workspace / ".git")
    mkdir(box, git / "hooks")
    hook = Canary(mkfile(box, git / "hooks" / "pre-commit", "#!/bin/sh\necho original hook\n"))
    config = Canary(mkfile(box, git / "config", "[core]\n\tbare = false\n"))
    mkdir(box, box.workspace / "newhooks")
    mkfile(box, box.workspace / "newhooks" / "pre-commit", EVIL_HOOK)
    mkdir(box, box.workspace / "fakegit" / "hooks")
    mkfile(box, box.workspace / "fakegit" / "config", EVIL_CONFIG)
    return hook, config


def test_rename_workspace_file_over_git_hook_is_denied(box, prog):
    hook, _ = _reset_repo(box)
    evil = mkfile(box, box.workspace / "evil", EVIL_HOOK)
    nat = box.native([prog, "rename", str(evil), str(hook.path)])
    assert hook.path.read_text() == EVIL_HOOK, nat.stdout

    hook, _ = _reset_repo(box)
    evil = mkfile(box, box.workspace / "evil", EVIL_HOOK)
    res = box.run([prog, "rename", str(evil), str(hook.path)])
    assert steps(res.stdout).get("rename") == (-1, "EACCES"), explain(res)
    assert_blocked(res, hook, hook.path, "file.rename")
    assert {r["decision"]["rule"] for r in res.denied("file.rename")} == {"git-hook"}


HOOK_SWAPS = {
    # rename the hooks directory away, then put a directory of our own in its place
    "directory-rename": "{p} rename .git/hooks oldhooks; {p} rename newhooks .git/hooks",
    # ... or a symlink to it (git follows it)
    "directory-symlink": "{p} rename .git/hooks oldhooks; {p} path-op symlink-to-newhooks . .git/hooks",
}


@pytest.mark.parametrize("how", list(HOOK_SWAPS))
def test_swapping_the_git_hooks_directory_cannot_plant_a_hook(box, prog, how):
    """PATH-04, ancestor rename: the protected name is rebuilt by moving its parent."""
    cmd = ["sh", "-c", HOOK_SWAPS[how].format(p=prog)]
    hook, _ = _reset_repo(box)
    nat = box.native(cmd)
    assert hook.path.read_text() == EVIL_HOOK, nat.stdout + nat.stderr

    hook, _ = _reset_repo(box)
    res = box.run(cmd)
    assert_no_internal_errors(res)
    assert hook.intact(), f".git/hooks/pre-commit replaced: {hook.state()}\n{explain(res)}"
    hooks_dir = str(box.workspace / ".git" / "hooks")
    assert [r for r in res.denied() if touches(r, hooks_dir)], explain(res)


# A directory prepared where no rule looks, then moved so that its entries land on protected
# names: no entry is created, written or renamed on its own (PATH-04, "rebuild underneath").
PLANT_BY_MOVE = {
    # a repository the agent makes by moving a complete git dir into place
    "new-repo-gitdir": ("repo/.git", "repo/.git/hooks/pre-commit"),
    # a submodule git dir of the repository that existed before the session
    "submodule-gitdir": (".git/modules/sub", ".git/modules/sub/hooks/pre-commit"),
}


def _prepare_gitdir(box, where: Path) -> None:
    import shutil
    for n in ("evilgit", "repo"):
        if (box.workspace / n).exists():
            shutil.rmtree(box.workspace / n)
    mkfile(box, where / "HEAD", "ref: refs/heads/main\n")
    mkdir(box, where / "objects")
    mkdir(box, where / "refs")
    hook = mkfile(box, where / "hooks" / "pre-commit", EVIL_HOOK)
    hook.chmod(0o755)
    mkdir(box, box.workspace / "repo")
    mkdir(box, box.workspace / ".git" / "modules")     # (a mkdir the agent may make itself)


@pytest.mark.parametrize("how", list(PLANT_BY_MOVE))
def test_moving_a_prepared_directory_into_a_git_dir_cannot_plant_a_hook(box, prog, how):
    """The directory rename is judged as the renames of everything it moves: evil/hooks
    would land on a hooks path that `git-hook` holds (no approver here: denied)."""
    dst, planted = PLANT_BY_MOVE[how]
    _reset_repo(box)
    _prepare_gitdir(box, box.workspace / "evilgit")
    nat = box.native([prog, "rename", "evilgit", dst])
    assert steps(nat.stdout)["rename"] == (0, "0"), nat.stdout + nat.stderr
    assert (box.workspace / planted).read_text() == EVIL_HOOK

    _reset_repo(box)
    if (box.workspace / dst).exists():
        import shutil
        shutil.rmtree(box.workspace / dst)
    _prepare_gitdir(box, box.workspace / "evilgit")
    res = box.run([prog, "rename", "evilgit", dst])
    assert_no_internal_errors(res)
    assert steps(res.stdout).get("rename") == (-1, "EACCES"), explain(res)
    assert not (box.workspace / planted).exists(), explain(res)
    assert (box.workspace / "evilgit" / "hooks" / "pre-commit").exists()
    denied = res.denied("file.rename")
    assert [r["decision"]["rule"] for r in denied] == ["git-hook"], explain(res)
    assert f"moves {box.workspace}/evilgit/hooks to {box.workspace}/{dst}/hooks" in \
        denied[0]["decision"]["reason"], denied[0]["decision"]


def test_a_hook_in_the_hooks_directory_the_repo_configures_is_held(box):
    """core.hooksPath (husky's `.husky`) moves a repository's hooks into the work tree:
    a path rule on .git/hooks alone let a planted pre-commit run at the next host commit."""
    import shutil
    import subprocess
    if not shutil.which("git"):
        pytest.skip("git is not installed")
    _reset_repo(box)
    shutil.rmtree(box.workspace / ".git")
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", HOME=str(box.root / "home"))
    git = lambda *a: subprocess.run(["git", "-C", str(box.workspace), *a], env=env,  # noqa: E731
                                    capture_output=True, text=True)
    assert git("init", "-q").returncode == 0
    assert git("config", "core.hooksPath", ".husky").returncode == 0
    husky = mkdir(box, box.workspace / ".husky")
    plant = f"printf '#!/bin/sh\\necho HOOK-RAN-ON-HOST\\n' > {husky}/pre-commit && chmod +x {husky}/pre-commit"
    box.native(["sh", "-c", plant])
    done = git("commit", "-q", "--allow-empty", "-m", "x")
    assert "HOOK-RAN-ON-HOST" in done.stdout + done.stderr      # natively: the hook runs
    (husky / "pre-commit").unlink()

    res = box.run(["sh", "-c", plant])
    assert not (husky / "pre-commit").exists(), explain(res)
    assert [r["decision"]["rule"] for r in res.denied("file.create")] == ["git-hook"], explain(res)
    done = git("commit", "-q", "--allow-empty", "-m", "y")
    assert "HOOK-RAN-ON-HOST" not in done.stdout + done.stderr


def test_renaming_directories_without_protected_entries_still_works(box, prog):
    """The common case is untouched: a package directory renamed, and two swapped with
    RENAME_EXCHANGE, land as natively."""
    for i in range(20):
        mkfile(box, box.workspace / "src" / "pkg" / "sub" / f"m{i}.py", f"m{i}\n")
    mkfile(box, box.workspace / "src" / "other" / "x.py", "x\n")
    res = box.run(["sh", "-c", f"cd src && {prog} rename pkg pkg2 && {prog} rename pkg2 other 2"])
    assert_no_internal_errors(res)
    assert steps(res.stdout).get("rename") == (0, "0"), explain(res)
    assert steps(res.stdout).get("renameat2") == (0, "0"), explain(res)
    assert (box.workspace / "src" / "other" / "sub" / "m19.py").read_text() == "m19\n", explain(res)
    assert (box.workspace / "src" / "pkg2" / "x.py").read_text() == "x\n", explain(res)
    assert not res.denied(), explain(res)


def test_swapping_the_dot_git_directory_cannot_replace_git_config(box, prog):
    cmd = ["sh", "-c", f"{prog} rename .git oldgit; {prog} rename fakegit .git"]
    _, config = _reset_repo(box)
    nat = box.native(cmd)
    assert config.path.read_text() == EVIL_CONFIG, nat.stdout + nat.stderr

    _, config = _reset_repo(box)
    res = box.run(cmd)
    assert_no_internal_errors(res)
    assert config.intact(), f".git/config replaced: {config.state()}\n{explain(res)}"
    assert [r for r in res.denied("file.rename") if touches(r, box.workspace / ".git")], explain(res)


def test_deleting_and_recreating_git_config_cannot_replace_it(box, prog):
    cmd = ["sh", "-c", f"{prog} path-op unlink . .git/config; {prog} path-op create . .git/config"]
    _, config = _reset_repo(box)
    res_direct = box.run([prog, "path-op", "open-trunc", ".", ".git/config"])
    assert steps(res_direct.stdout).get("open-trunc") == (-1, "EACCES"), "control: direct write is denied"
    assert config.intact()

    nat = box.native(cmd)
    assert "PWNED" in config.path.read_text(), nat.stdout

    _, config = _reset_repo(box)
    res = box.run(cmd)
    assert_no_internal_errors(res)
    assert config.intact(), f".git/config replaced: {config.state()}\n{explain(res)}"
    assert_blocked(res, config, config.path, "file.delete")


def test_git_commondir_cannot_redirect_git_config(box, prog):
    """git reads $GIT_DIR/commondir and takes config, hooks, refs and objects from the
    directory it names ("../evilgit"): a new 3-line file re-points the repository's
    config at one the agent wrote. Verified by hand: `git status` on the host then runs
    evilgit/config's core.fsmonitor."""
    commondir = box.workspace / ".git" / "commondir"
    cmd = ["sh", "-c", "cp -r fakegit evilgit && echo ../evilgit > .git/commondir"]
    _reset_repo(box)
    box.native(cmd)
    assert commondir.read_text() == "../evilgit\n"

    _reset_repo(box)
    res = box.run(cmd)
    assert_no_internal_errors(res)
    assert not commondir.exists(), (f"the agent re-pointed .git at its own config "
                                    f"(.git/commondir -> ../evilgit)\n{explain(res)}")
    assert [r for r in res.denied() if touches(r, commondir)], explain(res)


def test_submodule_git_config_cannot_be_rewritten(box, prog):
    """A superproject keeps each submodule's git dir in .git/modules/<name>/. Its config
    is as dangerous as .git/config: `git status` in the superproject runs `git status` in
    each submodule, which runs that config's core.fsmonitor (verified by hand)."""
    _reset_repo(box)
    mkdir(box, box.workspace / ".git" / "modules" / "sub" / "hooks")
    sub_config = Canary(mkfile(box, box.workspace / ".git" / "modules" / "sub" / "config",
                               "[core]\n\tbare = false\n\tworktree = ../../../sub\n"))
    cmd = [prog, "path-op", "open-trunc", str(box.workspace), ".git/modules/sub/config"]
    nat = box.native(cmd)
    assert steps(nat.stdout)["open-trunc"][0] >= 0 and not sub_config.intact(), nat.stdout

    sub_config = Canary(mkfile(box, sub_config.path, "[core]\n\tbare = false\n"))
    res = box.run(cmd)
    assert_no_internal_errors(res)
    assert sub_config.intact(), f"submodule config rewritten: {sub_config.state()}\n{explain(res)}"
    assert_blocked(res, sub_config, sub_config.path, "file.write")
