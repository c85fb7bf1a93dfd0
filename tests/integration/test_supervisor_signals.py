"""Signals sent to the supervisor process while it answers.

An fd answer (SECCOMP_IOCTL_NOTIF_ADDFD with SECCOMP_ADDFD_FLAG_SEND) is marked answered
by the kernel before the target installs the fd; a supervisor thread interrupted in that
wait withdraws the fd and the target's open() returns 0 with nothing installed. These
tests run a real program that opens a file in a loop and checks every result (a new fd,
on that file) while the supervisor process is flooded with signals.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import sandbox_cmd

OPEN_LOOP = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
/* open_loop PATH N: N write-opens of PATH; each result must be a new fd (> 2) on PATH */
int main(int argc, char **argv)
{
    signal(SIGUSR1, SIG_IGN);           /* the supervisor forwards what it is sent */
    signal(SIGTSTP, SIG_IGN);
    long n = atol(argv[2]), bad = 0;
    struct stat want, st;
    int fd = open(argv[1], O_WRONLY | O_CREAT, 0644);
    if (fd < 0 || fstat(fd, &want) != 0) return 2;
    close(fd);
    printf("ready\n");
    fflush(stdout);
    for (long i = 0; i < n; i++) {
        fd = open(argv[1], O_WRONLY | O_CREAT, 0644);
        if (fd < 3 || fstat(fd, &st) != 0 || st.st_ino != want.st_ino) {
            bad++;
            continue;
        }
        close(fd);
    }
    printf("bad %ld of %ld\n", bad, n);
    return bad != 0;
}
"""


def _flood(box, prog: str, sig: int, opens: int) -> tuple[subprocess.CompletedProcess, int, Path]:
    journal = box.root / "journal" / f"flood-{sig}.jsonl"
    cmd = sandbox_cmd() + ["run", "--workspace", str(box.workspace), "--journal", str(journal),
                           "--", prog, str(box.workspace / "f"), str(opens)]
    p = subprocess.Popen(cmd, cwd=box.workspace, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "ready"
    sent = 0
    deadline = time.monotonic() + 60
    while p.poll() is None and time.monotonic() < deadline:
        try:
            os.kill(p.pid, sig)
        except ProcessLookupError:
            break
        sent += 1
    if p.poll() is None:                # stuck (a stopped supervisor): end it, fail below
        time.sleep(2)
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.kill()
    out, err = p.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, p.returncode, out, err), sent, journal


def test_signal_flood_at_the_supervisor_never_loses_an_answer(box, compile_c):
    """Before: within 200,000 opens under a SIGUSR1 flood some returned 0 (no fd), and
    nested Python handlers ended the supervisor with RecursionError (journal unsealed)."""
    prog = compile_c("open_loop", OPEN_LOOP)
    native = subprocess.run([prog, str(box.outside / "f"), "1000"], capture_output=True, text=True)
    assert native.stdout.splitlines()[-1] == "bad 0 of 1000"
    r, sent, journal = _flood(box, prog, signal.SIGUSR1, 60_000)
    assert sent > 1000, sent
    assert r.stdout.splitlines()[-1:] == ["bad 0 of 60000"], (r.stdout, r.stderr[-2000:])
    assert r.returncode == 0, r.stderr[-2000:]
    v = subprocess.run(sandbox_cmd() + ["journal", "verify", str(journal)], capture_output=True,
                       text=True)
    assert v.returncode == 0 and "intact and sealed" in v.stdout, v.stdout + v.stderr


def test_sigtstp_stops_the_command_never_the_supervisor(box, compile_c):
    """A stop of the supervisor itself (not blockable) would interrupt its answers: a stop
    request is forwarded to the sandboxed command instead, which here ignores it."""
    prog = compile_c("open_loop", OPEN_LOOP)
    r, sent, _ = _flood(box, prog, signal.SIGTSTP, 30_000)
    assert sent > 100, sent
    assert r.stdout.splitlines()[-1:] == ["bad 0 of 30000"], (r.stdout, r.stderr[-2000:])
    assert r.returncode == 0, r.stderr[-2000:]


def test_sigtstp_and_sigcont_reach_the_command(box):
    """What the forwarding means for a command that does not ignore them: SIGTSTP stops
    it (job control as without the sandbox), SIGCONT resumes it."""
    journal = box.root / "journal" / "tstp.jsonl"
    marker = box.workspace / "ticks"
    cmd = sandbox_cmd() + ["run", "--workspace", str(box.workspace), "--journal", str(journal),
                           "--", "sh", "-c",
                           f'echo ready; while :; do echo x >> {marker}; sleep 0.05; done']
    p = subprocess.Popen(cmd, cwd=box.workspace, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        p.send_signal(signal.SIGTSTP)
        time.sleep(0.3)
        stopped_at = marker.stat().st_size
        time.sleep(0.5)
        assert marker.stat().st_size == stopped_at, "the command kept running after SIGTSTP"
        assert _state(p.pid) != "T", "the supervisor itself stopped"
        p.send_signal(signal.SIGCONT)
        time.sleep(0.5)
        assert marker.stat().st_size > stopped_at, "the command did not resume after SIGCONT"
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]
