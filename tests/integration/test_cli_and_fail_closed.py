"""The CLI contract, the journal's first format, and the fail-closed paths."""
from __future__ import annotations

import os
import subprocess

import pytest

from conftest import sandbox_cmd


def test_receipts_carry_the_documented_fields(box):
    r = box.run(["sh", "-c", "echo hi > a.txt; echo no > /etc/aarm-test-denied; true"])
    types = [rec["type"] for rec in r.records]
    assert types[0] == "session.start" and types[-1] == "session.end"
    seqs = [rec["seq"] for rec in r.records]
    assert seqs == list(range(1, len(seqs) + 1))
    for rec in r.records:
        assert {"seq", "type", "ts", "session_id"} <= set(rec)
    created = [x for x in r.receipts("file.create") if x["action"]["target"] == str(box.workspace / "a.txt")]
    assert created and created[0]["decision"]["result"] == "allow"
    denied = r.denied("file.create")
    assert denied[0]["action"]["target"] == "/etc/aarm-test-denied"
    assert denied[0]["decision"]["rule"] == "outside-workspace" and denied[0]["decision"]["reason"]
    assert r.records[-1]["exit_status"] == 0


def test_denials_are_explained_on_stderr(box):
    r = box.run(["sh", "-c", "rm -f /etc/hostname"])
    assert "aarm-sandbox: denied file.delete /etc/hostname" in r.stderr
    assert "journal:" in r.stderr


def test_exit_status_is_the_commands_and_128_plus_signal(box):
    assert box.run(["sh", "-c", "exit 7"]).returncode == 7
    assert box.run(["sh", "-c", "kill -KILL $$"]).returncode == 128 + 9
    assert box.run(["/nonexistent/program"]).returncode == 127


def test_invalid_configuration_exits_125_with_reason(box):
    p = subprocess.run(sandbox_cmd() + ["run", "--workspace", "/nonexistent", "--", "true"],
                       capture_output=True, text=True)
    assert p.returncode == 125 and "not a directory" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run(sandbox_cmd() + ["run"], capture_output=True, text=True)
    assert p.returncode == 125 and "no command given" in p.stderr


def test_journal_write_failure_denies_every_later_action(box):
    journal_dev_full = "/dev/full"
    cmd = sandbox_cmd() + ["run", "--workspace", str(box.workspace), "--journal", journal_dev_full,
                           "--", "sh", "-c", "sleep 0.5; touch after-failure; echo rc=$?"]
    p = subprocess.run(cmd, cwd=box.workspace, capture_output=True, text=True, timeout=60)
    assert "journal write to /dev/full failed" in p.stderr
    assert not (box.workspace / "after-failure").exists()
    # Depending on when the first write fails, even the shell's own exec is denied.
    assert "rc=0" not in p.stdout


def test_unreadable_path_argument_fails_without_acting(box, compile_c):
    victim = box.canary("victim")
    prog = compile_c("efault_unlink", r'''
#include <stdio.h>
#include <errno.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/mman.h>
int main(void) {
    char *p = mmap(0, 4096, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0);
    munmap(p, 4096);
    long r = syscall(SYS_unlink, p);
    printf("%ld %d\n", r, errno);
    return 0;
}''')
    r = box.run([prog])
    assert r.stdout.split() == ["-1", str(14)]          # EFAULT, like the kernel
    assert victim.exists()


def test_observe_mode_allows_and_records_what_would_have_been_denied(box):
    target = box.outside / "observed.txt"
    r = box.run(["sh", "-c", f"echo x > {target}"], extra=["--observe"])
    assert target.read_text() == "x\n"
    rec = [x for x in r.receipts("file.create") if x["action"]["target"] == str(target)][0]
    assert rec["decision"]["result"] == "allow" and rec["decision"]["would"] == "deny"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to show root's capabilities are gone")
def test_root_in_the_sandbox_has_no_capabilities_over_the_host(box):
    secret = box.outside / "other-users-secret"
    secret.write_text("s3cret\n")
    os.chown(secret, 12345, 12345)
    os.chmod(secret, 0o600)
    mine = box.workspace / "mine"
    mine.write_text("x")
    script = f"cat {secret}; chown 12345 {mine}; echo caps=$(grep CapEff /proc/self/status | cut -f2)"
    native = box.native(["sh", "-c", script])
    assert "s3cret" in native.stdout                      # root natively: DAC override, CAP_CHOWN
    os.chown(mine, 0, 0)
    r = box.run(["sh", "-c", script])
    assert "s3cret" not in r.stdout and "Permission denied" in r.stderr
    assert "Operation not permitted" in r.stderr and os.stat(mine).st_uid == 0
    assert "caps=0000000000000000" in r.stdout


def test_doctor_reports_every_feature_and_passes_here():
    p = subprocess.run(sandbox_cmd() + ["doctor", "--json"], capture_output=True, text=True)
    import json
    rows = json.loads(p.stdout)
    names = {r["feature"] for r in rows}
    assert {"seccomp user notification + WAIT_KILLABLE_RECV", "SECCOMP_IOCTL_NOTIF_ADDFD",
            "SYNC_WAKE_UP", "user namespaces", "pidfd_getfd", "libseccomp"} <= names
    assert p.returncode == 0, p.stderr


def test_without_a_mount_namespace_credential_reads_are_decided_not_left_open(box):
    """When the host refuses a mount namespace there are no masks; the supervisor must then
    see every open so the credential rule still denies reads (fail closed, with a warning)."""
    home = box.root / "home"
    key = home / ".ssh" / "id_ed25519"
    key.parent.mkdir(parents=True)
    key.write_text("PRIVATE KEY\n")
    env = {"HOME": str(home), "AARM_DISABLE_NAMESPACES": "mount"}
    assert "PRIVATE KEY" in box.native(["cat", str(key)], env=env).stdout     # readable natively
    r = box.run(["cat", str(key)], env=env)
    assert "PRIVATE KEY" not in r.stdout and r.returncode != 0
    assert "every open is decided by the supervisor" in r.stderr
    assert [x for x in r.denied("file.read") if x["action"]["target"] == str(key)]
    assert "mount" not in r.records[0]["isolation"]["namespaces"]


def test_unknown_namespace_name_is_a_configuration_error(box):
    r = box.run(["true"], env={"AARM_DISABLE_NAMESPACES": "mnt"})
    assert r.returncode == 125 and "unknown namespace 'mnt'" in r.stderr and "Traceback" not in r.stderr


def test_run_startup_imports_none_of_the_slow_modules(box, tmp_path):
    """`run`'s startup is mostly imports: orjson (with dataclasses, inspect, datetime),
    typing and uuid cost ~25 ms of every run and are kept off its path (the journal
    writes with the standard library's encoder until a session has written a few hundred
    records). The journal such a run writes still verifies."""
    import sys
    journal = tmp_path / "j.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    # once first: a profile is validated (pydantic) only on its first use, then cached
    warm = subprocess.run([sys.executable, "-m", "aarm_sandbox", "run", "--workspace",
                           str(box.workspace), "--journal", str(tmp_path / "w.jsonl"), "--",
                           "true"], capture_output=True, text=True, env=env, cwd=box.workspace,
                          timeout=60)
    assert warm.returncode == 0, warm.stderr[-2000:]
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "aarm_sandbox", "run",
                        "--workspace", str(box.workspace), "--journal", str(journal),
                        "--", "true"], capture_output=True, text=True, env=env,
                       cwd=box.workspace, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    def imports(stderr: str) -> set[str]:
        return {line.split("|")[-1].strip() for line in stderr.splitlines()
                if line.startswith("import time:")}

    # what this interpreter imports before any code runs (site, .pth files) is not ours
    bare = imports(subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"],
                                  capture_output=True, text=True, env=env).stderr)
    imported = imports(p.stderr) - bare
    assert "aarm_sandbox.cli.run" in imported                 # the listing is real
    slow = {"orjson", "dataclasses", "inspect", "typing", "uuid"}
    assert not imported & slow, imported & slow
    v = subprocess.run(sandbox_cmd() + ["journal", "verify", str(journal)],
                       capture_output=True, text=True, timeout=60)
    assert v.returncode == 0, v.stdout + v.stderr


def test_home_directory_as_workspace_is_warned_about(box):
    """Started from ~, the default workspace (the cwd) is the home directory: everything
    the user's later programs read at startup is then writable by the sandbox. Say so."""
    home_ws = box.run(["true"], env={"HOME": str(box.workspace)})
    assert home_ws.returncode == 0
    assert "warning: the workspace is your home directory" in home_ws.stderr
    project = box.run(["true"])
    assert "warning: the workspace is" not in project.stderr


def test_journal_off_for_benchmarks_still_runs_the_command(box):
    """`AARM_JOURNAL=off` (scripts/bench journal measures journaling against it) runs the
    command with the same decisions and writes no journal."""
    r = box.run(["sh", "-c", "echo hi > a.txt && rm a.txt && echo no > /etc/aarm-off-test; true"],
                env={"AARM_JOURNAL": "off"})
    assert r.returncode == 0, r.stderr
    assert not (box.workspace / "a.txt").exists()
    assert not os.path.exists("/etc/aarm-off-test")
    assert not r.journal_path.exists()


def test_a_journal_is_never_appended_to_by_a_second_session(box):
    """Reusing a journal (or a session id, which names the default journal) would put a
    second session's records after the first one's seal: neither would verify."""
    journal = box.root / "journal" / "once.jsonl"
    cmd = sandbox_cmd() + ["run", "--workspace", str(box.workspace), "--journal", str(journal), "--", "true"]
    first = subprocess.run(cmd, cwd=box.workspace, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    sealed = journal.read_bytes()
    second = subprocess.run(cmd, cwd=box.workspace, capture_output=True, text=True, timeout=60)
    assert second.returncode == 125
    assert f"the journal {journal} already exists" in second.stderr
    assert "Traceback" not in second.stderr
    assert journal.read_bytes() == sealed
    v = subprocess.run(sandbox_cmd() + ["journal", "verify", str(journal)], capture_output=True, text=True)
    assert v.returncode == 0, v.stderr
